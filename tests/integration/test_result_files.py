"""Nothing from Redis names a path, and no result file is written through a link.

An attacker here is whoever can write Redis (the password holder) or plant links in a
results directory: they name another result directory in the campaign hash, plant
``result.tmp``/``result.json`` links to a root-owned file, swap the campaign's directory
for a link, forge a scheduling message whose campaign id is a path, or put a record under
another campaign's key in the results outbox. Each time the target keeps its content and
owner, checked from outside, and the results go where this process' own settings say.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from model.campaign import load_campaign
from model.result import RESULT_SCHEMA_VERSION, schema_problems
from model.state import campaign_key
from orchestrator import sinks
from orchestrator.history.db import ResultsDb
from orchestrator.planner import plan_runs
from orchestrator.scheduler import Scheduler
from orchestrator.store import CampaignStore
from tests.integration.dispatch import RecordingDispatch
from tests.integration.redis_server import RedisServer, redis_server_fixture  # noqa: F401  (the fixture)

pytestmark = [pytest.mark.integration, pytest.mark.timeout(60)]
REPO = Path(__file__).resolve().parents[2]
CID = "smoke-20261201-120000-beef"
SECRET = "root:$y$j9T$do-not-touch:19000:0:99999:7:::\n"
RECORD = REPO / "tests" / "fixtures" / "results" / "pair-result.json"


@pytest.fixture
def target(tmp_path: Path) -> Path:
    """A root-only file standing in for /etc/shadow or /etc/ld.so.preload."""
    vault = tmp_path / "vault"
    vault.mkdir(mode=0o700)
    path = vault / "shadow"
    path.write_text(SECRET)
    path.chmod(0o600)
    return path


def _untouched(path: Path) -> None:
    assert path.read_text() == SECRET
    assert (path.stat().st_uid, path.stat().st_mode & 0o777) == (0, 0o600)


def _finished_campaign(store: CampaignStore, tmp_path: Path) -> None:
    path = tmp_path / "smoke.yaml"
    path.write_text(
        (REPO / "campaigns" / "smoke.yaml").read_text().replace("../inventory/local.yml", str(REPO / "inventory/local.yml"))
    )
    campaign = load_campaign(path)
    store.create(CID, campaign, plan_runs(campaign))
    judged = {"run_id": "r001", "kernel": "k", "verdict": "pass", "exit_code": 0, "nodes": []}
    store.set_run_status(CID, "r001", "done", verdict="pass", result=judged)


def test_a_result_dir_named_in_redis_is_ignored(redis_server: RedisServer, tmp_path: Path, target: Path) -> None:
    store = CampaignStore(redis_server.client())
    _finished_campaign(store, tmp_path)
    elsewhere = tmp_path / "attacker"
    elsewhere.mkdir()
    for name in ("result.tmp", "result.json"):
        (elsewhere / name).symlink_to(target)
    store.redis.hset(campaign_key(CID), "result_dir", str(elsewhere))  # the Redis writer's move

    results = tmp_path / "results"
    assert Scheduler(store.redis, RecordingDispatch(), results).advance(CID) is False

    _untouched(target)
    assert sorted(p.name for p in elsewhere.iterdir()) == ["result.json", "result.tmp"]  # links left as they were
    written = json.loads((results / CID / "result.json").read_text())
    assert written["campaign_id"] == CID and written["result_dir"] == str(results / CID)
    # The record the scheduler writes is the schema every reader loads, at its version.
    assert written["schema_version"] == RESULT_SCHEMA_VERSION and schema_problems(written) is None


def test_a_link_planted_as_result_json_is_replaced_not_followed(
    redis_server: RedisServer, tmp_path: Path, target: Path
) -> None:
    store = CampaignStore(redis_server.client())
    _finished_campaign(store, tmp_path)
    folder = tmp_path / "results" / CID
    folder.mkdir(parents=True)
    (folder / "result.json").symlink_to(target)

    Scheduler(store.redis, RecordingDispatch(), tmp_path / "results").advance(CID)

    _untouched(target)
    assert not (folder / "result.json").is_symlink()
    assert json.loads((folder / "result.json").read_text())["campaign_id"] == CID
    assert [p.name for p in folder.iterdir()] == ["result.json"]  # no temporary file left behind


def test_a_campaign_directory_swapped_for_a_link_gets_nothing(
    redis_server: RedisServer, tmp_path: Path, target: Path
) -> None:
    store = CampaignStore(redis_server.client())
    _finished_campaign(store, tmp_path)
    results = tmp_path / "results"
    results.mkdir()
    (results / CID).symlink_to(target.parent, target_is_directory=True)

    Scheduler(store.redis, RecordingDispatch(), results).advance(CID)

    _untouched(target)
    assert [p.name for p in target.parent.iterdir()] == ["shadow"]
    assert store.campaign(CID).status == "done"  # the record itself still reached Redis
    assert sinks.awaiting(store.redis, CID) == list(sinks.OUTBOXES)


def test_a_forged_campaign_id_naming_a_path_is_ignored(redis_server: RedisServer, tmp_path: Path) -> None:
    cid = "../../escape/x-20261201-120000-beef"
    client = redis_server.client()
    client.hset(campaign_key(cid), mapping={"id": cid, "status": "running", "name": "x", "file": "f", "lab": "{}"})
    assert Scheduler(client, RecordingDispatch(), tmp_path / "results" / "a" / "b").advance(cid) is False
    assert not (tmp_path / "escape").exists() and not (tmp_path / "results").exists()


def _record(cid: str, verdict: str) -> dict[str, Any]:
    record = json.loads(RECORD.read_text())
    record.update(campaign_id=cid, verdict=verdict)
    return record


def test_reports_go_below_the_results_root_whatever_the_record_says(
    redis_server: RedisServer, tmp_path: Path, target: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    results = tmp_path / "results"
    monkeypatch.setenv("SWAPLAB_RESULTS", str(results))
    monkeypatch.setenv("SWAPLAB_DB_URL", f"sqlite:///{tmp_path / 'results.db'}")
    record = _record(CID, "pass")
    elsewhere = tmp_path / "attacker"
    elsewhere.mkdir()
    (elsewhere / "result.json").write_text("{}")
    (elsewhere / "report.txt").symlink_to(target)
    record["result_dir"] = str(elsewhere)
    (results / CID).mkdir(parents=True)
    (results / CID / "result.json").write_text(json.dumps(record))
    (results / CID / "junit.xml").symlink_to(target)
    client = redis_server.client()
    client.hset(campaign_key(CID), mapping={"id": CID, "status": "done", "result": json.dumps(record)})
    sinks.enqueue(client, CID)

    with ResultsDb() as db:
        assert sinks.deliver(client, db)[sinks.DATABASE] == sinks.Delivered(1, 0)

    _untouched(target)
    assert (elsewhere / "report.txt").is_symlink() and sorted(p.name for p in elsewhere.iterdir()) == [
        "report.txt",
        "result.json",
    ]
    for name in ("report.txt", "report.html", "junit.xml", "report.json"):
        path = results / CID / name
        assert path.is_file() and not path.is_symlink() and path.stat().st_size > 0


def test_a_record_under_a_foreign_key_never_replaces_a_stored_campaign(
    redis_server: RedisServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SWAPLAB_RESULTS", str(tmp_path / "results"))
    monkeypatch.setenv("SWAPLAB_DB_URL", f"sqlite:///{tmp_path / 'results.db'}")
    client = redis_server.client()
    victim = _record(CID, "fail")
    client.hset(campaign_key(CID), mapping={"id": CID, "status": "done", "result": json.dumps(victim)})
    sinks.enqueue(client, CID)
    with ResultsDb() as db:
        assert sinks.deliver(client, db)[sinks.DATABASE] == sinks.Delivered(1, 0)

    # The forger writes a passing record claiming to be CID under a key of its own.
    forged_key = "forged-20261201-120000-0bad"
    client.hset(campaign_key(forged_key), mapping={"id": forged_key, "status": "done", "result": json.dumps(_record(CID, "pass"))})
    sinks.enqueue(client, forged_key)
    with ResultsDb() as db:
        assert sinks.deliver(client, db)[sinks.DATABASE] == sinks.Delivered(0, 0)
        stored = db.campaign(CID)
        assert stored is not None and stored["verdict"] == "fail"
        assert db.campaign(forged_key) is None
    assert "claims to be campaign" in sinks.refused(client, forged_key)[sinks.DATABASE]
