"""Scheduler decisions against a real redis-server: a critical criterion failing in one
run keeps the campaign's remaining runs from starting."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from orchestrator.campaign import load_campaign
from orchestrator.planner import plan_runs
from orchestrator.scheduler import Scheduler
from orchestrator.store import CampaignStore
from tests.integration.redis_server import RedisServer, redis_server_fixture  # noqa: F401  (the fixture)

pytestmark = [pytest.mark.integration, pytest.mark.timeout(60)]
REPO = Path(__file__).resolve().parents[2]


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
    store.create("c1", campaign, plan_runs(campaign))
    dispatched: list[str] = []
    scheduler = Scheduler(store.redis, lambda cid, rid, attempt, specs: dispatched.append(rid), tmp_path)
    judged = {"run_id": "r001", "kernel": "k", "verdict": "fail", "exit_code": 3, "stops_campaign": True, "nodes": []}
    store.set_run_status("c1", "r001", "done", verdict="fail", result=judged)

    assert scheduler.advance("c1") is False  # nothing left to do: the campaign is finished
    assert dispatched == []
    assert [run["status"] for run in store.runs("c1")] == ["done", "skipped", "skipped"]
    result = json.loads((tmp_path / "c1" / "result.json").read_text())
    assert (result["verdict"], result["exit_code"]) == ("fail", 3)
    assert [s["run_id"] for s in result["skipped_runs"]] == ["r002", "r003"]
    assert "critical criterion failed in run r001" in result["skipped_runs"][0]["reason"]
