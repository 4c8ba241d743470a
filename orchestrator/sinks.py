"""After a campaign ends: one list of sinks, run by the control plane.

When the scheduler finishes a campaign it puts it, under the campaign's lock (quick: a
few Redis writes), in the outbox of every sink (``enqueue``). The control worker's
``swaplab.record_results`` task then runs the sinks, outside any lock, in this order:

============  ===============================================  ===========================
sink          what it does with a finished campaign            its outbox, its retry
============  ===============================================  ===========================
reports       text, HTML, JUnit, JSON beside result.json        ``swaplab:sink:reports``;
              (a record result.json's schema refuses is        a failure is set aside
              set aside, every wrong field named)
database      its record into the results database             ``swaplab:results:outbox``;
                                                               kept while the database is
                                                               down, retried every 30 s
changes       the change points of the campaign's stored       ``swaplab:sink:changes``;
              nights, for the history dashboard                waits for the database
                                                               sink, then as above
webhook       a POST to ``SWAPLAB_WEBHOOK_URL``                orchestrator.notify's
                                                               records; backoff, 24 h
============  ===============================================  ===========================

Each outbox is its own (orchestrator.outbox): a campaign leaves it once that sink has
taken it, and one sink failing never holds another back (but ``changes``, which needs the
night stored). Nothing of this runs in the CLI: ``swaplab run`` waits for the reports and
the database and says what they did; ``swaplab history --changes`` only reads.
"""

from __future__ import annotations

import json
import logging
import os
import stat
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import redis

from model.paths import results_root
from model.result import campaign_of
from model.runspec import is_campaign_id
from model.state import RESULTS_OUTBOX_KEY, sink_outbox_key
from orchestrator import notify, outbox
from orchestrator.reports import write_reports
from orchestrator.store import CampaignStore

log = logging.getLogger(__name__)

REPORTS, DATABASE, CHANGES = "reports", "database", "changes"
# The sinks with an outbox, in the order they run (the webhook keeps orchestrator.notify's).
OUTBOXES = {REPORTS: sink_outbox_key(REPORTS), DATABASE: RESULTS_OUTBOX_KEY, CHANGES: sink_outbox_key(CHANGES)}
# Ended bisections (``swaplab bisect``) wait for the results database in an outbox of their own.
BISECTIONS, BISECTIONS_OUTBOX = "bisections", sink_outbox_key("bisections")
_ALL_OUTBOXES = {**OUTBOXES, BISECTIONS: BISECTIONS_OUTBOX}
Loader = Callable[[str], Mapping[str, Any] | None]


@dataclass(frozen=True)
class Delivered:
    """What one pass of a sink did: how many campaigns it took, how many still wait."""

    stored: int
    pending: int


def enqueue(client: redis.Redis, cid: str) -> None:
    """Put finished campaign ``cid`` in every sink's outbox (quick: fit for its lock)."""
    with client.pipeline() as pipe:  # MULTI: all the outboxes or none
        for key in OUTBOXES.values():
            outbox.enqueue(pipe, key, cid)
        pipe.execute()
    notify.enqueue(client, cid)  # one Redis script; nothing without SWAPLAB_WEBHOOK_URL


def waiting(client: redis.Redis) -> set[tuple[str, str]]:
    """(sink, campaign id) of every campaign an outbox sink has still to take (and
    ("bisections", bisection id) of every ended bisection the database has still to take)."""
    return {(name, cid) for name, key in _ALL_OUTBOXES.items() for cid in outbox.pending(client, key)}


def set_aside(client: redis.Redis) -> dict[tuple[str, str], str]:
    """Every campaign (or bisection) a sink refused: (sink, id) → the error."""
    return {
        (name, cid): error
        for name, key in _ALL_OUTBOXES.items()
        for cid, error in outbox.set_aside(client, key).items()
    }


def awaiting(client: redis.Redis, cid: str) -> list[str]:
    """The outbox sinks that still have ``cid`` to take (set-aside campaigns are not waiting)."""
    return [name for name in OUTBOXES if (name, cid) in waiting(client)]


def refused(client: redis.Redis, cid: str) -> dict[str, str]:
    """The sinks that set ``cid`` aside: sink → the error."""
    return {name: error for (name, aside), error in set_aside(client).items() if aside == cid}


def pending(client: redis.Redis) -> bool:
    """Is any outbox sink or webhook notification still to be delivered?"""
    return bool(waiting(client)) or bool(notify.pending_notifications(client))


def loader(client: redis.Redis) -> Loader:
    """What every sink reads a campaign's record with (``finished_record``)."""
    store = CampaignStore(client)
    return lambda cid: finished_record(store, cid)


def deliver_reports(client: redis.Redis) -> Delivered:
    """The reports sink: no database needed, so it runs even while the database is down."""
    return Delivered(*outbox.flush(client, OUTBOXES[REPORTS], _Reports(), _readable(loader(client))))


def _readable(load: Loader) -> Loader:
    """``load``, refusing a record the reports cannot read: its RecordError (a ValueError)
    has the outbox set the campaign aside with every wrong field named, where a failure
    while writing would be logged with its traceback."""

    def checked(cid: str) -> Mapping[str, Any] | None:
        record = load(cid)
        if record is not None:
            campaign_of(record)
        return record

    return checked


def deliver_to_database(client: redis.Redis, db: Any) -> dict[str, Delivered]:
    """The database sink, then the change points of what it stored."""
    load = loader(client)
    stored = Delivered(*outbox.flush(client, OUTBOXES[DATABASE], db, load))
    not_stored = set(outbox.pending(client, OUTBOXES[DATABASE]))
    changes = outbox.flush(client, OUTBOXES[CHANGES], _ChangePoints(db), load, ready=lambda cid: cid not in not_stored)
    return {DATABASE: stored, CHANGES: Delivered(*changes)}


def enqueue_bisection(client: redis.Redis, bid: str) -> None:
    """Put ended bisection ``bid`` in the results database's bisections outbox."""
    outbox.enqueue(client, BISECTIONS_OUTBOX, bid)


def deliver_bisections(client: redis.Redis, db: Any) -> Delivered:
    """The ended bisections into the results database (kept while it is down, as campaigns are)."""
    from orchestrator import bisector  # the bisector submits campaigns: not loaded by every sink user

    return Delivered(
        *outbox.flush(client, BISECTIONS_OUTBOX, _Bisections(db), lambda bid: bisector.read(client, bid), "id")
    )


class _Bisections:
    """The bisections sink, as an outbox sees it."""

    def __init__(self, db: Any) -> None:
        self.db = db

    def store(self, record: Mapping[str, Any]) -> None:
        self.db.store_bisection(record)


def deliver_notifications(client: redis.Redis) -> tuple[int, int]:
    """The webhook sink: the notifications that are due (delivered, waiting for a retry)."""
    return notify.retry_due(client, loader(client))


def finished_record(store: CampaignStore, cid: str) -> dict[str, Any] | None:
    """The campaign's result record: from Redis, else its result.json on this host (Redis
    may have forgotten it while the database was down); None while there is none."""
    result = store.record(cid)
    if isinstance(result, dict):
        return result
    if not is_campaign_id(cid):
        return None
    try:
        on_disk = json.loads(_read_own_file(results_root() / cid / "result.json"))
    except (OSError, ValueError):
        return None
    return on_disk if isinstance(on_disk, dict) and on_disk.get("campaign_id") == cid else None


def _read_own_file(path: Path, limit: int = 64 << 20) -> bytes:
    """A result file, not through a link, at most ``limit`` bytes."""
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    with os.fdopen(fd, "rb") as f:
        if not stat.S_ISREG(os.fstat(f.fileno()).st_mode):
            raise OSError(f"{path} is not a regular file")
        data = f.read(limit + 1)
    if len(data) > limit:
        raise ValueError(f"{path} is larger than {limit} bytes")
    return data


def write_campaign_reports(record: Mapping[str, Any]) -> dict[str, Path]:
    """Every report format beside result.json, if the campaign's result directory is on
    this host: below this process' own results root, never where the record says.
    Raises OSError or UnsafePath when they cannot be written, RecordError (naming every
    wrong field) when the record does not match result.json's schema."""
    cid = record.get("campaign_id")
    if not is_campaign_id(cid):
        return {}
    directory = results_root() / str(cid)
    if not (directory / "result.json").is_file():
        return {}
    return write_reports(dict(record), directory)


class _Reports:
    """The reports sink, as an outbox sees it."""

    def store(self, record: Mapping[str, Any]) -> None:
        written = write_campaign_reports(record)
        log.info("reports of %s: %s", record.get("campaign_id"), ", ".join(map(str, written.values())) or "none here")


class _ChangePoints:
    """The change-points sink, as an outbox sees it: the analysis of the record's campaign."""

    def __init__(self, db: Any) -> None:
        self.db = db

    def store(self, record: Mapping[str, Any]) -> None:
        update_change_points(self.db, str(record.get("campaign") or ""))


def update_change_points(db: Any, campaign: str) -> int | None:
    """Detect and store the change points of ``campaign``'s stored nights, as each night is
    recorded, so the history dashboard is current without anyone running a command.
    None when it has too few instances to have any (how many were stored otherwise)."""
    from orchestrator.changepoints import HISTORY_NIGHTS, MIN_NIGHTS, detect_changes
    from orchestrator.history.changes import store_change_points

    instances = db.history(campaign=campaign, limit=HISTORY_NIGHTS) if campaign else []
    if len(instances) < MIN_NIGHTS:
        return None
    stored: int = store_change_points(db, campaign, detect_changes(campaign, instances).change_points)
    return stored


def deliver(client: redis.Redis, db: Any) -> dict[str, Delivered]:
    """One pass of the outbox sinks, in their order, with the results database ``db``."""
    return {REPORTS: deliver_reports(client), **deliver_to_database(client, db)}
