"""Nothing finished is lost when a sink is down: one outbox in Redis per sink.

A sink (orchestrator.sinks: the reports, the results database, the change points) has a
Redis hash as its outbox, which lives as long as Redis' own append-only file. When a
campaign finishes, ``enqueue(client, key, cid)`` records that the sink must take it.
``flush(client, key, sink, load)`` then hands every pending campaign whose record
``load(cid)`` returns to ``sink.store``, oldest first, and removes a campaign from the
outbox only after the sink has committed it:

- the sink is unavailable (``DatabaseUnavailable``): the campaign stays pending and the
  flush stops there (the next ones would fail the same way); a later flush stores it;
- ``load`` returns None (no record yet): it stays pending;
- the record is refused (invalid, not the campaign its key names, ``load`` raised
  ValueError, or storing failed for any other reason): the error is logged and the
  campaign is **set aside** — kept in the hash with its error and the time, never retried
  by ``flush`` (a record that fails today fails tomorrow, and must not block the others). ``set_aside`` lists them; ``enqueue`` of the
  same campaign makes it pending again (after a fix, or a ``swaplab check`` re-judgement).

A campaign enqueued again while a flush is storing it (a re-judgement racing the flush)
stays pending: removal and setting aside only happen if the entry is still the one the
flush read, so the newer record is stored by the next flush.

Any other exception from ``load`` (Redis down, a bug) propagates; nothing is removed.
"""

from __future__ import annotations

import json
import logging
import time
import uuid
from collections.abc import Callable, Mapping
from enum import Enum
from typing import Any, Protocol

import redis

from model.state import as_text
from orchestrator.history.errors import DatabaseUnavailable

log = logging.getLogger(__name__)

# Delete / replace a hash field only if it still holds the value the caller read.
_DELETE_IF_SAME = """
if redis.call('HGET', KEYS[1], ARGV[1]) == ARGV[2] then return redis.call('HDEL', KEYS[1], ARGV[1]) end
return 0
"""
_REPLACE_IF_SAME = """
if redis.call('HGET', KEYS[1], ARGV[1]) == ARGV[2] then redis.call('HSET', KEYS[1], ARGV[1], ARGV[3]) return 1 end
return 0
"""


class Store(Protocol):
    """What the outbox needs of a sink (``ResultsDb`` is one)."""

    def store(self, record: Mapping[str, Any]) -> None: ...


class _Outcome(Enum):
    STORED = "stored"
    KEPT = "kept"
    SET_ASIDE = "set aside"
    UNAVAILABLE = "database unavailable"


def enqueue(client: redis.Redis | redis.client.Pipeline, key: str, cid: str) -> None:
    """Record in outbox ``key`` that finished campaign ``cid`` must be stored (again, if it was already)."""
    if not cid:
        raise ValueError("enqueue: empty campaign id")
    entry = {"queued_at": time.time(), "token": uuid.uuid4().hex}
    client.hset(key, cid, json.dumps(entry))


def flush(
    client: redis.Redis,
    key: str,
    sink: Store,
    load: Callable[[str], Mapping[str, Any] | None],
    id_field: str = "campaign_id",
    ready: Callable[[str], bool] = lambda _cid: True,
) -> tuple[int, int]:
    """Store the pending campaigns that are ``ready`` (the others wait, quietly): (how many
    were stored, how many are still pending). ``id_field``: where a record names its own id."""
    stored = 0
    for cid, raw in _pending_entries(client, key):
        if not ready(cid):
            continue
        outcome = _flush_one(client, key, sink, load, cid, raw, id_field)
        if outcome is _Outcome.UNAVAILABLE:
            break
        stored += outcome is _Outcome.STORED
    return stored, len(pending(client, key))


def pending(client: redis.Redis, key: str) -> list[str]:
    """The campaigns waiting in outbox ``key``, oldest first."""
    return [cid for cid, _ in _pending_entries(client, key)]


def set_aside(client: redis.Redis, key: str) -> dict[str, str]:
    """The campaigns outbox ``key`` refused: campaign id → the error."""
    out = {}
    for field, raw in client.hgetall(key).items():
        entry = _entry(raw)
        if "error" in entry:
            out[as_text(field)] = str(entry["error"])
    return out


def _flush_one(
    client: redis.Redis,
    key: str,
    sink: Store,
    load: Callable[[str], Mapping[str, Any] | None],
    cid: str,
    raw: Any,
    id_field: str,
) -> _Outcome:
    try:
        record = load(cid)
    except ValueError as exc:  # an unreadable record (bad JSON ...): reading it again will not help
        return _set_aside(client, key, cid, raw, f"unreadable record: {exc}")
    if record is None:
        log.warning("outbox %s: no record of campaign %s to store yet; kept pending", key, cid)
        return _Outcome.KEPT
    if record.get(id_field) != cid:
        # A record is stored only under its own id: one written under another key would
        # replace that campaign's stored verdict (and the baselines that follow it).
        claimed = str(record.get(id_field))[:100]
        return _set_aside(client, key, cid, raw, f"the record under {cid} claims to be campaign {claimed!r}")
    try:
        sink.store(record)
    except DatabaseUnavailable as exc:
        log.warning("outbox %s: campaign %s kept pending: %s", key, cid, exc)
        return _Outcome.UNAVAILABLE
    except Exception as exc:
        # Whatever else went wrong is about this record: set it aside, go on with the others.
        log.exception("outbox %s: campaign %s could not be stored", key, cid)
        return _set_aside(client, key, cid, raw, f"{type(exc).__name__}: {exc}")
    if not client.eval(_DELETE_IF_SAME, 1, key, cid, raw):
        log.info("outbox %s: campaign %s was enqueued again while stored; kept for the next flush", key, cid)
    return _Outcome.STORED


def _set_aside(client: redis.Redis, key: str, cid: str, raw: Any, error: str) -> _Outcome:
    log.error("outbox %s: campaign %s set aside: %s", key, cid, error)
    entry = {**_entry(raw), "failed_at": time.time(), "error": error}
    client.eval(_REPLACE_IF_SAME, 1, key, cid, raw, json.dumps(entry))
    return _Outcome.SET_ASIDE


def _pending_entries(client: redis.Redis, key: str) -> list[tuple[str, Any]]:
    """(cid, raw value) of the pending entries, oldest first; raw as Redis returned it."""
    entries = [(as_text(field), raw, _entry(raw)) for field, raw in client.hgetall(key).items()]
    waiting = [(_queued_at(entry), cid, raw) for cid, raw, entry in entries if "error" not in entry]
    return [(cid, raw) for _, cid, raw in sorted(waiting, key=lambda item: (item[0], item[1]))]


def _entry(raw: Any) -> dict[str, Any]:
    # A value this code did not write counts as pending: storing it again is harmless.
    try:
        entry = json.loads(as_text(raw))
    except ValueError:
        return {}
    return entry if isinstance(entry, dict) else {}


def _queued_at(entry: dict[str, Any]) -> float:
    value = entry.get("queued_at")
    return float(value) if isinstance(value, int | float) else 0.0
