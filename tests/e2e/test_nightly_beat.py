"""Scheduled campaigns with the real things: a redis-server, a Celery control worker and two
celery beat processes (RedBeat) at once. A schedule set for the next minute fires exactly
once; firing it again while that instance still runs is a recorded skip; a firing missed
while beat was down is recorded and, as the schedule says, skipped.

No guests boot: the campaigns wait for a lab worker that this module does not start, which
keeps them active (the skip rule needs that) and costs nothing. They are cancelled at the end.
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from model.state import CAMPAIGNS_KEY, schedule_key
from tests.conftest import require_tools
from tests.e2e.stack import Lab

pytestmark = pytest.mark.integration
REPO = Path(__file__).resolve().parents[2]
E2E_LAB = REPO / "tests" / "fixtures" / "labs" / "e2e.yml"
CELERY = Path(sys.executable).with_name("celery")
TICK_S = 5


def _campaign(folder: Path, name: str, cron: str, missed: str) -> Path:
    path = folder / f"{name}.yaml"
    path.write_text(
        (REPO / "campaigns" / "smoke.yaml")
        .read_text()
        .replace("name: smoke", f"name: {name}")
        .replace("../inventory/local.yml", str(E2E_LAB))
        + f"schedule: {{cron: '{cron}', timezone: UTC, missed: {missed}}}\n"
    )
    return path


def _next_minute(lead_s: float = 20.0) -> datetime:
    """The next whole minute at least ``lead_s`` away (beat needs a moment to start)."""
    now = time.time()
    due = math.ceil(now / 60) * 60
    return datetime.fromtimestamp(due + (60 if due - now < lead_s else 0), UTC)


@pytest.fixture(scope="module")
def beat_lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Lab, datetime]]:
    require_tools(("redis-server", "prometheus"))
    folder = tmp_path_factory.mktemp("nightly")
    lab = Lab(folder, ["control"], [E2E_LAB])
    lab.env["SWAPLAB_SCHEDULE_TICK_S"] = str(TICK_S)
    lab.start()
    due = _next_minute()
    added = lab.cli("schedule", "add", str(_campaign(folder, "nightly", f"{due.minute} {due.hour} * * *", "run-once")))
    assert added.returncode == 0, added.stderr
    beats = [_beat(lab, folder, n) for n in (1, 2)]
    try:
        yield lab, due
    finally:
        for beat in beats:
            beat.terminate()
            beat.wait(timeout=30)
        for cid in lab.client.zrange(CAMPAIGNS_KEY, 0, -1):
            lab.cli("cancel", cid)
        lab.stop()


def _beat(lab: Lab, folder: Path, n: int) -> subprocess.Popen[bytes]:
    log = (folder / f"beat{n}.log").open("wb")
    command = [
        str(CELERY),
        "-A",
        "orchestrator.app",
        "beat",
        "-S",
        "redbeat.RedBeatScheduler",
        "-l",
        "INFO",
        "-s",
        str(folder / f"beat{n}"),
    ]
    return subprocess.Popen(
        command, stdout=log, stderr=subprocess.STDOUT, env={**lab.env, "PYTHONUNBUFFERED": "1"}, cwd=folder
    )


def _log(lab: Lab, name: str) -> list[dict[str, Any]]:
    proc = lab.cli("schedule", "list", "--json")
    [row] = [row for row in json.loads(proc.stdout) if row["name"] == name]
    return list(row["log"])


def _campaigns(lab: Lab, name: str) -> list[str]:
    return [cid for cid in lab.client.zrange(CAMPAIGNS_KEY, 0, -1) if cid.startswith(f"{name}-")]


def test_two_beats_fire_a_schedule_exactly_once(beat_lab: tuple[Lab, datetime]) -> None:
    lab, due = beat_lab
    deadline = time.time() + (due.timestamp() - time.time()) + 45
    while not _campaigns(lab, "nightly"):
        assert time.time() < deadline, f"nothing fired by {due:%H:%M:%S} UTC + 45 s: {_log(lab, 'nightly')}"
        time.sleep(1)
    time.sleep(3 * TICK_S)  # both beats go on ticking: nothing more may fire for that minute
    log = _log(lab, "nightly")
    assert [entry["kind"] for entry in log] == ["fired"], log
    assert abs(log[0]["due"] - due.timestamp()) < 1
    assert len(_campaigns(lab, "nightly")) == 1


def test_firing_while_the_previous_instance_runs_is_a_recorded_skip(beat_lab: tuple[Lab, datetime]) -> None:
    lab, _due = beat_lab
    [running] = _campaigns(lab, "nightly")
    proc = lab.cli("schedule", "run-now", "nightly", "--json")
    firing = json.loads(proc.stdout)
    assert (firing["kind"], firing["campaign_id"]) == ("skipped", running)
    assert _log(lab, "nightly")[0]["detail"] == f"previous instance {running} is still running"
    assert _campaigns(lab, "nightly") == [running]


def test_a_firing_missed_while_beat_was_down_is_recorded_and_skipped(beat_lab: tuple[Lab, datetime]) -> None:
    lab, _due = beat_lab
    missed = datetime.now(UTC) - timedelta(minutes=10)
    path = _campaign(lab.tmp, "late", f"{missed.minute} {missed.hour} * * *", "skip")
    assert lab.cli("schedule", "add", str(path)).returncode == 0
    # As if the last tick that looked at it had run 20 minutes ago: beat was down since.
    lab.client.hset(schedule_key("late"), "checked_at", time.time() - 20 * 60)
    deadline = time.time() + 6 * TICK_S
    while len(_log(lab, "late")) < 2:
        assert time.time() < deadline, _log(lab, "late")
        time.sleep(1)
    kinds = [entry["kind"] for entry in reversed(_log(lab, "late"))]
    assert kinds == ["missed", "skipped"] and _campaigns(lab, "late") == []
