"""A run moves provisioning -> running by a compare-and-set, never over a re-queue.

A real redis-server. The node task reaches its workload just as the scheduler re-queues
the run (its worker was taken for lost): the old read-then-write saw "provisioning",
the re-queue landed, and the write made a queued run "running" for good, a run no
scheduler step would pick up again. Now the move happens only while the run is still
provisioning the node's own attempt.
"""

from __future__ import annotations

import threading
from pathlib import Path

import pytest

from model.campaign import load_campaign
from model.protocol import BUILD_STAGE, PREPARE_STAGE, RunStatus, StageFailure, UnknownStatus
from model.state import run_key
from orchestrator.planner import plan_runs
from orchestrator.store import CampaignStore
from tests.integration.redis_server import RedisServer, redis_server_fixture  # noqa: F401  (the fixture)
from workers.coordination.run_state import RunState
from workers.tasks import _RedisProgress

pytestmark = [pytest.mark.integration, pytest.mark.timeout(60)]
CID, RID = "states-20261202-120000-abcd", "r001"
REPO = Path(__file__).resolve().parents[2]


def _created(store: CampaignStore) -> None:
    """The campaign and its runs as ``swaplab submit`` stores them (once per test's Redis)."""
    if not store.exists(CID):
        campaign = load_campaign(REPO / "campaigns" / "smoke.yaml")
        store.create(CID, campaign, plan_runs(campaign))


def _provisioning(store: CampaignStore, attempt: int) -> None:
    _created(store)
    store.set_run_status(CID, RID, RunStatus.PROVISIONING, attempt=attempt, nodes=["node1"])


def test_a_requeue_between_the_nodes_read_and_its_write_wins(redis_server: RedisServer) -> None:
    client = redis_server.client()
    store = CampaignStore(client)
    _provisioning(store, attempt=1)
    seen = RunState(client, CID, RID).run()
    assert seen is not None and seen.status == RunStatus.PROVISIONING  # what the node task last saw
    store.set_run_status(CID, RID, RunStatus.QUEUED, retry_reason="worker lost")  # the scheduler's re-queue
    _RedisProgress(RunState(client, CID, RID), attempt=1).phase("node1", "workload")
    run = store.run(CID, RID)
    assert run.status == RunStatus.QUEUED and "running_at" not in (run.model_extra or {})


def test_a_stale_attempt_cannot_mark_the_next_one_running(redis_server: RedisServer) -> None:
    client = redis_server.client()
    store = CampaignStore(client)
    _provisioning(store, attempt=2)
    state = RunState(client, CID, RID)
    assert not state.mark_running(1)
    assert store.run(CID, RID).status == RunStatus.PROVISIONING
    _RedisProgress(state, attempt=2).phase("node1", "workload")
    run = store.run(CID, RID)
    assert run.status == RunStatus.RUNNING and float((run.model_extra or {})["running_at"]) > 0


def test_racing_requeues_and_marks_end_in_a_state_one_of_them_chose(redis_server: RedisServer) -> None:
    """Many rounds of the two writers at once: never "running" after the re-queue landed."""
    client = redis_server.client()
    store = CampaignStore(client)
    for round_ in range(200):
        _provisioning(store, attempt=1)
        marked: list[bool] = []
        mark = threading.Thread(target=lambda into=marked: into.append(RunState(client, CID, RID).mark_running(1)))
        mark.start()
        store.set_run_status(CID, RID, RunStatus.QUEUED)
        mark.join()
        status = store.run(CID, RID).status
        # Either the mark came first (and the re-queue overrode it) or it was refused.
        assert status == RunStatus.QUEUED, (round_, marked, status)


def test_an_unknown_state_is_refused_even_without_asserts(redis_server: RedisServer) -> None:
    client = redis_server.client()
    store = CampaignStore(client)
    with pytest.raises(UnknownStatus):
        store.set_run_status(CID, RID, "runnning")
    with pytest.raises(UnknownStatus):
        store.set_campaign_status(CID, "skipped")  # a run's state, not a campaign's
    assert not client.exists(run_key(CID, RID))


# -- the setup stages' tasks write only through their compare-and-set ---------------------------
def _building(store: CampaignStore, attempt: int) -> None:
    _created(store)
    store.set_run_status(CID, RID, RunStatus.BUILDING, build_attempt=attempt, build_beat="", built="", built_at="")


def test_a_build_task_the_scheduler_gave_up_on_writes_nothing_into_the_next_attempt(redis_server: RedisServer) -> None:
    client = redis_server.client()
    store = CampaignStore(client)
    _building(store, attempt=1)
    old = RunState(client, CID, RID)
    assert old.claim_stage(BUILD_STAGE, 1, "host-a:1")
    _building(store, attempt=2)  # silent too long: the scheduler sent the build again
    assert not old.beat_stage(BUILD_STAGE, 1)
    assert not old.finish_stage(BUILD_STAGE, 1, StageFailure(cause="infra", reason="the old worker's disk filled up"))
    assert not old.claim_stage(BUILD_STAGE, 1, "host-a:1")  # redelivered: not taken again
    run = store.run(CID, RID)
    assert run.build_failure is None and run.build_beat is None and run.build_owner == "host-a:1"

    new = RunState(client, CID, RID)
    assert new.claim_stage(BUILD_STAGE, 2, "host-b:2")
    assert new.finish_stage(BUILD_STAGE, 2, {"artifact": "a" * 64, "release": "9.9.9"})
    run = store.run(CID, RID)
    assert run.built == {"artifact": "a" * 64, "release": "9.9.9"} and (run.built_at or 0) > 0
    assert run.build_owner == "host-b:2"
    store.set_run_status(CID, RID, RunStatus.PREPARING, prepare_attempt=1)
    assert not new.finish_stage(BUILD_STAGE, 2, StageFailure(cause="infra", reason="late"))  # the run moved on
    assert store.run(CID, RID).build_failure is None


def test_a_stage_task_writes_only_its_own_fields(redis_server: RedisServer) -> None:
    client = redis_server.client()
    store = CampaignStore(client)
    _building(store, attempt=1)
    state = RunState(client, CID, RID)
    with pytest.raises(ValueError, match="may not write"):
        state._set_if_current(BUILD_STAGE, 1, {"status": "done"})
    with pytest.raises(ValueError, match="may not write"):
        state._set_if_current(PREPARE_STAGE, 1, {"built": "x"})
    assert store.run(CID, RID).status == RunStatus.BUILDING


# -- a node task writes its node's hash only while the hash is its attempt's -------------------
def test_a_node_task_of_an_earlier_attempt_writes_nothing_into_the_next(redis_server: RedisServer) -> None:
    client = redis_server.client()
    store = CampaignStore(client)
    store.set_node(CID, RID, "node1", attempt=1, status="queued", owner="", result="")
    old = RunState(client, CID, RID)
    assert old.claim_node("node1", 1, "host-a:1")
    assert not old.claim_node("node1", 1, "host-a:2")  # redelivered: never a second guest
    # Its worker taken for lost, the run started again on the same node.
    store.set_node(CID, RID, "node1", attempt=2, status="queued", owner="", result="")
    assert not old.node_status("node1", 1, "workload")
    assert not old.node_done("node1", 1, {"run_id": RID, "node": "node1", "samples": 99})
    stale = store.node(CID, RID, "node1")
    assert stale is not None and stale.status == "queued"

    new = RunState(client, CID, RID)
    assert new.claim_node("node1", 2, "host-b:1") and new.node_status("node1", 2, "workload")
    assert new.node_done("node1", 2, {"run_id": RID, "node": "node1"})
    node = store.node(CID, RID, "node1")
    assert node is not None and node.result is not None
    assert (node.status, node.owner, node.result.run_id, node.result.node) == ("done", "host-b:1", RID, "node1")
