"""Change points in the results database, on SQLite and on a real PostgreSQL.

The migrations 0001 -> head (a database that already holds campaigns keeps them), the
empty database to head, storing and replacing a campaign's change points, and
``history_changes`` (the body of ``swaplab history CAMPAIGN --changes``) over stored nights.

The nights are built from a real record (tests/fixtures/results/pair-result.json, run
r001): each night is that record with its own campaign id, date, kernel release and
swap throughputs — the swap figures of the first nights are the real ones of the six
recorded smoke runs (tests/fixtures/figures/recorded.json), later nights the same at 66 %
(a step of -34 %). Only storage and the command are tested here; the detection on real
series is tests/unit/test_changepoints.py.
"""

from __future__ import annotations

import copy
import datetime
import json
import os
import re
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import inspect, text

from model.state import CONTROL_QUEUE, campaign_key
from orchestrator import sinks
from orchestrator.changepoints import ChangePoint
from orchestrator.cli.changes_cmd import history_changes
from orchestrator.history.changes import store_change_points, stored_change_points
from orchestrator.history.db import ResultsDb, alembic_config, head_revision
from orchestrator.history.models import Base
from orchestrator.services import LocalWorker
from orchestrator.sinks import update_change_points
from tests.integration.postgres_server import PostgresServer, postgres_server_fixture  # noqa: F401  (the fixture)
from tests.integration.redis_server import RedisServer, redis_server_fixture  # noqa: F401  (the fixture)

pytestmark = [pytest.mark.integration, pytest.mark.timeout(60)]

REPO = Path(__file__).resolve().parents[2]
PAIR = json.loads((REPO / "tests" / "fixtures" / "results" / "pair-result.json").read_text())
RECORDED = json.loads((REPO / "tests" / "fixtures" / "figures" / "recorded.json").read_text())["runs"]
FIRST_NIGHT = datetime.datetime(2026, 11, 1, 2, 0, tzinfo=datetime.UTC).timestamp()
DAY = 86400.0
STEP = 0.66
OLD, NEW = "6.1.0-56-amd64", "6.1.0-57-amd64"
TABLES_0001 = {"campaigns", "runs", "nodes", "criteria", "figures"}


@pytest.fixture(autouse=True)
def _no_retention(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("SWAPLAB_DB_RETENTION_DAYS", raising=False)


@pytest.fixture(params=["sqlite", "postgresql"])
def url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """An empty database: a SQLite file, or a fresh database on the module's PostgreSQL."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'results.db'}"
        return
    server: PostgresServer = request.getfixturevalue("postgres_server")
    name = server.create_database()
    yield server.url(name)
    server.drop_database(name)


def stored_night(day: int, release: str, swap_out: float, swap_in: float, passed: bool = True) -> dict[str, Any]:
    """Run r001 of the pair record as the night ``day`` of the campaign "nightly"."""
    record: dict[str, Any] = copy.deepcopy(PAIR)
    at = FIRST_NIGHT + day * DAY
    stamp = datetime.datetime.fromtimestamp(at, datetime.UTC).strftime("%Y%m%d")
    run = record["runs"][0]
    record.update(
        campaign="nightly",
        campaign_id=f"nightly-{stamp}-020000-{day:04x}",
        started_at=at - 60,
        finished_at=at,
        verdict="pass" if passed else "fail",
        exit_code=0 if passed else 3,
        runs=[run],
        skipped_runs=[],
    )
    run["kernel_info"]["release"] = release
    run["verdict"] = "pass" if passed else "fail"
    for node in run["nodes"]:
        node["figures"]["swap_out_mibps"]["value"] = swap_out
        node["figures"]["swap_in_mibps"]["value"] = swap_in
    return record


def nightly_records() -> list[dict[str, Any]]:
    """6 nights of the old kernel, 1 whose run failed, 6 of the new kernel 34 % slower."""
    real = [(r["figures"]["swap_out_mibps"], r["figures"]["swap_in_mibps"]) for r in RECORDED]
    records = [stored_night(day, OLD, out, inn) for day, (out, inn) in enumerate(real)]
    records.append(stored_night(len(records), NEW, 3.0, 2.0, passed=False))
    first_new = len(records)
    records += [stored_night(first_new + i, NEW, out * STEP, inn * STEP) for i, (out, inn) in enumerate(real)]
    return records


def point(
    campaign_id: str, figure: str = "swap_out_mibps", beyond: bool = True, at: float = FIRST_NIGHT
) -> ChangePoint:
    return ChangePoint(
        figure=figure,
        unit="MiB/s",
        better="higher",
        workload="overcommit",
        campaign_id=campaign_id,
        at=at,
        release_before=OLD,
        release_after=NEW,
        median_before=24.5,
        median_after=16.2,
        nights_before=6,
        nights_after=6,
        change_pct=-33.9,
        difference=-8.3,
        worse=True,
        beyond_tolerance=beyond,
        tolerance=0.1,
        abs_tolerance=None,
    )


# -- the migrations -------------------------------------------------------------------------
def test_a_database_at_0001_is_migrated_to_head_and_keeps_its_campaigns(url: str) -> None:
    night = stored_night(0, OLD, 24.0, 14.0)
    with ResultsDb(url) as db:
        db.store(night)
        with db.engine.begin() as conn:  # back to 0001: what 0001's code left behind
            command.downgrade(alembic_config(conn), "0001")
        assert db.revision() == "0001"
        assert set(inspect(db.engine).get_table_names()) == TABLES_0001 | {"alembic_version"}
        assert "timing" not in {c["name"] for c in inspect(db.engine).get_columns("runs")}
        assert db.campaign(night["campaign_id"]) == night  # the downgrade lost nothing either

        db.upgrade()

        assert db.revision() == head_revision() == "0005"
        assert set(inspect(db.engine).get_table_names()) == TABLES_0001 | {"change_points", "bisections", "alembic_version"}
        with db.engine.connect() as conn:  # the migrations build exactly what the models say
            assert compare_metadata(MigrationContext.configure(conn), Base.metadata) == []
        assert db.campaign(night["campaign_id"]) == night
        [item] = db.history(campaign="nightly")
        assert item["campaign_id"] == night["campaign_id"]
        assert [run["timing"] for run in item["runs"]] == ["host"]  # runs before 0003 ran on host time
        assert [run["faults"] for run in item["runs"]] == [[]]  # and before 0004 without faults
        assert "bisection" not in item  # and before 0005 no campaign was a bisection's step


def test_a_run_keeps_its_clock(url: str) -> None:
    night = stored_night(0, OLD, 24.0, 14.0)
    night["runs"][0]["settings"]["timing"] = "guest-icount5"
    with ResultsDb(url) as db:
        db.store(night)
        [item] = db.history(campaign="nightly")
    assert [run["timing"] for run in item["runs"]] == ["guest-icount5"]


def test_an_empty_database_is_migrated_to_head(url: str) -> None:
    with ResultsDb(url) as db:
        db.upgrade()
        assert db.revision() == head_revision()
        assert "change_points" in inspect(db.engine).get_table_names()
        with db.engine.connect() as conn:
            assert compare_metadata(MigrationContext.configure(conn), Base.metadata) == []


# -- storing --------------------------------------------------------------------------------
def test_storing_replaces_the_campaigns_change_points_only(url: str) -> None:
    with ResultsDb(url) as db:
        first = [point("nightly-a"), point("nightly-a", "swap_in_mibps"), point("nightly-a", "psi_full_share", False)]
        assert store_change_points(db, "nightly", first, detected_at=1.0) == 2  # below tolerance: not stored
        store_change_points(db, "other", [point("other-a")], detected_at=1.0)
        assert [row["figure"] for row in stored_change_points(db, "nightly")] == ["swap_out_mibps", "swap_in_mibps"]

        assert store_change_points(db, "nightly", [point("nightly-b", at=FIRST_NIGHT + DAY)], detected_at=2.0) == 1

        [row] = stored_change_points(db, "nightly")
        assert {k: v for k, v in row.items() if k != "id"} == {
            "campaign": "nightly",
            "figure": "swap_out_mibps",
            "workload": "overcommit",
            "campaign_id": "nightly-b",
            "at": FIRST_NIGHT + DAY,
            "release_before": OLD,
            "release_after": NEW,
            "median_before": 24.5,
            "median_after": 16.2,
            "change_pct": -33.9,
            "worse": True,
            "detected_at": 2.0,
        }
        assert [r["campaign_id"] for r in stored_change_points(db, "other")] == ["other-a"]
        store_change_points(db, "nightly", [])  # no change any more: nothing left to mark
        assert stored_change_points(db, "nightly") == []
        # The dashboard's kind of query, in plain SQL ("at" is a column name on both).
        with db.engine.connect() as conn:
            rows = conn.execute(
                text("SELECT campaign_id, at, figure, worse FROM change_points WHERE campaign = :c ORDER BY at"),
                {"c": "other"},
            ).all()
        assert [tuple(r) for r in rows] == [("other-a", FIRST_NIGHT, "swap_out_mibps", True)]


# -- the command ----------------------------------------------------------------------------
def test_history_changes_names_the_night_the_kernel_and_the_figures(
    url: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    records = nightly_records()
    with ResultsDb(url) as db:
        for record in records:
            db.store(record)
    monkeypatch.setenv("SWAPLAB_DB_URL", url)
    first_new = records[7]

    history_changes("nightly", as_json=False, show_all=False)

    out, err = capsys.readouterr()
    lines = out.splitlines()
    assert len(lines) == 2, out
    for line, figure in zip(lines, ("swap_out_mibps", "swap_in_mibps"), strict=True):
        assert re.fullmatch(
            rf"2026-11-08 \(night {first_new['campaign_id']}\): {figure} \d+\.\d -> \d+\.\d MiB/s "
            rf"\(-34\.0 %, worse\), kernel {OLD} -> {NEW}",
            line,
        ), line
    assert f"1 night(s) without a passing run, not counted: {records[6]['campaign_id']}" in err

    history_changes("nightly", as_json=True, show_all=True)

    data = json.loads(capsys.readouterr().out)
    assert [p["figure"] for p in data["change_points"]] == ["swap_out_mibps", "swap_in_mibps"]
    assert [s["campaign_id"] for s in data["skipped"]] == [records[6]["campaign_id"]]
    with ResultsDb(url) as db:  # a read command: storing is the control plane's (the changes sink)
        assert stored_change_points(db, "nightly") == []


def test_history_changes_of_a_campaign_never_stored_exits_2(
    url: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("SWAPLAB_DB_URL", url)
    with pytest.raises(SystemExit) as exited:
        history_changes("no-such-campaign", as_json=False, show_all=False)
    assert exited.value.code == 2
    assert "no stored instance of campaign 'no-such-campaign'" in capsys.readouterr().err


# -- the recording ----------------------------------------------------------------------------
def test_a_night_the_control_worker_records_has_its_change_points_stored_without_any_command(
    url: str, redis_server: RedisServer, tmp_path: Path
) -> None:
    """What happens when a night ends: the night is in its sinks' outboxes in a real Redis,
    a real control worker starts (and runs the sinks), the change points follow."""
    records = nightly_records()
    *earlier, last = records
    with ResultsDb(url) as db:
        for record in earlier[:6]:  # only the old kernel's six nights: too few to tell yet
            db.store(record)
        assert update_change_points(db, "nightly") is None
        for record in earlier[6:]:
            db.store(record)
        assert stored_change_points(db, "nightly") == []  # stored straight, as before: no analysis
    client = redis_server.client()
    client.hset(campaign_key(last["campaign_id"]), mapping={"id": last["campaign_id"], "result": json.dumps(last)})
    sinks.enqueue(client, last["campaign_id"])
    env = {**os.environ, "SWAPLAB_REDIS_URL": redis_server.url, "SWAPLAB_DB_URL": url}
    env["SWAPLAB_RESULTS"] = str(tmp_path / "results")  # no report directory here
    env.pop("SWAPLAB_WEBHOOK_URL", None)
    worker = LocalWorker([CONTROL_QUEUE], 2, tmp_path / "worker.log", name="sinks", env=env)
    worker.start(client)  # a control worker that starts runs what waits in the outboxes
    try:
        deadline = time.monotonic() + 40
        while sinks.awaiting(client, last["campaign_id"]) and time.monotonic() < deadline:
            time.sleep(0.3)
    finally:
        worker.stop()

    assert sinks.awaiting(client, last["campaign_id"]) == [], (tmp_path / "worker.log").read_text()[-3000:]
    with ResultsDb(url) as db:
        assert db.campaign(last["campaign_id"]) is not None
        stored = stored_change_points(db, "nightly")
    assert [(row["figure"], row["campaign_id"], row["worse"]) for row in stored] == [
        ("swap_out_mibps", records[7]["campaign_id"], True),
        ("swap_in_mibps", records[7]["campaign_id"], True),
    ]
    assert stored[0]["change_pct"] == pytest.approx(-34.0)


def test_the_change_points_wait_for_the_night_to_be_in_the_database(
    url: str, redis_server: RedisServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The changes sink runs only once the database sink has the night: not on what it lacks."""
    monkeypatch.setenv("SWAPLAB_RESULTS", str(tmp_path / "results"))
    client = redis_server.client()
    last = nightly_records()[-1]
    sinks.enqueue(client, last["campaign_id"])  # no record yet: the database sink keeps it
    with ResultsDb(url) as db:
        delivered = sinks.deliver(client, db)
    assert delivered[sinks.DATABASE] == sinks.Delivered(0, 1) and delivered[sinks.CHANGES] == sinks.Delivered(0, 1)
    client.hset(campaign_key(last["campaign_id"]), mapping={"id": last["campaign_id"], "result": json.dumps(last)})
    with ResultsDb(url) as db:
        delivered = sinks.deliver(client, db)
    assert delivered[sinks.DATABASE] == sinks.Delivered(1, 0) and delivered[sinks.CHANGES] == sinks.Delivered(1, 0)


def test_too_few_nights_have_no_change_points_to_store(url: str) -> None:
    with ResultsDb(url) as db:
        for record in nightly_records()[:5]:
            db.store(record)
        assert update_change_points(db, "nightly") is None
        assert stored_change_points(db, "nightly") == []
