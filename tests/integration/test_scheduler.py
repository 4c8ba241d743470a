"""Scheduler decisions against a real redis-server: runs are prepared once before they hold
nodes, a failed or lost setup ends or redoes the run, and a critical criterion failing in
one run keeps the campaign's remaining runs from starting."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from model.campaign import load_campaign
from model.state import run_key, worker_key
from orchestrator.cli.distributed_cmds import finish_output
from orchestrator.planner import plan_runs
from orchestrator.scheduler import SETUP_SILENT_S, Scheduler
from orchestrator.store import CampaignStore
from tests.integration.dispatch import RecordingDispatch
from tests.integration.redis_server import RedisServer, redis_server_fixture  # noqa: F401  (the fixture)

pytestmark = [pytest.mark.integration, pytest.mark.timeout(60)]
REPO = Path(__file__).resolve().parents[2]
CID = "one-20261129-120000-abcd"
C1 = "three-20261129-120000-abcd"


def test_a_failed_critical_criterion_skips_the_remaining_runs(redis_server: RedisServer, tmp_path: Path) -> None:
    path = tmp_path / "three.yaml"
    path.write_text(
        (REPO / "campaigns" / "smoke.yaml")
        .read_text()
        .replace("../inventory/local.yml", str(REPO / "inventory/local.yml"))
        + "repeats: 3\n"
    )
    campaign = load_campaign(path)
    store = CampaignStore(redis_server.client())
    store.create(C1, campaign, plan_runs(campaign))
    dispatch = RecordingDispatch()
    scheduler = Scheduler(store.redis, dispatch, tmp_path)
    judged = {"run_id": "r001", "kernel": "k", "verdict": "fail", "exit_code": 3, "stops_campaign": True, "nodes": []}
    store.set_run_status(C1, "r001", "done", verdict="fail", result=judged)

    assert scheduler.advance(C1) is False  # nothing left to do: the campaign is finished
    assert dispatch == RecordingDispatch()  # nothing prepared, started or judged
    assert [run.status for run in store.runs(C1)] == ["done", "skipped", "skipped"]
    result = json.loads((tmp_path / C1 / "result.json").read_text())
    assert (result["verdict"], result["exit_code"]) == ("fail", 3)
    assert [s["run_id"] for s in result["skipped_runs"]] == ["r002", "r003"]
    assert "critical criterion failed in run r001" in result["skipped_runs"][0]["reason"]


def _one_run(redis_server: RedisServer, tmp_path: Path) -> tuple[CampaignStore, Scheduler, RecordingDispatch]:
    path = tmp_path / "one.yaml"
    path.write_text(
        (REPO / "campaigns" / "smoke.yaml").read_text().replace("../inventory/local.yml", str(REPO / "inventory/local.yml"))
    )
    campaign = load_campaign(path)
    store = CampaignStore(redis_server.client())
    store.create(CID, campaign, plan_runs(campaign))
    # A worker serving the lab, as its registry entry says.
    store.redis.set(worker_key("w1"), json.dumps({"queues": ["control", "lab.local"], "concurrency": 6}))
    dispatch = RecordingDispatch()
    return store, Scheduler(store.redis, dispatch, tmp_path), dispatch


PREPARED = {"package": "p", "version": "v", "kver": "6.1.0-1-amd64", "source": "s", "image_hash": "0" * 64}


def test_a_run_is_prepared_once_before_any_node_is_leased(redis_server: RedisServer, tmp_path: Path) -> None:
    store, scheduler, dispatch = _one_run(redis_server, tmp_path)
    assert scheduler.advance(CID) and scheduler.advance(CID)
    assert dispatch.prepared == ["r001"] and dispatch.started == []
    assert store.run(CID, "r001").status == "preparing"
    assert list(store.redis.scan_iter("swaplab:lease:*")) == []  # nothing held while it prepares

    store.set_run(CID, "r001", prepared=PREPARED, prepared_at=time.time())
    scheduler.advance(CID)
    run = store.run(CID, "r001")
    assert dispatch.started == ["r001"] and dispatch.prepared == ["r001"]
    assert run.status == "provisioning" and run.nodes == ["node1"]
    assert store.redis.get("swaplab:lease:local:node1") == f"{CID}:r001:1".encode()


@pytest.mark.parametrize(("cause", "verdict", "code"), [("infra", "infra-error", 2), ("input", "invalid", 4)])
def test_a_failed_setup_ends_the_run_before_it_holds_a_node(
    redis_server: RedisServer, tmp_path: Path, cause: str, verdict: str, code: int
) -> None:
    store, scheduler, dispatch = _one_run(redis_server, tmp_path)
    scheduler.advance(CID)
    store.set_run(CID, "r001", prepare_failure={"cause": cause, "reason": "apt has no usable version"})
    assert scheduler.advance(CID) is False  # the campaign is over
    result = store.run(CID, "r001").result
    assert (result["verdict"], result["exit_code"]) == (verdict, code)
    assert "apt has no usable version" in result["reasons"][0]
    assert dispatch.started == []


def test_a_setup_whose_worker_went_silent_is_redone_once(redis_server: RedisServer, tmp_path: Path) -> None:
    store, scheduler, dispatch = _one_run(redis_server, tmp_path)
    scheduler.advance(CID)
    store.set_run(CID, "r001", prepare_beat=time.time() - SETUP_SILENT_S - 1, prepare_owner="gone:1")
    scheduler.advance(CID)
    assert dispatch.prepared == ["r001", "r001"]
    store.set_run(CID, "r001", prepare_beat=time.time() - SETUP_SILENT_S - 1)
    assert scheduler.advance(CID) is False
    assert "stopped" in store.run(CID, "r001").result["reasons"][0]


def _build_run(redis_server: RedisServer, tmp_path: Path) -> tuple[CampaignStore, Scheduler, RecordingDispatch]:
    kernels = tmp_path / "kernels"
    kernels.mkdir()
    (kernels / "series.mbox").write_text("From 0 Mon Sep 17 00:00:00 2001\n")
    inventory = tmp_path / "lab.yml"
    inventory.write_text(
        (REPO / "inventory/local.yml").read_text().replace("swaplab_lab: local", f"swaplab_lab: local\n    swaplab_kernel_dirs: [{kernels}]")
    )
    path = tmp_path / "built.yaml"
    text = (REPO / "campaigns" / "smoke.yaml").read_text().replace("../inventory/local.yml", str(inventory))
    path.write_text(text.replace("  - package: linux-image-amd64", "  - build: {source: {debian: linux-source-6.1}, patches: kernels/series.mbox}"))
    campaign = load_campaign(path)
    store = CampaignStore(redis_server.client())
    store.create(CID, campaign, plan_runs(campaign))
    for queue in ("lab.local", "build"):
        store.redis.set(worker_key(f"w-{queue}"), json.dumps({"queues": [queue], "concurrency": 4}))
    dispatch = RecordingDispatch()
    return store, Scheduler(store.redis, dispatch, tmp_path), dispatch


def test_a_build_kernel_is_built_before_the_run_is_prepared(redis_server: RedisServer, tmp_path: Path) -> None:
    store, scheduler, dispatch = _build_run(redis_server, tmp_path)
    scheduler.advance(CID)
    assert [m.kernel.label() for m in dispatch.builds] == ["build:linux-source-6.1+series.mbox"]
    assert dispatch.prepared == [] and store.run(CID, "r001").status == "building"
    scheduler.advance(CID)
    assert len(dispatch.builds) == 1  # not sent twice
    store.set_run(CID, "r001", built={"artifact": "a" * 64, "release": "6.1.0", "uts_version": "#1"}, built_at=time.time())
    scheduler.advance(CID)
    assert [setup.artifact for setup in dispatch.setups] == ["a" * 64]
    assert store.run(CID, "r001").status == "preparing"
    assert list(store.redis.scan_iter("swaplab:lease:*")) == []  # no node held while it built and prepared


@pytest.mark.parametrize(("cause", "verdict"), [("input", "invalid"), ("infra", "infra-error")])
def test_a_failed_build_ends_the_run_with_the_builds_reason(
    redis_server: RedisServer, tmp_path: Path, cause: str, verdict: str
) -> None:
    store, scheduler, dispatch = _build_run(redis_server, tmp_path)
    scheduler.advance(CID)
    reason = "drivers/foo.c:12:1: error: expected ';' before '}' token"
    store.set_run(CID, "r001", build_failure={"cause": cause, "reason": reason})
    assert scheduler.advance(CID) is False
    result = store.run(CID, "r001").result
    assert result["verdict"] == verdict and reason in result["reasons"][0]
    assert dispatch.prepared == []


def test_a_comparison_runs_one_run_at_a_time(redis_server: RedisServer, tmp_path: Path) -> None:
    path = tmp_path / "ab.yaml"
    path.write_text(
        (REPO / "campaigns" / "smoke.yaml").read_text().replace("../inventory/local.yml", str(REPO / "inventory/local.yml"))
        + "variants: [{name: base}, {name: pc0, sysctl: {vm.page-cluster: 0}}]\nbaseline: {variant: base}\n"
        + "repeats: 4\n"
    )
    campaign = load_campaign(path)
    store = CampaignStore(redis_server.client())
    store.create(CID, campaign, plan_runs(campaign))
    store.redis.set(worker_key("w1"), json.dumps({"queues": ["control", "lab.local"], "concurrency": 6}))
    dispatch = RecordingDispatch()
    scheduler = Scheduler(store.redis, dispatch, tmp_path)
    scheduler.advance(CID)
    assert dispatch.prepared == ["r001"]
    store.set_run(CID, "r001", prepared=PREPARED, prepared_at=time.time())
    scheduler.advance(CID)
    scheduler.advance(CID)
    # Without a baseline r002 would be prepared and started beside r001 (the lab has 4 nodes).
    assert dispatch.started == ["r001"] and dispatch.prepared == ["r001"]
    judged = {"run_id": "r001", "kernel": "k", "verdict": "pass", "exit_code": 0, "nodes": []}
    store.set_run_status(CID, "r001", "done", verdict="pass", result=judged)
    scheduler.advance(CID)
    assert dispatch.prepared == ["r001", "r002"]


def test_a_run_hash_another_writer_broke_ends_the_campaign_as_an_infra_error(
    redis_server: RedisServer, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    store, scheduler, dispatch = _one_run(redis_server, tmp_path)
    store.redis.hset(run_key(CID, "r001"), "attempt", "two")  # not swaplab's writing

    assert scheduler.advance(CID) is False  # never scheduled on a guess, never a crash loop
    info = store.campaign(CID)
    assert info is not None and (info.status, info.verdict, info.exit_code) == ("done", "infra-error", 2)
    assert f"{run_key(CID, 'r001')} in Redis does not read as swaplab wrote it: attempt" in info.error
    assert dispatch == RecordingDispatch() and scheduler.advance(CID) is False
    # What `swaplab run`, `watch` and `results` print of it: the reason, and exit 2.
    with pytest.raises(SystemExit) as ended:
        finish_output(info, as_json=False)
    assert ended.value.code == 2 and "does not read as swaplab wrote it" in capsys.readouterr().err


def test_a_run_with_faults_has_the_lab_to_itself(redis_server: RedisServer, tmp_path: Path) -> None:
    store, scheduler, dispatch = _one_run(redis_server, tmp_path)  # a plain campaign, CID
    stall = tmp_path / "stall.yaml"
    stall.write_text(
        (REPO / "campaigns" / "faults.yaml")
        .read_text()
        .replace("../inventory/local.yml", str(REPO / "inventory/local.yml"))
    )
    faults = "stall-20261129-120000-abcd"
    campaign = load_campaign(stall)
    store.create(faults, campaign, plan_runs(campaign))
    for cid in (faults, CID):
        scheduler.advance(cid)
        store.set_run(cid, "r001", prepared=PREPARED, prepared_at=time.time())
    scheduler.advance(faults)
    assert store.run(faults, "r001").status == "provisioning"
    assert store.redis.get("swaplab:lab-exclusive:local") == f"{faults}:r001:1".encode()
    # The lab has a free node, but the stall would disturb a run on it: the plain run waits.
    for _ in range(3):
        scheduler.advance(CID)
    assert store.run(CID, "r001").status == "preparing" and dispatch.started == ["r001"]
    # Once the faulted run gives its nodes back, the plain one starts.
    store.set_run(faults, "r001", status="done", verdict="pass", result=json.dumps({"run_id": "r001"}))
    scheduler._release(faults, store.run(faults, "r001"))
    scheduler.advance(CID)
    assert store.run(CID, "r001").status == "provisioning"
    assert store.redis.get("swaplab:lab-exclusive:local") is None
