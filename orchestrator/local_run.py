"""Running a campaign in this process: every run in order, its nodes in threads.

This is ``swaplab run`` without any service: node sessions talk to a thread barrier and
print progress to stderr. The distributed path (Celery) calls the same node session.
"""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor, wait
from pathlib import Path
from typing import Any

from orchestrator.campaign import Campaign
from orchestrator.planner import RunPlan, node_specs, plan_runs
from orchestrator.report import campaign_exit_code, run_entry, write_result
from orchestrator.verdict import Verdict, combine
from workers.collab import EventCancel, LocalBarrier, Progress
from workers.node_session import run_node_session
from workers.runspec import NodeResult


def run_campaign_locally(
    campaign: Campaign, campaign_id: str, results_root: Path, progress: Progress
) -> dict[str, Any]:
    """Run every run of ``campaign``; returns result.json's content (also written)."""
    started = time.time()
    result_dir = results_root / campaign_id
    result_dir.mkdir(parents=True, exist_ok=True)
    cancel = EventCancel()
    runs: list[dict[str, Any]] = []
    interrupted = False
    for plan in plan_runs(campaign):
        if cancel():
            break
        entry, interrupted = _run_one(campaign, campaign_id, plan, result_dir, progress, cancel)
        runs.append(entry)
    result = {
        "campaign_id": campaign_id,
        "campaign": campaign.spec.name,
        "file": str(campaign.path),
        "lab": campaign.lab.name,
        "started_at": started,
        "finished_at": time.time(),
        "wall_s": round(time.time() - started, 1),
        "verdict": combine(Verdict(run["verdict"]) for run in runs).value if runs else Verdict.INVALID.value,
        "exit_code": 130 if interrupted else campaign_exit_code([run["exit_code"] for run in runs]),
        "result_dir": str(result_dir),
        "runs": runs,
    }
    write_result(result_dir / "result.json", result)
    return result


def _run_one(
    campaign: Campaign, campaign_id: str, plan: RunPlan, result_dir: Path, progress: Progress, cancel: EventCancel
) -> tuple[dict[str, Any], bool]:
    names = [node.name for node in campaign.lab.nodes[: campaign.spec.nodes]]
    specs = node_specs(campaign, campaign_id, plan, names, result_dir)
    barrier = LocalBarrier(len(specs))
    started = time.time()
    interrupted = False
    with ThreadPoolExecutor(max_workers=len(specs), thread_name_prefix=plan.run_id) as pool:
        futures = [pool.submit(run_node_session, s.model_dump(mode="json"), progress, barrier, cancel) for s in specs]
        try:
            while wait(futures, timeout=0.5).not_done:
                pass
        except KeyboardInterrupt:
            # Ctrl-C: every node powers off and cleans up before we return.
            interrupted = True
            cancel.event.set()
            wait(futures)
    results = [NodeResult.model_validate(f.result()) for f in futures]
    meta = {
        "run_id": plan.run_id,
        "kernel": plan.kernel.label(),
        "workload": plan.workload.name,
        "repeat": plan.repeat,
        "started_at": started,
        "finished_at": time.time(),
    }
    return run_entry(meta, results, campaign.planned_overcommit_mib(plan.workload)), interrupted
