"""The campaign scheduler: prepares runs, leases their nodes, dispatches them, notices lost
workers, judges finished runs, and closes the campaign when every run is done.

A run goes queued -> preparing (the run's setup on the lab's queue: NFS server, kernel,
node image) -> provisioning (nodes leased, one node task each) -> running -> evaluating
-> done; or it is refused, skipped or cancelled on the way.

``advance`` is called over and over (a self-rescheduling control task, plus after every
run evaluation) under the campaign's lock; each call looks at the state in Redis and does
what is due, so a call can be repeated, lost or run after a restart without harm. It never
does slow work itself: judging a run in Prometheus happens outside the lock, under a claim
(``claim_evaluation`` / ``judge`` / ``commit_evaluation``), so a slow or absent Prometheus
cannot let two schedulers act on one run.
"""

from __future__ import annotations

import json
import logging
import secrets
import shlex
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

import redis

from model.campaign import BaselineSide, Campaign, CompareSpec
from model.exitcode import ExitCode
from model.hashes import CorruptHash, RunHash
from model.paths import UnsafePath
from model.protocol import BUILD_STAGE, CAMPAIGN_TERMINAL, PREPARE_STAGE, CampaignStatus, RunStatus, SetupStage
from model.result import RESULT_SCHEMA_VERSION, RecordError, campaign_of, schema_problems
from model.runspec import BuildMessage, NodeResult, NodeRunSpec, RunSetupSpec, is_campaign_id
from model.state import BUILD_QUEUE, CONTROL_QUEUE, TERMINAL, campaign_key, holder_id, lab_queue, scan_pattern
from model.state import WORKER_PREFIX as _WORKER_PREFIX
from model.yamlpos import SpecError
from orchestrator import sinks
from orchestrator.baselines import against_instance, comparable, in_campaign, is_last_pass, regressions
from orchestrator.criteria import CriterionSpec
from orchestrator.judging import judge_run, run_context
from orchestrator.planner import RunPlan, node_specs, run_setup_spec
from orchestrator.prometheus import PrometheusApi
from orchestrator.results import campaign_exit_code, write_result
from orchestrator.store import CampaignStore
from orchestrator.verdict import Verdict, combine
from workers.coordination.health import NodeHealth
from workers.coordination.lease import LEASE_TTL_S, LeaseBook

log = logging.getLogger(__name__)

MAX_ATTEMPTS = 2  # a run whose worker was lost is redone once, then it is an infra-error
# A run's setup whose worker stopped beating this long ago is redone (once).
SETUP_SILENT_S = LEASE_TTL_S
# An evaluation claim older than this is taken over (its evaluator died); a late commit
# of the old claim is then refused, so a run is never judged twice.
EVALUATION_CLAIM_S = 600.0


# The campaign hash's field holding the looked-up last-pass baseline (JSON: record or error).
LAST_PASS_FIELD = "last_pass_baseline"


# The once-per-run stages before any node is leased; their fields are the protocol's.
BUILD, PREPARE = BUILD_STAGE, PREPARE_STAGE


class Dispatch(Protocol):
    """How the scheduler sends work to the workers (Celery in production, fakes in tests)."""

    def build(self, cid: str, rid: str, attempt: int, message: BuildMessage) -> None:
        """Send a run's kernel build to the build queue."""

    def prepare(self, cid: str, rid: str, attempt: int, spec: RunSetupSpec) -> None:
        """Send a run's setup to its lab's queue."""

    def run(self, cid: str, rid: str, attempt: int, specs: list[NodeRunSpec]) -> None:
        """Send one node task per node to the lab's queue; evaluation follows them."""

    def evaluate(self, cid: str, rid: str, attempt: int) -> None:
        """Ask for a run's evaluation (when the one that follows its nodes was lost)."""


class JudgeOnly:
    """A Dispatch for a scheduler that only judges again (``swaplab check``): sends nothing."""

    def build(self, cid: str, rid: str, attempt: int, message: BuildMessage) -> None:
        raise RuntimeError("this scheduler only judges finished runs")

    def prepare(self, cid: str, rid: str, attempt: int, spec: RunSetupSpec) -> None:
        raise RuntimeError("this scheduler only judges finished runs")

    def run(self, cid: str, rid: str, attempt: int, specs: list[NodeRunSpec]) -> None:
        raise RuntimeError("this scheduler only judges finished runs")

    def evaluate(self, cid: str, rid: str, attempt: int) -> None:
        raise RuntimeError("this scheduler only judges finished runs")


def worker_slots(client: redis.Redis, queue: str) -> int:
    """Task slots the live workers consuming ``queue`` offer (registered at worker start)."""
    slots = 0
    for key in client.scan_iter(scan_pattern(f"{_WORKER_PREFIX}:")):
        raw = client.get(key)
        if raw:
            info = json.loads(raw)
            if queue in info["queues"]:
                # A worker that also serves the control queue keeps one slot for it.
                slots += max(0, int(info["concurrency"]) - (1 if CONTROL_QUEUE in info["queues"] else 0))
    return slots


class Scheduler:
    """One scheduling step for one campaign at a time."""

    def __init__(
        self,
        client: redis.Redis,
        dispatch: Dispatch,
        results_root: Path,
        prometheus: Callable[[], PrometheusApi] = PrometheusApi,
    ) -> None:
        self.redis = client
        self.store = CampaignStore(client)
        self.dispatch = dispatch
        self.results_root = results_root
        self.prometheus = prometheus

    def advance(self, cid: str) -> bool:
        """Do what is due for campaign ``cid``; True while it still needs attention."""
        if not is_campaign_id(cid):  # a forged message: the id names files and keys
            log.error("not a campaign id, ignored: %r", cid[:100] if isinstance(cid, str) else cid)
            return False
        try:
            return self._advance(cid)
        except CorruptHash as err:
            self._abandon(cid, str(err))
            return False

    def _advance(self, cid: str) -> bool:
        info = self.store.campaign(cid)
        if info is None or info.status in CAMPAIGN_TERMINAL:
            return False
        try:
            campaign = self.store.campaign_model(cid)
        except SpecError as err:
            self._refuse_campaign(cid, err)
            return False
        book = LeaseBook(self.redis, campaign.lab.name, ttl_s=LEASE_TTL_S)
        if info.status == CampaignStatus.QUEUED:
            self.store.set_campaign_status(cid, CampaignStatus.RUNNING)
        for run in self.store.runs(cid):
            if run.status in (RunStatus.PROVISIONING, RunStatus.RUNNING, RunStatus.EVALUATING):
                self._watch_run(cid, run, book)
        self._start_due_runs(cid, campaign, book)
        if all(run.status in TERMINAL for run in self.store.runs(cid)):
            self.finish(cid)
            return False
        return True

    def _abandon(self, cid: str, reason: str) -> None:
        """A campaign whose state in Redis does not read as swaplab wrote it (another writer,
        another version) is ended as an infra-error with why, never scheduled on a guess.
        Its running node tasks see the cancel flag and stop; its leases then expire."""
        log.error("%s: abandoned: %s", cid, reason)
        if self.store.status(cid) in (*TERMINAL, None):
            return
        code = int(ExitCode.BAD_INPUT_OR_INFRA)
        fields = {"verdict": Verdict.INFRA_ERROR.value, "exit_code": code, "error": reason[:2000]}
        self.store.set_campaign(cid, status=CampaignStatus.DONE, finished_at=time.time(), cancel_requested=1, **fields)
        self.store.event(cid, kind="campaign", status=CampaignStatus.DONE, detail=reason[:500])

    def _refuse_campaign(self, cid: str, err: SpecError) -> None:
        """A stored campaign that fails validation runs nothing: every run is invalid, with why."""
        reason = "the stored campaign does not validate (changed in Redis?): " + "; ".join(map(str, err.issues[:5]))
        log.error("%s: %s", cid, reason)
        for run in self.store.runs(cid):
            if run.status not in TERMINAL:
                self._refuse_run(cid, run, reason, Verdict.INVALID)
        self.finish(cid)

    def _start_due_runs(self, cid: str, campaign: Campaign, book: LeaseBook) -> None:
        cancel = self.store.cancel_requested(cid)
        runs = self.store.runs(cid)
        stopped_by = next((r.run_id for r in runs if r.stops_campaign), None)
        # A comparison runs one run at a time on its lab: its sides' runs must not share the
        # host with each other, or drift and neighbours would pose as a change.
        serial = campaign.spec.baseline is not None
        busy = serial and any(r.status not in TERMINAL and r.status != RunStatus.QUEUED for r in runs)
        for run in runs:
            if run.status not in (RunStatus.QUEUED, RunStatus.BUILDING, RunStatus.PREPARING):
                continue
            if cancel:
                self.store.set_run_status(cid, run.run_id, RunStatus.CANCELLED)
            elif stopped_by is not None:
                reason = f"not started: a critical criterion failed in run {stopped_by}"
                self.store.set_run_status(cid, run.run_id, RunStatus.SKIPPED, skipped_reason=reason)
            elif busy and run.status == RunStatus.QUEUED:
                break
            elif not self._step_run(cid, campaign, run, book):
                break  # runs start in order: a later run never overtakes a waiting one
            else:
                busy = busy or serial

    # -- preparing and starting runs --------------------------------------------------------
    def _step_run(self, cid: str, campaign: Campaign, run: RunHash, book: LeaseBook) -> bool:
        """Move a queued, building or preparing run on; False while it has to wait."""
        blocker = self._lab_blocker(campaign)
        if blocker == "wait":
            self.store.event(
                cid, kind="note", run=run.run_id, detail=f"waiting for a worker on {lab_queue(campaign.lab.name)}"
            )
            return False
        if blocker:
            self._refuse_run(cid, run, blocker)
            return True
        for stage in self._stages(run):
            if run.stage_done(stage):
                continue  # done once per run: a run redone after a lost worker keeps it
            failure = run.stage_failure(stage)
            if failure:
                reason = f"{stage.what} failed ({failure.cause}): {failure.reason}"
                self._refuse_run(cid, run, reason, Verdict.INVALID if failure.cause == "input" else Verdict.INFRA_ERROR)
                return True
            if run.status != stage.status:
                self._dispatch_stage(stage, cid, campaign, run)
            else:
                self._watch_stage(stage, cid, campaign, run)
            return False
        return self._start_run(cid, campaign, run, book)

    @staticmethod
    def _stages(run: RunHash) -> tuple[SetupStage, ...]:
        return (BUILD, PREPARE) if run.kernel.build is not None else (PREPARE,)

    def _lab_blocker(self, campaign: Campaign) -> str | None:
        """Why the lab cannot take the run: "wait" (no worker yet), a reason to refuse it, or None."""
        needed = campaign.spec.nodes
        queue = lab_queue(campaign.lab.name)
        slots = worker_slots(self.redis, queue)
        if slots == 0:
            return "wait"
        if slots < needed:
            return f"the workers on {queue} offer {slots} task slots; this run needs {needed} nodes at once"
        health = NodeHealth(self.redis, campaign.lab.name)
        healthy = [node for node in campaign.lab.nodes if health.is_healthy(node)]
        if len(healthy) < needed:
            return (
                f"lab {campaign.lab.name} has {len(healthy)} healthy node(s); this run needs {needed} "
                "(see `swaplab lab status`)"
            )
        return None

    def _dispatch_stage(self, stage: SetupStage, cid: str, campaign: Campaign, run: RunHash) -> None:
        rid = run.run_id
        if stage is BUILD and worker_slots(self.redis, BUILD_QUEUE) == 0:
            self.store.event(cid, kind="note", run=rid, detail=f"waiting for a worker on {BUILD_QUEUE}")
            return
        attempt = run.stage_attempt(stage) + 1
        fields = {stage.attempt: attempt, stage.beat: "", stage.result: "", stage.done: ""}
        self.store.set_run_status(cid, rid, stage.status, **fields)
        plan = self._plan(run)
        if stage is BUILD:
            message = BuildMessage(campaign=cid, run_id=rid, lab=campaign.lab.name, kernel=plan.kernel)
            self.dispatch.build(cid, rid, attempt, message)
            return
        built = run.built or {}
        self.dispatch.prepare(cid, rid, attempt, run_setup_spec(campaign, cid, plan, built.get("artifact")))

    def _watch_stage(self, stage: SetupStage, cid: str, campaign: Campaign, run: RunHash) -> None:
        """A stage whose worker stopped beating is redone once, then the run is an infra-error."""
        beat = run.stage_beat(stage)
        if not beat or time.time() - beat < SETUP_SILENT_S:
            return  # not picked up yet (waiting in the queue), or alive
        attempt = max(run.stage_attempt(stage), 1)
        reason = f"the worker of the run's {stage.what} stopped ({run.stage_owner(stage) or '?'}; attempt {attempt})"
        if attempt >= MAX_ATTEMPTS:
            self._refuse_run(cid, run, reason)
            return
        self.store.event(cid, kind="run", run=run.run_id, status=f"{stage.name}-lost", detail=reason)
        self._dispatch_stage(stage, cid, campaign, run.model_copy(update={"status": RunStatus.QUEUED}))

    def _start_run(self, cid: str, campaign: Campaign, run: RunHash, book: LeaseBook) -> bool:
        rid, attempt = run.run_id, run.attempt + 1
        health = NodeHealth(self.redis, campaign.lab.name)
        healthy = [node for node in campaign.lab.nodes if health.is_healthy(node)]
        # A run with faults has the lab to itself: its faults disturb no other campaign's run.
        exclusive = list(campaign.lab.nodes) if campaign.spec.faults else None
        nodes = book.acquire(holder_id(cid, rid, attempt), healthy, campaign.spec.nodes, exclusive_of=exclusive)
        if nodes is None:
            return False
        specs = node_specs(campaign, cid, self._plan(run), attempt, nodes, run.prepared)
        self.store.set_run_status(
            cid, rid, RunStatus.PROVISIONING, attempt=attempt, nodes=nodes, started_at=time.time()
        )
        for node in nodes:
            self.store.set_node(cid, rid, node, attempt=attempt, status="queued", owner="", result="")
        self.dispatch.run(cid, rid, attempt, specs)
        return True

    @staticmethod
    def _plan(run: RunHash) -> RunPlan:
        return RunPlan(run.run_id, run.kernel, run.workload, run.repeat, run.variant)

    def _refuse_run(self, cid: str, run: RunHash, reason: str, verdict: Verdict = Verdict.INFRA_ERROR) -> None:
        """End a run that holds no node, with the reason (the leases of any attempt go back)."""
        code = ExitCode.INVALID if verdict is Verdict.INVALID else ExitCode.BAD_INPUT_OR_INFRA
        entry = {
            "run_id": run.run_id,
            "kernel": run.label,
            "verdict": verdict.value,
            "exit_code": int(code),
            "reasons": [reason],
            "nodes": [],
        }
        self._release(cid, run)
        self.store.set_run_status(cid, run.run_id, RunStatus.DONE, verdict=entry["verdict"], result=entry)

    def _release(self, cid: str, run: RunHash) -> None:
        """Give back the leases of the run's current attempt: the one place leases are released."""
        if not run.nodes:
            return
        info = self.store.campaign(cid)
        if info is None:
            return
        lab = info.lab
        LeaseBook(self.redis, lab, ttl_s=LEASE_TTL_S).release(holder_id(cid, run.run_id, run.attempt), run.nodes)

    # -- watching runs -------------------------------------------------------------------
    def _watch_run(self, cid: str, run: RunHash, book: LeaseBook) -> None:
        """Renew leases of nodes whose task has not started; detect nodes whose worker died."""
        rid, attempt = run.run_id, run.attempt
        holder = holder_id(cid, rid, attempt)
        waiting, lost = [], []
        for node in run.nodes:
            state = self.store.node(cid, rid, node)
            if state is not None and state.status in ("done", "lost"):
                continue
            if state is None or not state.owner:
                waiting.append(node)
            elif book.holders().get(node) != holder:
                lost.append(node)
        if waiting:
            book.renew(holder, waiting)
        if lost:
            self._handle_lost(cid, run, lost)
        elif self._evaluation_due(cid, run):
            # Normally the evaluation follows the run's node tasks; if that message was
            # lost (or its evaluator died), ask again. Never judged here, under the lock.
            self.dispatch.evaluate(cid, rid, attempt)

    def _handle_lost(self, cid: str, run: RunHash, lost: list[str]) -> None:
        rid, attempt = run.run_id, run.attempt
        reason = f"worker lost: node task(s) for {', '.join(lost)} stopped renewing their lease"
        log.warning("%s %s attempt %d: %s", cid, rid, attempt, reason)
        for node in lost:
            self.store.set_node(cid, rid, node, status="lost", lost_at=time.time())
        # The other nodes of this attempt stop too (their cancel check reads this).
        self.store.set_run(cid, rid, aborted_attempt=attempt)
        self.store.event(cid, kind="run", run=rid, status="worker-lost", detail=reason)
        if attempt < MAX_ATTEMPTS:
            self._release(cid, run)
            self.store.set_run_status(cid, rid, RunStatus.QUEUED, retry_reason=reason)
            return
        self._refuse_run(cid, run, f"{reason} (attempt {attempt} of {MAX_ATTEMPTS})")

    # -- evaluating ------------------------------------------------------------------------
    def _node_results(self, cid: str, run: RunHash) -> list[NodeResult] | None:
        """Every node's result of the run's current attempt, or None while one is missing."""
        results = []
        for node in run.nodes:
            state = self.store.node(cid, run.run_id, node)
            if state is None or not state.done or state.result is None:
                return None
            results.append(state.result)
        return results or None

    def _evaluation_due(self, cid: str, run: RunHash) -> bool:
        if run.status in TERMINAL or self._node_results(cid, run) is None:
            return False
        claimed_at = run.evaluation_claimed_at or 0.0
        return run.status != RunStatus.EVALUATING or time.time() - claimed_at > EVALUATION_CLAIM_S

    def claim_evaluation(self, cid: str, rid: str, attempt: int) -> str | None:
        """Under the campaign lock: claim the run's evaluation if it is due and unclaimed."""
        run = self.store.run(cid, rid)
        if run.attempt != attempt or not self._evaluation_due(cid, run):
            return None
        token = secrets.token_hex(8)
        self.store.set_run_status(
            cid, rid, RunStatus.EVALUATING, evaluation_claim=token, evaluation_claimed_at=time.time()
        )
        return token

    def judge(self, cid: str, rid: str) -> tuple[dict[str, Any], list[NodeResult]]:
        """Judge the run from its node results and Prometheus (slow; no lock needed)."""
        run = self.store.run(cid, rid)
        results = self._node_results(cid, run) or []
        campaign = self.store.campaign_model(cid)
        meta = {
            "run_id": rid,
            "kernel": run.label,
            "workload": run.workload.name,
            "repeat": run.repeat,
            "attempt": run.attempt,
            "started_at": run.started_at or 0.0,
            "finished_at": time.time(),
            **run_context(campaign, run, results),
        }
        entry = judge_run(campaign, run, meta, results, campaign.spec.criteria, self.prometheus())
        return entry, results

    def commit_evaluation(
        self, cid: str, rid: str, token: str, entry: dict[str, Any], results: list[NodeResult]
    ) -> bool:
        """Under the campaign lock: store the verdict if the claim is still ours."""
        run = self.store.run(cid, rid)
        if run.status != RunStatus.EVALUATING or run.evaluation_claim != token:
            log.warning("%s %s: evaluation claim %s was taken over; verdict not stored", cid, rid, token)
            return False
        self._release(cid, run)
        self.store.set_run_status(cid, rid, RunStatus.DONE, verdict=entry["verdict"], result=entry)
        self.on_judged(self.store.campaign_model(cid), entry, results)
        return True

    def evaluate_run(self, cid: str, rid: str, attempt: int) -> bool:
        """Claim, judge and commit in one go (one process; tests and `swaplab check`)."""
        token = self.claim_evaluation(cid, rid, attempt)
        if token is None:
            return False
        entry, results = self.judge(cid, rid)
        return self.commit_evaluation(cid, rid, token, entry, results)

    def recheck(self, cid: str, criteria: list[CriterionSpec] | None = None) -> dict[str, Any]:
        """Judge every finished run of ``cid`` again, now (criteria edited or added)."""
        campaign = self.store.campaign_model(cid)
        for run in self.store.runs(cid):
            old = run.result or {}
            if run.status != RunStatus.DONE or not old.get("nodes"):
                continue  # refused or skipped runs have nothing to judge
            states = [self.store.node(cid, run.run_id, node) for node in run.nodes]
            results = [state.result for state in states if state is not None and state.result is not None]
            meta: dict[str, Any] = {
                key: old[key]
                for key in ("run_id", "kernel", "workload", "repeat", "attempt", "started_at", "finished_at")
                if key in old
            }
            meta.update(run_context(campaign, run, results))
            entry = judge_run(
                campaign,
                run,
                {**meta, "rechecked_at": time.time()},
                results,
                criteria or campaign.spec.criteria,
                self.prometheus(),
            )
            self.store.set_run(cid, run.run_id, verdict=entry["verdict"], result=entry)
        info = self.store.campaign(cid)
        finished_at = info.finished_at if info is not None and info.finished_at else time.time()
        return self._assemble(cid, finished_at, rechecked=True)

    # -- finishing -----------------------------------------------------------------------
    def finish(self, cid: str) -> dict[str, Any]:
        """Assemble the campaign result (result.json in Redis and on disk)."""
        return self._assemble(cid, time.time())

    def _assemble(self, cid: str, finished_at: float, rechecked: bool = False) -> dict[str, Any]:
        info = self.store.campaign(cid)
        if info is None:
            raise CorruptHash(campaign_key(cid), "the campaign vanished while it was being finished")
        stored = self.store.runs(cid)
        runs = [run.result for run in stored if run.result]
        skipped = [
            {"run_id": run.run_id, "kernel": run.label, "reason": run.skipped_reason}
            for run in stored
            if run.status == RunStatus.SKIPPED
        ]
        cancelled = self.store.cancel_requested(cid)
        exit_code = ExitCode.INTERRUPTED if cancelled else campaign_exit_code([int(run["exit_code"]) for run in runs])
        # Where results go is this process' own setting, never a path read from Redis.
        result_dir = self.results_root / cid
        result = {
            "schema_version": RESULT_SCHEMA_VERSION,
            "campaign_id": cid,
            "campaign": info.name,
            "file": info.file,
            "reproduce": {"file": info.file, "command": f"swaplab run {shlex.quote(info.file)}"},
            "lab": info.lab,
            "started_at": info.created_at,
            "finished_at": finished_at,
            "wall_s": round(finished_at - info.created_at, 1),
            "verdict": combine(Verdict(run["verdict"]) for run in runs).value if runs else Verdict.INVALID.value,
            "exit_code": int(exit_code),
            "result_dir": str(result_dir),
            "runs": runs,
            "skipped_runs": skipped,
            **({"rechecked_at": time.time()} if rechecked else {}),
            **({"bisection": info.bisection} if info.bisection else {}),
        }
        if not cancelled:
            self._judge_comparisons(cid, result)
        problems = schema_problems(result)
        if problems:  # a bug here, not a reason to lose the record: said, and written anyway
            log.error("%s: the record does not match result.json's schema: %s", cid, problems)
        try:
            write_result(self.results_root, cid, result)
        except (UnsafePath, OSError) as err:  # the record still reaches Redis and the database
            log.error("%s: result.json not written: %s", cid, err)
        status = CampaignStatus.CANCELLED if cancelled else CampaignStatus.DONE
        self.store.set_campaign_status(
            cid,
            status,
            result=result,
            verdict=result["verdict"],
            exit_code=result["exit_code"],
            result_dir=str(result_dir),
            finished_at=finished_at,
        )
        # Reports, database, change points, webhook: outside this lock (orchestrator.sinks).
        sinks.enqueue(self.store.redis, cid)
        self.on_finished(cid)
        return result

    def _judge_comparisons(self, cid: str, result: dict[str, Any]) -> None:
        """A comparison campaign's comparisons, and what they do to its verdict: a regression
        of the primary figure fails it (exit 3); a comparison without enough data to decide
        leaves it invalid (exit 4), never a pass that compared nothing."""
        try:
            spec = self.store.campaign_model(cid).spec
        except SpecError:
            return  # refused as a whole already
        if spec.baseline is None:
            return
        reasons: list[str] = []
        try:
            if is_last_pass(spec.baseline):
                comparisons, note = self._against_last_pass(cid, result, spec.compare)
                reasons += [note] if note else []
            else:
                assert isinstance(spec.baseline, BaselineSide)
                comparisons = in_campaign(result, spec.baseline, spec.compare)
        except RecordError as err:  # a bug, not a reason to lose the record: said, compared nothing
            comparisons, reasons = [], [f"nothing compared: {err}"]
            if result["exit_code"] == ExitCode.PASS:
                result["exit_code"] = int(ExitCode.INVALID)
        result["comparisons"] = comparisons
        regressed = regressions(comparisons)
        undecided = [
            f"{c['candidate']} vs {c['baseline']} ({c['workload']}): insufficient data"
            for c in comparisons
            if c["verdict"] == "insufficient data"
        ]
        if regressed:
            result["exit_code"] = campaign_exit_code([result["exit_code"], int(ExitCode.CRITERIA_FAIL)])
        elif undecided and result["exit_code"] == ExitCode.PASS:
            result["exit_code"] = int(ExitCode.INVALID)
        result["verdict"] = _verdict_of_code(result["exit_code"], result["verdict"])
        result["reasons"] = reasons + regressed + undecided

    def prefetch_last_pass(self, cid: str) -> None:
        """Outside the campaign lock: once every run is over, look up the last passing
        instance a ``baseline: last-pass`` campaign compares with (slow: a database engine,
        maybe a migration, up to 50 records) and keep it in the campaign's hash, where
        finishing under the lock finds it. Nothing to do for any other campaign."""
        info = self.store.campaign(cid)
        if info is None or info.status in CAMPAIGN_TERMINAL or info.last_pass_baseline:
            return
        runs = self.store.runs(cid)  # cheap checks first: this runs before every step
        if not runs or any(run.status not in TERMINAL for run in runs):
            return
        try:
            baseline = self.store.campaign_model(cid).spec.baseline
        except SpecError:
            return
        if not is_last_pass(baseline):
            return
        settings = {
            "campaign_id": cid,
            "campaign": info.name,
            "runs": [r.result for r in runs if r.result],
        }
        try:
            found: dict[str, Any] = {"record": self.last_pass(settings)}
        except Exception as err:  # the database is down: finishing says so
            found = {"error": str(err)[:500]}
        self.store.set_campaign(cid, **{LAST_PASS_FIELD: json.dumps(found)})

    def _against_last_pass(
        self, cid: str, result: dict[str, Any], spec: CompareSpec
    ) -> tuple[list[dict[str, Any]], str]:
        """Compared with the last passing instance of this campaign, from the results database
        (looked up before the lock by ``prefetch_last_pass``; here only when it was not)."""
        info = self.store.campaign(cid)
        prefetched = info.last_pass_baseline if info is not None else None
        try:
            baseline = _stored_last_pass(prefetched) if prefetched else self.last_pass(result)
        except Exception as err:  # the database is down: nothing to compare with is not a pass
            return [{**entry, "verdict": "insufficient data"} for entry in against_instance(result, None, spec)], (
                f"baseline unavailable: the results database did not answer ({err})"
            )
        if baseline is None:
            return [], "no earlier passing instance of this campaign with the same settings: nothing compared"
        return against_instance(result, baseline, spec), ""

    def last_pass(self, result: dict[str, Any]) -> dict[str, Any] | None:
        """The newest stored passing instance of the campaign with the same settings."""
        from orchestrator.history.db import ResultsDb  # SQLAlchemy only in the process that judges

        mine = campaign_of(result)  # read once, compared with up to 50 stored instances
        with ResultsDb() as db:
            for row in db.history(campaign=mine.campaign, limit=50):
                if row["verdict"] != "pass" or row["campaign_id"] == mine.campaign_id:
                    continue
                record = db.campaign(row["campaign_id"])
                if record is not None and comparable(mine, record):
                    return record
        return None

    def on_judged(self, campaign: Campaign, entry: dict[str, Any], results: list[NodeResult]) -> None:
        """Hook for the orchestrator's own metrics (the control worker sets it)."""

    def on_finished(self, cid: str) -> None:
        """Hook: the campaign is in its sinks' outboxes (the control worker runs them)."""


def _verdict_of_code(code: int, verdict: str) -> str:
    """The campaign verdict after a comparison changed its exit code."""
    if code == ExitCode.CRITERIA_FAIL:
        return Verdict.FAIL.value
    if code == ExitCode.INVALID and verdict == Verdict.PASS.value:
        return Verdict.INVALID.value
    return verdict


def _stored_last_pass(raw: str) -> dict[str, Any] | None:
    """The baseline ``prefetch_last_pass`` kept; the database's error raised again."""
    found = json.loads(raw)
    if "error" in found:
        raise RuntimeError(found["error"])
    record = found.get("record")
    return record if isinstance(record, dict) else None
