"""After a campaign ends: its reports in its result directory, its record in the database.

The scheduler only puts a finished campaign in the Redis outbox (quick, under the
campaign's lock). ``record_pending`` does the slow part outside any lock — the control
worker's ``swaplab.record_results`` task, retried while the database is down, and
``swaplab run`` at its end: it stores every pending record (orchestrator.history.outbox)
and writes the reports (text, html, junit, json) beside result.json when that directory
is on this host; then it updates the campaign's change points in the database (a nightly
campaign's dashboard is current after every night, with no command run).
"""

from __future__ import annotations

import json
import logging
import os
import stat
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import redis

from model.paths import UnsafePath, results_root
from model.runspec import is_campaign_id
from orchestrator.history.outbox import flush
from orchestrator.reports import write_reports
from orchestrator.store import CampaignStore

log = logging.getLogger(__name__)


def finished_record(store: CampaignStore, cid: str) -> dict[str, Any] | None:
    """The campaign's result record: from Redis, else its result.json on this host (Redis
    may have forgotten it while the database was down); None while there is none."""
    result = store.campaign(cid).get("result") if store.exists(cid) else None
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
    this host: below this process' own results root, never where the record says."""
    cid = record.get("campaign_id")
    if not is_campaign_id(cid):
        return {}
    directory = results_root() / str(cid)
    if not (directory / "result.json").is_file():
        return {}
    try:
        return write_reports(dict(record), directory)
    except (OSError, UnsafePath) as err:
        log.warning("reports of %s not written: %s", record.get("campaign_id"), err)
        return {}


class _ReportingDb:
    """The database as the outbox sees it, writing each record's reports before storing it."""

    def __init__(self, db: Any) -> None:
        self.db = db

    def store(self, record: Mapping[str, Any]) -> None:
        self.db.store(record)
        try:
            write_campaign_reports(record)
        except Exception:  # a report that cannot be drawn must not cost the stored record
            log.exception("reports of %s not written", record.get("campaign_id"))
        try:
            update_change_points(self.db, str(record.get("campaign") or ""))
        except Exception:  # nor may the analysis: the next night's recording tries again
            log.exception("change points of %s not updated", record.get("campaign"))


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


def record_pending(client: redis.Redis, db: Any) -> tuple[int, int]:
    """Store every pending finished campaign (and write its reports): (stored, still pending)."""
    store = CampaignStore(client)
    return flush(client, _ReportingDb(db), lambda cid: finished_record(store, cid))
