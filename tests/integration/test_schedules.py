"""Schedule firing rules against a real Redis, with an injected clock: exactly once per due
minute whatever the number of ticks, never stacked on a running instance, missed firings
recorded and run once or skipped."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pytest

from model.campaign import Campaign, load_campaign
from model.state import campaign_key
from orchestrator import timetable
from tests.integration.redis_server import RedisServer, redis_server_fixture  # noqa: F401

pytestmark = pytest.mark.integration
REPO = Path(__file__).resolve().parents[2]
DAY = 24 * 3600


def _nightly(tmp_path: Path, missed: str = "run-once") -> Campaign:
    path = tmp_path / "nightly.yaml"
    path.write_text(
        (REPO / "campaigns" / "smoke.yaml")
        .read_text()
        .replace("name: smoke", "name: nightly")
        .replace("../inventory/local.yml", str(REPO / "inventory/local.yml"))
        + f"schedule: {{cron: '0 2 * * *', timezone: Europe/Berlin, missed: {missed}}}\n"
    )
    return load_campaign(path)


def _at(*parts: int) -> float:
    return datetime(*parts, tzinfo=UTC).timestamp()


class Submitted(list[str]):
    """A stand-in for submitting: records the campaign and stores it as active."""

    def __init__(self, client: object) -> None:
        super().__init__()
        self.client = client

    def __call__(self, campaign: Campaign) -> str:
        cid = f"{campaign.spec.name}-{len(self) + 1}"
        self.client.hset(campaign_key(cid), "status", "queued")  # type: ignore[attr-defined]
        self.append(cid)
        return cid


def test_a_due_minute_fires_once_however_many_ticks_see_it(redis_server: RedisServer, tmp_path: Path) -> None:
    client = redis_server.client()
    timetable.add(client, _nightly(tmp_path), now=_at(2026, 11, 30, 0, 50))  # 01:50 in Berlin
    submitted = Submitted(client)
    first = timetable.tick(client, submitted, now=_at(2026, 11, 30, 1, 0, 10))
    client.hset("swaplab:schedule:nightly", "checked_at", _at(2026, 11, 30, 0, 59))  # a second beat's tick, same minute
    second = timetable.tick(client, submitted, now=_at(2026, 11, 30, 1, 0, 12))
    assert [f.kind for f in first] == ["fired"] and [f.kind for f in second] == ["duplicate"]
    assert submitted == ["nightly-1"]
    assert [entry["kind"] for entry in timetable.log(client, "nightly")] == ["fired"]


def test_an_instance_still_running_makes_the_next_firing_a_recorded_skip(
    redis_server: RedisServer, tmp_path: Path
) -> None:
    client = redis_server.client()
    timetable.add(client, _nightly(tmp_path), now=_at(2026, 11, 30, 0, 50))
    submitted = Submitted(client)
    timetable.tick(client, submitted, now=_at(2026, 11, 30, 1, 0, 10))
    [skip] = timetable.tick(client, submitted, now=_at(2026, 12, 1, 1, 0, 10))  # nightly-1 still queued
    assert (skip.kind, skip.campaign_id) == ("skipped", "nightly-1") and submitted == ["nightly-1"]
    client.hset(campaign_key("nightly-1"), "status", "done")
    [fired] = timetable.tick(client, submitted, now=_at(2026, 12, 2, 1, 0, 10))
    assert fired.kind == "fired" and submitted == ["nightly-1", "nightly-2"]


def test_missed_firings_run_once_when_beat_is_back(redis_server: RedisServer, tmp_path: Path) -> None:
    client = redis_server.client()
    timetable.add(client, _nightly(tmp_path), now=_at(2026, 11, 28, 0, 50))
    submitted = Submitted(client)
    firings = timetable.tick(client, submitted, now=_at(2026, 11, 30, 9, 0))  # beat down for three nights
    assert [f.kind for f in firings] == ["missed", "missed", "missed", "fired"] and submitted == ["nightly-1"]


def test_missed_firings_are_skipped_when_the_schedule_says_so(redis_server: RedisServer, tmp_path: Path) -> None:
    client = redis_server.client()
    timetable.add(client, _nightly(tmp_path, missed="skip"), now=_at(2026, 11, 29, 0, 50))
    submitted = Submitted(client)
    firings = timetable.tick(client, submitted, now=_at(2026, 11, 29, 9, 0))
    assert [f.kind for f in firings] == ["missed", "skipped"] and submitted == []
    assert "beat was down" in timetable.log(client, "nightly")[-1]["detail"]


def test_a_campaign_without_schedule_is_refused_and_remove_forgets(redis_server: RedisServer, tmp_path: Path) -> None:
    client = redis_server.client()
    path = tmp_path / "plain.yaml"
    path.write_text(
        (REPO / "campaigns" / "smoke.yaml")
        .read_text()
        .replace("../inventory/local.yml", str(REPO / "inventory/local.yml"))
    )
    with pytest.raises(timetable.ScheduleError, match="no 'schedule:'"):
        timetable.add(client, load_campaign(path))
    timetable.add(client, _nightly(tmp_path))
    timetable.remove(client, "nightly")
    assert timetable.names(client) == []
    with pytest.raises(timetable.ScheduleError, match="no schedule 'nightly'"):
        timetable.remove(client, "nightly")
