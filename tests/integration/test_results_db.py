"""The results database against real servers: SQLite in a file and a real PostgreSQL.

The same tests run on both: migration from an empty database, storing and reading back real
records, history queries, re-storing, retention, validation. The outbox tests use a real
redis-server too: a campaign that finishes while PostgreSQL is down is stored once it is back.
"""

from __future__ import annotations

import copy
import json
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import func, inspect, select
from sqlalchemy.orm import Session

from model.state import RESULTS_OUTBOX_KEY
from orchestrator import outbox
from orchestrator.history.db import DatabaseUnavailable, InvalidRecord, ResultsDb, head_revision
from orchestrator.history.models import Base, CampaignRow, CriterionRow, FigureRow, NodeRow, RunRow
from tests.conftest import free_port
from tests.integration.postgres_server import PostgresServer, postgres_server_fixture  # noqa: F401  (the fixture)
from tests.integration.redis_server import RedisServer, redis_server_fixture  # noqa: F401  (the fixture)

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]

REPO = Path(__file__).resolve().parents[2]
RESULTS = REPO / "tests" / "fixtures" / "results"
TABLES = {"campaigns", "runs", "nodes", "criteria", "figures", "change_points", "bisections"}
ROWS = (CampaignRow, RunRow, NodeRow, CriterionRow, FigureRow)
DAY = 86400.0


def load_record(name: str) -> dict[str, Any]:
    """A result.json from tests/fixtures/results."""
    data = json.loads((RESULTS / name).read_text())
    assert isinstance(data, dict)
    return data


SMOKE = load_record("smoke-old-result.json")  # a real result.json of today's code
PAIR = load_record("pair-result.json")  # issue 12's record: figures, kernel_info, settings, redone


def variant(base: dict[str, Any], cid: str, **fields: Any) -> dict[str, Any]:
    """A copy of ``base`` as another campaign instance."""
    return {**copy.deepcopy(base), "campaign_id": cid, **fields}


def counts(db: ResultsDb) -> dict[str, int]:
    """Rows per table."""
    with Session(db.engine) as session:
        return {row.__tablename__: session.scalar(select(func.count()).select_from(row)) or 0 for row in ROWS}


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
    if server.is_running():
        server.drop_database(name)


@pytest.fixture
def db(url: str) -> Iterator[ResultsDb]:
    with ResultsDb(url) as results:
        yield results


# -- schema -------------------------------------------------------------------------------
def test_a_runs_faults_are_stored_and_come_back_in_its_history(db: ResultsDb) -> None:
    faulted = variant(PAIR, "pair-20261203-120000-f00d")
    for run in faulted["runs"]:
        run.setdefault("settings", {})["faults"] = ["server-stall on server at +10 s for 5 s"]
    db.store(PAIR)
    db.store(faulted)
    by_id = {item["campaign_id"]: item for item in db.history()}
    ran = [r for r in by_id[faulted["campaign_id"]]["runs"] if r["verdict"] != "skipped"]
    assert ran and {tuple(r["faults"]) for r in ran} == {
        ("server-stall on server at +10 s for 5 s",)
    }
    assert all(r["faults"] == [] for r in by_id[PAIR["campaign_id"]]["runs"])


def test_migration_creates_everything_from_an_empty_database(url: str) -> None:
    with ResultsDb(url) as db:
        assert set(inspect(db.engine).get_table_names()) == set()
        assert db.revision() is None

        db.upgrade()

        assert set(inspect(db.engine).get_table_names()) == TABLES | {"alembic_version"}
        assert db.revision() == head_revision() is not None
        with db.engine.connect() as conn:  # the migration builds exactly what the models say
            assert compare_metadata(MigrationContext.configure(conn), Base.metadata) == []
        db.store(SMOKE)

    with ResultsDb(url) as again:  # a second upgrade (another process, a restart) changes nothing
        again.upgrade()
        assert again.revision() == head_revision()
        assert again.campaign(SMOKE["campaign_id"]) == SMOKE


def test_concurrent_upgrades_of_an_empty_database_all_succeed(url: str) -> None:
    dbs = [ResultsDb(url) for _ in range(4)]
    gate = threading.Barrier(len(dbs))
    errors: list[BaseException] = []

    def upgrade(db: ResultsDb) -> None:
        gate.wait()
        try:
            db.upgrade()
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=upgrade, args=(db,)) for db in dbs]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert errors == []
    assert {db.revision() for db in dbs} == {head_revision()}
    for db in dbs:
        db.close()


def test_the_first_operation_creates_the_schema(db: ResultsDb) -> None:
    assert db.history() == []  # no explicit upgrade(): the first use migrated
    assert db.revision() == head_revision()


# -- storing and reading back -------------------------------------------------------------
def test_the_smoke_record_round_trips(db: ResultsDb) -> None:
    db.store(SMOKE)

    assert db.campaign(SMOKE["campaign_id"]) == SMOKE
    assert db.campaign("no-such-campaign") is None
    assert counts(db) == {"campaigns": 1, "runs": 1, "nodes": 1, "criteria": 8, "figures": 0}
    [item] = db.history()
    assert item == {
        "campaign_id": "smoke-20261129-231308-3f6f",
        "campaign": "smoke",
        "finished_at": SMOKE["finished_at"],
        "verdict": "pass",
        "exit_code": 0,
        "runs": [
            {
                "run_id": "r001",
                "kernel": "r001 linux-image-amd64 / overcommit #1",
                # A record before kernel_info: the release the node booted.
                "release": "6.1.0-57-amd64",
                "workload": "overcommit",
                "timing": "host",  # a record before timing was kept: host time
                "faults": [],  # and before faults were: none
                "repeat": 1,
                "verdict": "pass",
                "attempt": 1,
                "redone": [],
                "figures": {},
                "nodes": [{"node": "node1", "verdict": "pass", "figures": {}}],
            }
        ],
    }


def test_a_full_record_is_stored_in_queryable_rows(db: ResultsDb) -> None:
    db.store(PAIR)

    assert db.campaign(PAIR["campaign_id"]) == PAIR
    with Session(db.engine) as session:
        runs = {run.run_id: run for run in session.scalars(select(RunRow).order_by(RunRow.position))}
        assert list(runs) == ["r001", "r002", "r003", "r004", "r005"]
        built = runs["r002"]
        assert (built.release, built.source, built.artifact) == (
            "6.1.192-swaplab+",
            "build",
            PAIR["runs"][1]["kernel_info"]["artifact"],
        )
        assert built.patches == PAIR["runs"][1]["kernel_info"]["patches"]
        assert built.attempt == 2 and built.redone == PAIR["runs"][1]["redone"]
        assert (built.nfs_version, built.nfs_options, built.nfs_backend) == ("4.1", "hard,timeo=600", "ganesha")
        assert built.sysctls == {"vm.min_free_kbytes": "16384", "vm.swappiness": "60"}
        assert (built.node_ram_mib, built.swap_mib, built.workload, built.workload_mib) == (256, 512, "overcommit", 384)
        assert runs["r003"].reasons[0].startswith("no healthy node") and runs["r003"].nodes == []
        assert (runs["r005"].verdict, runs["r005"].attempt) == ("skipped", 0)

        figure = session.scalars(
            select(FigureRow)
            .join(NodeRow)
            .where(NodeRow.node == "node2", NodeRow.run_id == built.id, FigureRow.name == "swap_in_mibps")
        ).one()
        assert (figure.value, figure.unit, figure.better, figure.prometheus, figure.agrees) == (
            8.39,
            "MiB/s",
            "higher",
            10.9909,
            False,
        )
        # Only passing runs' figures count in comparisons; a failed run keeps its own.
        passed = dict(
            session.execute(
                select(RunRow.run_id, FigureRow.run_passed).join(NodeRow, NodeRow.run_id == RunRow.id).join(FigureRow)
            )
            .unique()
            .all()
        )
        assert passed == {"r001": True, "r002": True, "r004": False}
        failed = session.scalars(select(CriterionRow).where(CriterionRow.outcome == "fail")).all()
        assert [(c.name, c.builtin) for c in failed] and all(c.node.run.run_id == "r004" for c in failed)
    assert counts(db)["figures"] == 3 * 2 * 9  # three runs ran, two nodes each, nine figures


def test_history_is_newest_first_and_filters_by_campaign_and_kernel(db: ResultsDb) -> None:
    now = time.time()
    db.store(variant(PAIR, "pair-b", campaign="other", finished_at=now - 10))
    db.store(variant(SMOKE, "smoke-a", finished_at=now - 300))
    db.store(variant(PAIR, "pair-a", finished_at=now - 200))

    assert [h["campaign_id"] for h in db.history()] == ["pair-b", "pair-a", "smoke-a"]
    assert [h["campaign_id"] for h in db.history(limit=2)] == ["pair-b", "pair-a"]
    assert [h["campaign_id"] for h in db.history(campaign="pair-patched")] == ["pair-a"]
    assert db.history(campaign="nothing") == []

    built = db.history(kernel="swaplab+")  # a release; only the matching runs are listed
    assert [h["campaign_id"] for h in built] == ["pair-b", "pair-a"]
    assert [run["run_id"] for run in built[0]["runs"]] == ["r002", "r004"]
    assert [h["campaign_id"] for h in db.history(kernel="6.1.0-57")] == ["pair-b", "pair-a", "smoke-a"]
    by_label = db.history(campaign="pair-patched", kernel="BUILD SWAPLAB")  # a label, any case
    assert [run["run_id"] for run in by_label[0]["runs"]] == ["r002", "r004"]
    assert db.history(kernel="%") == [] and db.history(kernel="_") == []  # wildcards are literal

    r002 = built[0]["runs"][0]
    assert (r002["attempt"], r002["verdict"], r002["release"]) == (2, "pass", "6.1.192-swaplab+")
    assert r002["redone"] == [
        {"attempt": 1, "reason": "worker lost: node task(s) for node1 stopped renewing their lease"}
    ]
    assert r002["figures"]["swap_out_mibps"] == pytest.approx(statistics.fmean([12.94, 12.76]))
    assert [node["figures"]["swap_out_mibps"] for node in r002["nodes"]] == [12.94, 12.76]
    assert list(r002["figures"])[:3] == ["swap_out_mibps", "swap_in_mibps", "workload_wall_s"]


def test_storing_a_campaign_again_replaces_its_rows(db: ResultsDb) -> None:
    db.store(PAIR)
    before = counts(db)
    rejudged = copy.deepcopy(PAIR)
    rejudged.update(verdict="pass", exit_code=0, rechecked_at=time.time())
    rejudged["runs"][3]["verdict"] = "pass"
    del rejudged["runs"][0]["nodes"][1]  # fewer rows than before: none may be left behind

    db.store(rejudged)
    db.store(rejudged)

    assert db.campaign(PAIR["campaign_id"]) == rejudged
    [item] = db.history()
    assert (item["verdict"], item["exit_code"]) == ("pass", 0)
    after = counts(db)
    assert after["campaigns"] == 1 and after["runs"] == before["runs"]
    assert after["nodes"] == before["nodes"] - 1 and after["figures"] == before["figures"] - 9


def test_concurrent_stores_of_one_campaign_leave_one_copy(url: str) -> None:
    dbs = [ResultsDb(url) for _ in range(3)]
    for db in dbs:
        db.upgrade()
    gate = threading.Barrier(len(dbs))
    errors: list[BaseException] = []

    def store(db: ResultsDb) -> None:
        gate.wait()
        try:
            db.store(PAIR)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=store, args=(db,)) for db in dbs]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert errors == []
    assert counts(dbs[0])["campaigns"] == 1 and counts(dbs[0])["runs"] == 5
    for db in dbs:
        db.close()


# -- retention ----------------------------------------------------------------------------
def test_prune_deletes_old_campaigns_with_all_their_rows(db: ResultsDb) -> None:
    now = time.time()
    db.store(variant(PAIR, "old", finished_at=now - 40 * DAY))
    db.store(variant(SMOKE, "recent", finished_at=now - 1 * DAY))

    assert db.prune(30) == 1
    assert [h["campaign_id"] for h in db.history()] == ["recent"]
    assert counts(db) == {"campaigns": 1, "runs": 1, "nodes": 1, "criteria": 8, "figures": 0}  # cascaded
    assert db.prune(30) == 0
    with pytest.raises(ValueError):
        db.prune(-1)


def test_store_applies_the_configured_retention(url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SWAPLAB_DB_RETENTION_DAYS", "30")
    with ResultsDb(url) as db:
        db.store(variant(PAIR, "old", finished_at=time.time() - 31 * DAY))
        db.store(variant(SMOKE, "new", finished_at=time.time()))
        assert [h["campaign_id"] for h in db.history()] == ["new"]
    monkeypatch.setenv("SWAPLAB_DB_RETENTION_DAYS", "forever")
    with pytest.raises(ValueError, match="SWAPLAB_DB_RETENTION_DAYS"):
        ResultsDb(url)


# -- what crosses the process boundary is checked -----------------------------------------
@pytest.mark.parametrize(
    ("record", "message"),
    [
        ({k: v for k, v in SMOKE.items() if k != "campaign_id"}, "campaign_id: Field required"),
        ({k: v for k, v in SMOKE.items() if k != "runs"}, "runs: Field required"),
        ({**SMOKE, "campaign_id": ""}, "campaign_id: String should have at least 1 character"),
        ({**SMOKE, "runs": [SMOKE["runs"][0], SMOKE["runs"][0]]}, "a run id appears twice"),
        ({**SMOKE, "runs": [{"kernel": "k"}]}, "runs.0.run_id: Field required"),
        ({**SMOKE, "runs": "r001"}, "runs: Input should be a valid list"),
        ([SMOKE], "expected a JSON object"),
    ],
    ids=["no-id", "no-runs", "empty-id", "duplicate-run", "run-without-id", "runs-not-a-list", "not-an-object"],
)
def test_a_record_without_what_identifies_it_is_refused(db: ResultsDb, record: Any, message: str) -> None:
    with pytest.raises(InvalidRecord, match="refused") as refused:
        db.store(record)
    assert message in str(refused.value)
    assert db.history() == []


def test_missing_optional_fields_and_unstorable_values_do_not_crash(db: ResultsDb) -> None:
    minimal = {"campaign_id": "minimal", "runs": [{"run_id": "r001", "nodes": [{"node": "n1", "figures": None}]}]}
    db.store(minimal)
    [item] = db.history()
    assert item["campaign"] == "" and item["finished_at"] == pytest.approx(time.time(), abs=60)  # dated when stored
    assert item["runs"][0]["release"] is None and item["runs"][0]["attempt"] == 1

    odd = copy.deepcopy(PAIR)
    odd["runs"][0]["nodes"][0]["figures"]["swap_out_mibps"]["value"] = float("nan")
    odd["runs"][0]["nodes"][0]["criteria"][0]["detail"] = "before\x00after"
    db.store(odd)
    stored = db.campaign(PAIR["campaign_id"])
    assert stored is not None
    assert stored["runs"][0]["nodes"][0]["figures"]["swap_out_mibps"]["value"] is None
    assert stored["runs"][0]["nodes"][0]["criteria"][0]["detail"] == "beforeafter"
    [pair] = db.history(campaign="pair-patched")
    assert pair["runs"][0]["nodes"][0]["figures"]["swap_out_mibps"] is None


def test_an_unreachable_database_is_reported_as_unavailable(tmp_path: Path) -> None:
    port = free_port()  # nobody listens there
    down = ResultsDb(f"postgresql+psycopg://swaplab:secret-pw@127.0.0.1:{port}/swaplab")  # building does not connect
    with pytest.raises(DatabaseUnavailable, match="unavailable") as refused:
        down.store(SMOKE)
    assert "secret-pw" not in str(refused.value) and str(port) in str(refused.value)
    with pytest.raises(DatabaseUnavailable):
        ResultsDb(f"sqlite:///{tmp_path / 'missing-dir' / 'results.db'}").history()


# -- nothing is lost when the database is down ---------------------------------------------
def test_a_campaign_finished_while_the_database_is_down_is_stored_when_it_is_back(
    postgres_server: PostgresServer, redis_server: RedisServer
) -> None:
    client = redis_server.client()
    name = postgres_server.create_database()
    worker_db = ResultsDb(postgres_server.url(name))
    worker_db.upgrade()  # the worker has used the database before: its pool holds connections
    records = {SMOKE["campaign_id"]: SMOKE}
    postgres_server.stop()
    try:
        outbox.enqueue(client, RESULTS_OUTBOX_KEY, SMOKE["campaign_id"])  # the campaign finishes now

        assert outbox.flush(client, RESULTS_OUTBOX_KEY, worker_db, records.get) == (0, 1)
        assert outbox.flush(client, RESULTS_OUTBOX_KEY, ResultsDb(postgres_server.url(name)), records.get) == (0, 1)  # a fresh worker too
        assert outbox.pending(client, RESULTS_OUTBOX_KEY) == [SMOKE["campaign_id"]] and outbox.set_aside(client, RESULTS_OUTBOX_KEY) == {}
    finally:
        postgres_server.start()

    assert outbox.flush(client, RESULTS_OUTBOX_KEY, worker_db, records.get) == (1, 0)
    assert client.hgetall(RESULTS_OUTBOX_KEY) == {}
    with ResultsDb(postgres_server.url(name)) as reader:
        assert reader.campaign(SMOKE["campaign_id"]) == SMOKE
    worker_db.close()
    postgres_server.drop_database(name)


def test_the_outbox_sets_aside_what_it_cannot_store_and_keeps_what_it_cannot_read_yet(
    db: ResultsDb, redis_server: RedisServer
) -> None:
    client = redis_server.client(decode_responses=True)
    broken = {k: v for k, v in variant(SMOKE, "broken").items() if k != "runs"}
    records: dict[str, Mapping[str, Any]] = {"good": variant(SMOKE, "good"), "broken": broken}
    loads: list[str] = []

    def load(cid: str) -> Mapping[str, Any] | None:
        loads.append(cid)
        if cid == "garbled":
            raise json.JSONDecodeError("Expecting value", "", 0)
        return records.get(cid)  # "later": not written yet

    for cid in ("good", "broken", "later", "garbled"):
        outbox.enqueue(client, RESULTS_OUTBOX_KEY, cid)

    assert outbox.flush(client, RESULTS_OUTBOX_KEY, db, load) == (1, 1)
    assert outbox.pending(client, RESULTS_OUTBOX_KEY) == ["later"]
    aside = outbox.set_aside(client, RESULTS_OUTBOX_KEY)
    assert set(aside) == {"broken", "garbled"}
    assert "runs: Field required" in aside["broken"] and "unreadable record" in aside["garbled"]
    assert db.campaign("good") == records["good"]

    loads.clear()
    assert outbox.flush(client, RESULTS_OUTBOX_KEY, db, load) == (0, 1)
    assert loads == ["later"]  # what was set aside is not retried

    records["broken"] = variant(SMOKE, "broken")  # fixed; enqueueing it again retries it
    outbox.enqueue(client, RESULTS_OUTBOX_KEY, "broken")
    assert outbox.flush(client, RESULTS_OUTBOX_KEY, db, load) == (1, 1)
    assert db.campaign("broken") is not None and "broken" not in outbox.set_aside(client, RESULTS_OUTBOX_KEY)


def test_a_campaign_enqueued_again_while_it_is_stored_is_stored_again(db: ResultsDb, redis_server: RedisServer) -> None:
    client = redis_server.client()
    first, second = variant(SMOKE, "c1", verdict="fail"), variant(SMOKE, "c1", verdict="pass")
    current = [first]

    def load_and_rejudge(cid: str) -> Mapping[str, Any]:
        record = current[0]
        if record is first:  # `swaplab check` re-judges the campaign while the flush stores it
            current[0] = second
            outbox.enqueue(client, RESULTS_OUTBOX_KEY, cid)
        return record

    outbox.enqueue(client, RESULTS_OUTBOX_KEY, "c1")
    assert outbox.flush(client, RESULTS_OUTBOX_KEY, db, load_and_rejudge) == (1, 1)
    assert outbox.flush(client, RESULTS_OUTBOX_KEY, db, load_and_rejudge) == (1, 0)
    assert db.campaign("c1") == second


def test_the_outbox_loads_no_database_library() -> None:
    """The scheduler enqueues under a campaign lock: importing the sinks must stay light."""
    probe = "import sys, orchestrator.sinks; print(sorted(m for m in sys.modules if m.split('.')[0] in ('sqlalchemy', 'alembic', 'psycopg')))"
    proc = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, cwd=REPO, check=True)
    assert proc.stdout.strip() == "[]"
