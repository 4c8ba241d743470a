"""Judging a run never races another scheduler, however slow Prometheus is.

A real redis-server; a "Prometheus" that accepts connections and never answers, so every
node's evaluation costs a full timeout. Six nodes take several times longer than the
campaign lock lives: before, the lock expired mid-evaluation and a second scheduler judged
the same run again. Now the lock is held only for the claim and the commit.
"""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis

from model.campaign import load_campaign
from model.runspec import NodeResult, WorkloadOutcome
from model.state import campaign_lock_key, events_key
from orchestrator import tasks
from orchestrator.planner import plan_runs
from orchestrator.prometheus import PrometheusApi
from orchestrator.scheduler import Scheduler
from orchestrator.store import CampaignStore
from tests.integration.dispatch import RecordingDispatch
from tests.integration.redis_server import RedisServer, redis_server_fixture  # noqa: F401  (the fixture)

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]
C6 = "six-20261129-120000-abcd"
REPO = Path(__file__).resolve().parents[2]
NODES = [f"node{i}" for i in range(1, 7)]
LOCK_S = 2.0
QUERY_TIMEOUT_S = 1.0


@pytest.fixture
def silent_prometheus() -> Iterator[str]:
    """A listening socket that never answers (accepts, reads nothing, says nothing)."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(64)
    yield f"http://127.0.0.1:{server.getsockname()[1]}"
    server.close()


def _six_node_lab(tmp_path: Path) -> Path:
    hosts = "\n".join(f"        {node}: {{ansible_port: {47300 + i}}}" for i, node in enumerate(NODES))
    inventory = tmp_path / "six.yml"
    inventory.write_text(
        (REPO / "tests/fixtures/labs/e2e.yml").read_text().split("      hosts:\n        node1")[0]
        + "      hosts:\n"
        + hosts
        + "\n"
    )
    campaign = tmp_path / "six.yaml"
    campaign.write_text(
        (REPO / "campaigns/pair.yaml")
        .read_text()
        .replace("../inventory/local.yml", str(inventory))
        .replace("nodes: 2", "nodes: 6")
    )
    return campaign


def _finished_run(store: CampaignStore, cid: str) -> None:
    """r001 ran on six nodes, each with a result whose series Prometheus would hold."""
    now = time.time()
    store.set_run_status(cid, "r001", "running", attempt=1, nodes=NODES, started_at=now - 60)
    for node in NODES:
        result = NodeResult(
            run_id="r001",
            node=node,
            workload=WorkloadOutcome(exit_status=0, done=True, pages=1, elapsed_s=1.0),
            metrics_labels={"lab": "e2e", "node": node, "kernel": "6.1.0-1-amd64", "scenario": "overcommit"},
            metrics_from=now - 60,
            metrics_to=now,
        )
        store.set_node(cid, "r001", node, attempt=1, status="done", result=result.model_dump(mode="json"))


def test_a_slow_prometheus_cannot_let_two_schedulers_judge_one_run(
    redis_server: RedisServer, tmp_path: Path, silent_prometheus: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(tasks, "CAMPAIGN_LOCK_S", LOCK_S)
    client: redis.Redis = redis_server.client()
    campaign = load_campaign(_six_node_lab(tmp_path))
    store = CampaignStore(client)
    store.create(C6, campaign, plan_runs(campaign))
    _finished_run(store, C6)

    def make_scheduler(dispatch: RecordingDispatch) -> Scheduler:
        return Scheduler(
            client, dispatch, tmp_path, prometheus=lambda: PrometheusApi(silent_prometheus, QUERY_TIMEOUT_S)
        )

    first, second = RecordingDispatch(), RecordingDispatch()
    outcome: dict[str, object] = {}

    def judge_first() -> None:
        began = time.monotonic()
        outcome["judged"] = tasks.judge_and_advance(client, C6, "r001", 1, make_scheduler(first))
        outcome["seconds"] = time.monotonic() - began

    worker = threading.Thread(target=judge_first)
    worker.start()
    deadline = time.monotonic() + 10
    while store.run(C6, "r001").status != "evaluating":
        assert time.monotonic() < deadline, "the first scheduler never claimed the evaluation"
        time.sleep(0.05)

    # While the first one waits on Prometheus, a second scheduler acts on the campaign.
    time.sleep(LOCK_S + 0.5)  # the lock would have expired by now, had it been held
    began = time.monotonic()
    assert tasks.judge_and_advance(client, C6, "r001", 1, make_scheduler(second)) is False
    with tasks.campaign_lock(client, C6):
        assert make_scheduler(second).advance(C6) is True
    assert time.monotonic() - began < LOCK_S, "the second scheduler waited for a lock held over Prometheus"
    assert second.evaluations == []  # the claim is fresh: nobody asks for it again
    worker.join(timeout=60)

    assert outcome["judged"] is True
    assert float(str(outcome["seconds"])) > len(NODES) * QUERY_TIMEOUT_S > LOCK_S
    run = store.run(C6, "r001")
    assert run.status == "done" and run.verdict == "invalid"  # judged once, without data
    done_events = [
        fields
        for _id, fields in client.xrange(events_key(C6))
        if fields.get(b"kind") == b"run" and fields.get(b"status") == b"done"
    ]
    assert len(done_events) == 1
    assert store.campaign(C6).status == "done"


class _WatchedLastPass(Scheduler):
    """A scheduler whose results-database lookup notes whether the campaign lock is held."""

    def __init__(self, client: redis.Redis, tmp_path: Path, answer: Exception | None) -> None:
        super().__init__(
            client, RecordingDispatch(), tmp_path, prometheus=lambda: PrometheusApi("http://127.0.0.1:9", 0.5)
        )
        self.client = client
        self.answer = answer
        self.under_lock: list[bool] = []

    def last_pass(self, result: dict[str, Any]) -> dict[str, Any] | None:
        self.under_lock.append(bool(self.client.exists(campaign_lock_key(result["campaign_id"]))))
        if self.answer is not None:
            raise self.answer
        return None


@pytest.mark.parametrize(
    ("answer", "says"),
    [
        (None, "no earlier passing instance"),
        (ConnectionError("database at db.example:5432 refused"), "baseline unavailable"),
    ],
)
def test_the_last_pass_baseline_is_looked_up_outside_the_campaign_lock(
    redis_server: RedisServer, tmp_path: Path, answer: Exception | None, says: str
) -> None:
    client: redis.Redis = redis_server.client()
    campaign_file = tmp_path / "nightly.yaml"
    campaign_file.write_text(
        (REPO / "campaigns/nightly.yaml")
        .read_text()
        .replace("../inventory/local.yml", str(REPO / "tests/fixtures/labs/e2e.yml"))
    )
    campaign = load_campaign(campaign_file)
    store = CampaignStore(client)
    cid = "nightly-20261202-020000-abcd"
    store.create(cid, campaign, plan_runs(campaign)[:1])  # one run is enough to reach the judgement
    now = time.time()
    store.set_run_status(cid, "r001", "running", attempt=1, nodes=["node1"], started_at=now - 60)
    result = NodeResult(run_id="r001", node="node1", metrics_from=now - 60, metrics_to=now)
    store.set_node(cid, "r001", "node1", attempt=1, status="done", result=result.model_dump(mode="json"))
    scheduler = _WatchedLastPass(client, tmp_path, answer)

    assert tasks.judge_and_advance(client, cid, "r001", 1, scheduler) is True

    assert scheduler.under_lock == [False]  # once, and never while other steps wait for the lock
    info = store.campaign(cid)
    assert info is not None and info.status == "done" and info.result is not None
    assert any(says in reason for reason in info.result["reasons"]), info.result["reasons"]
