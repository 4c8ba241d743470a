"""The campaign scheduler: leases nodes for queued runs, dispatches them, notices lost
workers, and closes the campaign when every run is done.

``advance`` is called over and over (a self-rescheduling control task, plus after every
run evaluation); each call looks at the state in Redis and does what is due, so a call
can be repeated, lost or run after a restart without harm.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import redis

from orchestrator.campaign import Campaign, WorkloadSpec
from orchestrator.criteria import Criterion, CriterionSpec
from orchestrator.evaluation import evaluate_run, run_criteria
from orchestrator.planner import RunPlan, node_specs
from orchestrator.prometheus import PrometheusApi
from orchestrator.report import campaign_exit_code, run_entry, write_result
from orchestrator.store import TERMINAL, CampaignStore
from orchestrator.verdict import Verdict, combine
from workers.health import NodeHealth
from workers.kernel import KernelSource
from workers.lease import LeaseBook
from workers.runspec import NodeResult, NodeRunSpec

log = logging.getLogger(__name__)

LEASE_TTL_S = 30.0
MAX_ATTEMPTS = 2  # a run whose worker was lost is redone once, then it is an infra-error
Dispatch = Callable[[str, str, int, list[NodeRunSpec]], None]


def holder_id(cid: str, rid: str, attempt: int) -> str:
    """Who holds a run's node leases: one attempt of one run."""
    return f"{cid}:{rid}:{attempt}"


def worker_slots(client: redis.Redis, queue: str) -> int:
    """Task slots the live workers consuming ``queue`` offer (registered at worker start)."""
    slots = 0
    for key in client.scan_iter("swaplab:worker:*"):
        raw = client.get(key)
        if raw:
            info = json.loads(raw)
            if queue in info["queues"]:
                # A worker that also serves the control queue keeps one slot for it.
                slots += max(0, int(info["concurrency"]) - (1 if "control" in info["queues"] else 0))
    return slots


class Scheduler:
    """One scheduling step for one campaign at a time."""

    def __init__(self, client: redis.Redis, dispatch: Dispatch, results_root: Path) -> None:
        self.redis = client
        self.store = CampaignStore(client)
        self.dispatch = dispatch
        self.results_root = results_root

    def advance(self, cid: str) -> bool:
        """Do what is due for campaign ``cid``; True while it still needs attention."""
        info = self.store.campaign(cid)
        if not info or info["status"] in TERMINAL:
            return False
        campaign = self.store.campaign_model(cid)
        book = LeaseBook(self.redis, campaign.lab.name, ttl_s=LEASE_TTL_S)
        if info["status"] == "queued":
            self.store.set_campaign_status(cid, "running")
        runs = list(self.store.runs(cid))
        for run in runs:
            if run["status"] in ("provisioning", "running", "evaluating"):
                self._watch_run(cid, run, book)
        cancel = self.store.cancel_requested(cid)
        runs = list(self.store.runs(cid))
        stopped_by = next((r["run_id"] for r in runs if (r.get("result") or {}).get("stops_campaign")), None)
        for run in runs:
            if run["status"] != "queued":
                continue
            if cancel:
                self.store.set_run_status(cid, run["run_id"], "cancelled")
            elif stopped_by is not None:
                reason = f"not started: a critical criterion failed in run {stopped_by}"
                self.store.set_run_status(cid, run["run_id"], "skipped", skipped_reason=reason)
            elif not self._start_run(cid, campaign, run, book):
                break  # runs start in order: a later run never overtakes a waiting one
        if all(run["status"] in TERMINAL for run in self.store.runs(cid)):
            self.finish(cid)
            return False
        return True

    # -- starting runs -------------------------------------------------------------------
    def _start_run(self, cid: str, campaign: Campaign, run: dict[str, Any], book: LeaseBook) -> bool:
        rid, attempt = run["run_id"], int(run["attempt"]) + 1
        needed = campaign.spec.nodes
        queue = f"lab.{campaign.lab.name}"
        slots = worker_slots(self.redis, queue)
        if 0 < slots < needed:
            self._refuse_run(
                cid, run, f"the workers on {queue} offer {slots} task slots; this run needs {needed} nodes at once"
            )
            return True
        if slots == 0:
            self.store.event(cid, kind="note", run=rid, detail=f"waiting for a worker on {queue}")
            return False
        health = NodeHealth(self.redis, campaign.lab.name)
        healthy = [n.name for n in campaign.lab.nodes if health.is_healthy(n.name)]
        if len(healthy) < needed:
            self._refuse_run(
                cid,
                run,
                f"lab {campaign.lab.name} has {len(healthy)} healthy node(s); this run needs {needed} (see `swaplab lab status`)",
            )
            return True
        nodes = book.acquire(holder_id(cid, rid, attempt), healthy, needed)
        if nodes is None:
            return False
        plan = RunPlan(
            rid,
            KernelSource.model_validate(run["kernel"]),
            WorkloadSpec.model_validate(run["workload"]),
            int(run["repeat"]),
        )
        # A redone run writes beside the lost attempt, whose files (and the orphaned guest's
        # pid file, needed to power it off) stay where they are.
        run_dir = self.results_root / cid if attempt == 1 else self.results_root / cid / f"attempt{attempt}"
        specs = node_specs(campaign, cid, plan, nodes, run_dir)
        self.store.set_run_status(cid, rid, "provisioning", attempt=attempt, nodes=nodes, started_at=time.time())
        for node in nodes:
            self.store.set_node(cid, rid, node, attempt=attempt, status="queued", owner="", result="")
        self.dispatch(cid, rid, attempt, specs)
        return True

    def _refuse_run(self, cid: str, run: dict[str, Any], reason: str) -> None:
        entry = {
            "run_id": run["run_id"],
            "kernel": run["label"],
            "verdict": Verdict.INFRA_ERROR.value,
            "exit_code": 2,
            "reasons": [reason],
            "nodes": [],
        }
        self.store.set_run_status(cid, run["run_id"], "done", verdict=entry["verdict"], result=entry)

    # -- watching runs -------------------------------------------------------------------
    def _watch_run(self, cid: str, run: dict[str, Any], book: LeaseBook) -> None:
        """Renew leases of nodes whose task has not started; detect nodes whose worker died."""
        rid, attempt = run["run_id"], int(run["attempt"])
        holder = holder_id(cid, rid, attempt)
        waiting, lost = [], []
        for node in run.get("nodes") or []:
            state = self.store.node(cid, rid, node)
            if state.get("status") in ("done", "lost"):
                continue
            if not state.get("owner"):
                waiting.append(node)
            elif book.holders().get(node) != holder:
                lost.append(node)
        if waiting:
            book.renew(holder, waiting)
        if lost:
            self._handle_lost(cid, run, lost, book)
        # Normally the chord's body evaluates the run; if that message was lost, do it here.
        self.evaluate_run(cid, rid, attempt)

    def _handle_lost(self, cid: str, run: dict[str, Any], lost: list[str], book: LeaseBook) -> None:
        rid, attempt = run["run_id"], int(run["attempt"])
        reason = f"worker lost: node task(s) for {', '.join(lost)} stopped renewing their lease"
        log.warning("%s %s attempt %d: %s", cid, rid, attempt, reason)
        for node in lost:
            self.store.set_node(cid, rid, node, status="lost", lost_at=time.time())
        # The other nodes of this attempt stop too (their cancel check reads this).
        self.store.set_run(cid, rid, aborted_attempt=attempt)
        self.store.event(cid, kind="run", run=rid, status="worker-lost", detail=reason)
        book.release(holder_id(cid, rid, attempt), list(run.get("nodes") or []))
        if attempt < MAX_ATTEMPTS:
            self.store.set_run_status(cid, rid, "queued", retry_reason=reason)
            return
        self._refuse_run(cid, run, f"{reason} (attempt {attempt} of {MAX_ATTEMPTS})")

    # -- evaluating and finishing --------------------------------------------------------
    def evaluate_run(self, cid: str, rid: str, attempt: int) -> bool:
        """Judge a run once every node of ``attempt`` has a result; False if not yet due."""
        run = self.store.run(cid, rid)
        if int(run.get("attempt", 0)) != attempt or run.get("status") in TERMINAL or not run.get("nodes"):
            return False
        nodes = list(run.get("nodes") or [])
        states = [self.store.node(cid, rid, node) for node in nodes]
        if not all(state.get("status") == "done" and state.get("result") for state in states):
            return False
        self.store.set_run_status(cid, rid, "evaluating")
        campaign = self.store.campaign_model(cid)
        results = [NodeResult.model_validate(state["result"]) for state in states]
        meta = {
            "run_id": rid,
            "kernel": run["label"],
            "workload": WorkloadSpec.model_validate(run["workload"]).name,
            "repeat": int(run["repeat"]),
            "attempt": attempt,
            "started_at": float(run.get("started_at") or 0),
            "finished_at": time.time(),
        }
        entry = judge_run(campaign, run, meta, results, campaign.spec.criteria)
        LeaseBook(self.redis, campaign.lab.name, ttl_s=LEASE_TTL_S).release(holder_id(cid, rid, attempt), nodes)
        self.store.set_run_status(cid, rid, "done", verdict=entry["verdict"], result=entry)
        self.on_judged(campaign, entry, results)
        return True

    def recheck(self, cid: str, criteria: list[CriterionSpec] | None = None) -> dict[str, Any]:
        """Judge every finished run of ``cid`` again, now (criteria edited or added)."""
        campaign = self.store.campaign_model(cid)
        for run in self.store.runs(cid):
            old = run.get("result") or {}
            if run["status"] != "done" or not old.get("nodes"):
                continue  # refused or skipped runs have nothing to judge
            states = [self.store.node(cid, run["run_id"], node) for node in run.get("nodes") or []]
            results = [NodeResult.model_validate(state["result"]) for state in states if state.get("result")]
            meta = {
                key: old[key]
                for key in ("run_id", "kernel", "workload", "repeat", "attempt", "started_at", "finished_at")
                if key in old
            }
            entry = judge_run(
                campaign, run, {**meta, "rechecked_at": time.time()}, results, criteria or campaign.spec.criteria
            )
            self.store.set_run(cid, run["run_id"], verdict=entry["verdict"], result=entry)
        info = self.store.campaign(cid)
        return self._assemble(cid, float(info.get("finished_at") or time.time()), rechecked=True)

    def finish(self, cid: str) -> dict[str, Any]:
        """Assemble the campaign result (result.json in Redis and on disk)."""
        return self._assemble(cid, time.time())

    def _assemble(self, cid: str, finished_at: float, rechecked: bool = False) -> dict[str, Any]:
        info = self.store.campaign(cid)
        runs = [run["result"] for run in self.store.runs(cid) if run.get("result")]
        skipped = [
            {"run_id": run["run_id"], "kernel": run["label"], "reason": run.get("skipped_reason", "")}
            for run in self.store.runs(cid)
            if run["status"] == "skipped"
        ]
        cancelled = self.store.cancel_requested(cid)
        result = {
            "campaign_id": cid,
            "campaign": info["name"],
            "file": info["file"],
            "lab": info["lab"],
            "started_at": float(info["created_at"]),
            "finished_at": finished_at,
            "wall_s": round(finished_at - float(info["created_at"]), 1),
            "verdict": combine(Verdict(run["verdict"]) for run in runs).value if runs else Verdict.INVALID.value,
            "exit_code": 130 if cancelled else campaign_exit_code([int(run["exit_code"]) for run in runs]),
            "result_dir": str(self.results_root / cid),
            "runs": runs,
            "skipped_runs": skipped,
            **({"rechecked_at": time.time()} if rechecked else {}),
        }
        result_dir = Path(info.get("result_dir") or self.results_root / cid)
        result["result_dir"] = str(result_dir)
        result_dir.mkdir(parents=True, exist_ok=True)
        write_result(result_dir / "result.json", result)
        status = "cancelled" if cancelled else "done"
        self.store.set_campaign_status(
            cid,
            status,
            result=result,
            verdict=result["verdict"],
            exit_code=result["exit_code"],
            result_dir=str(result_dir),
            finished_at=finished_at,
        )
        return result

    def on_judged(self, campaign: Campaign, entry: dict[str, Any], results: list[NodeResult]) -> None:
        """Hook for the orchestrator's own metrics (the worker sets it)."""


def judge_run(
    campaign: Campaign, run: dict[str, Any], meta: dict[str, Any], results: list[NodeResult], user: list[CriterionSpec]
) -> dict[str, Any]:
    """Evaluate a run's criteria in Prometheus and judge its nodes: its part of result.json."""
    workload = WorkloadSpec.model_validate(run["workload"])
    criteria = run_criteria(campaign.planned_overcommit_mib(workload), [Criterion.from_spec(c) for c in user])
    window, by_node = evaluate_run(criteria, PrometheusApi(), results)
    return run_entry(meta, results, by_node, window)
