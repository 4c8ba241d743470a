"""Scheduled campaigns: nightly regression runs that fire exactly once, never stack, and
say what they did.

celery beat (RedBeat: its schedule and a lock live in Redis, so of two beat processes
only the lock holder sends) sends ``swaplab.schedule_tick`` every ``tick_seconds()``. A
tick evaluates every stored schedule with its own cron expression and time zone
(model.schedule) over the minutes since the schedule was last looked at, and for each due
minute:

- **exactly once**: a ``SET NX`` marker per (schedule, due minute) decides which tick
  fires it, whatever the number of beats or ticks that see it (a second one logs
  "duplicate" and does nothing);
- **never stacked**: if the schedule's previous instance is still active, the firing is
  *skipped* and the skip logged with the instance that blocked it;
- **missed**: a due minute seen more than ``MISSED_GRACE_S`` late (beat was down; a beat
  fail-over takes under a minute) is logged as missed and, by the schedule's ``missed``
  choice, run once (several missed minutes collapse into one run) or skipped.

The campaign is stored validated when it is added (as ``swaplab submit`` stores one), so a
firing needs no file; ``swaplab schedule add FILE`` again replaces it.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import redis

from model.campaign import Campaign, campaign_from_json, campaign_to_json
from model.schedule import due_times
from model.state import (
    SCHEDULES_KEY,
    TERMINAL,
    as_text,
    campaign_key,
    decode_fields,
    encode_fields,
    schedule_fired_key,
    schedule_key,
    schedule_log_key,
)

MISSED_GRACE_S = 300.0
LOG_LENGTH = 500
FIRED_MARKER_TTL_S = 8 * 24 * 3600
DEFAULT_TICK_S = 20.0
Submit = Callable[[Campaign], str]


class ScheduleError(ValueError):
    """A schedule that cannot be added, found or run."""


def tick_seconds() -> float:
    """How often beat sends a tick (``SWAPLAB_SCHEDULE_TICK_S``, default 20 s)."""
    value = float(os.environ.get("SWAPLAB_SCHEDULE_TICK_S", DEFAULT_TICK_S))
    if not 1.0 <= value <= 60.0:
        raise ScheduleError(f"SWAPLAB_SCHEDULE_TICK_S={value} must lie in 1..60 (a cron minute must not be missed)")
    return value


@dataclass(frozen=True)
class Firing:
    """What one due minute of one schedule did."""

    name: str
    due: float
    kind: str  # fired, skipped, missed, duplicate
    detail: str = ""
    campaign_id: str = ""

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "due": self.due,
            "kind": self.kind,
            "detail": self.detail,
            "campaign_id": self.campaign_id,
            "at": time.time(),
        }


def add(client: redis.Redis, campaign: Campaign, now: float | None = None) -> dict[str, Any]:
    """Store (or replace) the schedule of a validated campaign that has ``schedule:``."""
    spec = campaign.spec.schedule
    if spec is None:
        raise ScheduleError(f"{campaign.path}: the campaign has no 'schedule:' (cron, timezone, missed)")
    name = campaign.spec.name
    added_at = now if now is not None else time.time()
    fields: dict[str, Any] = {
        "name": name,
        "file": str(campaign.path),
        "campaign": json.dumps(campaign_to_json(campaign)),
        "cron": spec.cron,
        "timezone": spec.timezone,
        "missed": spec.missed,
        "added_at": added_at,
    }
    with client.pipeline(transaction=True) as pipe:
        pipe.hset(schedule_key(name), mapping=encode_fields(fields))
        # A schedule added now looks back from now: nothing before it was "missed".
        pipe.hsetnx(schedule_key(name), "checked_at", added_at)
        pipe.sadd(SCHEDULES_KEY, name)
        pipe.execute()
    return describe(client, name)


def remove(client: redis.Redis, name: str) -> None:
    """Forget a schedule (its log stays, for the record)."""
    if not client.srem(SCHEDULES_KEY, name):
        raise ScheduleError(f"no schedule {name!r} (see `swaplab schedule list`)")
    client.delete(schedule_key(name))


def names(client: redis.Redis) -> list[str]:
    """Every stored schedule's name, sorted."""
    return sorted(as_text(name) for name in client.smembers(SCHEDULES_KEY))


def describe(client: redis.Redis, name: str, now: float | None = None) -> dict[str, Any]:
    """One schedule for people and scripts: when it fires next, what it did last."""
    stored = decode_fields(client.hgetall(schedule_key(name)))
    if not stored:
        raise ScheduleError(f"no schedule {name!r} (see `swaplab schedule list`)")
    now = now if now is not None else time.time()
    upcoming = due_times(stored["cron"], stored["timezone"], _utc(now), _utc(now + 8 * 24 * 3600))
    return {
        "name": name,
        "file": stored.get("file", ""),
        "cron": stored["cron"],
        "timezone": stored["timezone"],
        "missed": stored["missed"],
        "next": upcoming[0].timestamp() if upcoming else None,
        "last_campaign": stored.get("last_cid") or None,
        "log": log(client, name, limit=10),
    }


def log(client: redis.Redis, name: str, limit: int = 50) -> list[dict[str, Any]]:
    """What the schedule's firings did, newest first."""
    return [json.loads(raw) for raw in client.lrange(schedule_log_key(name), 0, limit - 1)]


def tick(client: redis.Redis, submit: Submit, now: float | None = None) -> list[Firing]:
    """Fire every schedule due since it was last looked at (see the module docstring)."""
    now = now if now is not None else time.time()
    return [firing for name in names(client) for firing in _tick_one(client, name, submit, now)]


def run_now(client: redis.Redis, name: str, submit: Submit) -> Firing:
    """Fire a schedule at once, outside its cron (the skip rule holds)."""
    stored = _stored(client, name)
    due = float(int(time.time()))
    return _fire(client, name, stored, due, submit, detail="run now")


def _tick_one(client: redis.Redis, name: str, submit: Submit, now: float) -> list[Firing]:
    stored = _stored(client, name)
    checked = float(stored.get("checked_at") or now)
    client.hset(schedule_key(name), "checked_at", now)
    dues = [d.timestamp() for d in due_times(stored["cron"], stored["timezone"], _utc(checked), _utc(now))]
    missed = [due for due in dues if now - due > MISSED_GRACE_S]
    on_time = [due for due in dues if due not in missed]
    firings = [_record(client, Firing(name, due, "missed", f"{now - due:.0f} s late: beat was down")) for due in missed]
    if missed and stored["missed"] == "run-once" and not on_time:
        firings.append(_fire(client, name, stored, missed[-1], submit, detail="missed firing, run once"))
    elif missed and stored["missed"] == "skip":
        firings += [
            _record(client, Firing(name, due, "skipped", "missed firing; this schedule skips those")) for due in missed
        ]
    firings += [_fire(client, name, stored, due, submit) for due in on_time]
    return firings


def _fire(
    client: redis.Redis, name: str, stored: dict[str, Any], due: float, submit: Submit, detail: str = ""
) -> Firing:
    if not client.set(schedule_fired_key(name, int(due)), "1", nx=True, ex=FIRED_MARKER_TTL_S):
        return Firing(name, due, "duplicate", "another tick fired this minute")  # not logged: it did nothing
    previous = str(stored.get("last_cid") or "")
    if previous and _active(client, previous):
        return _record(client, Firing(name, due, "skipped", f"previous instance {previous} is still running", previous))
    cid = submit(campaign_from_json(stored["campaign"]))
    client.hset(schedule_key(name), "last_cid", cid)
    return _record(client, Firing(name, due, "fired", detail, cid))


def _active(client: redis.Redis, cid: str) -> bool:
    status = client.hget(campaign_key(cid), "status")
    return status is not None and as_text(status) not in TERMINAL


def _record(client: redis.Redis, firing: Firing) -> Firing:
    with client.pipeline() as pipe:
        pipe.lpush(schedule_log_key(firing.name), json.dumps(firing.to_json()))
        pipe.ltrim(schedule_log_key(firing.name), 0, LOG_LENGTH - 1)
        pipe.execute()
    return firing


def _stored(client: redis.Redis, name: str) -> dict[str, Any]:
    stored = decode_fields(client.hgetall(schedule_key(name)))
    if not stored:
        raise ScheduleError(f"no schedule {name!r} (see `swaplab schedule list`)")
    return stored


def _utc(epoch: float) -> datetime:
    return datetime.fromtimestamp(epoch, UTC)
