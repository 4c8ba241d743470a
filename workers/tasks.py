"""The data plane's Celery tasks, on a lab's queue: the run's setup and the node task.

Thin wrappers: the work is in workers.pipeline. Both are idempotent under redelivery, and
both validate what they read (the message is input). The control plane sends them by name
(``swaplab.prepare_run``, ``swaplab.run_node``); nothing here imports it.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import socket
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import pydantic
import redis
from celery import signals

from model import protocol
from model.hashes import CorruptHash
from model.paths import results_root
from model.protocol import BUILD_STAGE, PREPARE_STAGE, RunStatus, SetupStage, StageFailure, version_skew
from model.runspec import BuildMessage, Failure, FailureCause, NodeResult, NodeRunSpec, RunSetupSpec
from model.state import (
    TERMINAL,
    barrier_key,
    build_lock_key,
    guest_key,
    holder_id,
    lab_of_queue,
    redis_url,
    scan_pattern,
    worker_key,
)
from model.yamlpos import SpecError
from workers.admission import admit_build, admit_node
from workers.app import app
from workers.coordination.barrier import RedisBarrier
from workers.coordination.health import NodeHealth
from workers.coordination.lease import LEASE_TTL_S, LeaseBook, LeaseKeeper
from workers.coordination.run_state import RunState
from workers.drivers import DriverError, PowerControl, make_driver
from workers.exporter import LEASES_HELD, start_metrics_server
from workers.faults.actions import undo_leftovers
from workers.kbuild.build import BuildError, inputs_digest
from workers.kbuild.build import build_kernel as build_artifact
from workers.kernel import KernelError
from workers.lab import boot_files, boot_server
from workers.labs import LabNotServed, served_labs, served_node
from workers.node_session import run_node_session
from workers.pipeline.run_setup import prepare_run as run_setup
from workers.pipeline.step import InputFault, StepFailure

log = logging.getLogger(__name__)
WORKER_TTL_S = 60
BUILD_LOCK_S = 4 * 3600  # longer than any build: a holder that dies frees it after this
SETUP_BEAT_S = 5.0


def _redis() -> redis.Redis:
    return redis.Redis.from_url(redis_url(), socket_timeout=10, health_check_interval=5)


# -- once per run, before nodes are leased: the kernel build, the run's setup -------------------
M = TypeVar("M", bound=pydantic.BaseModel)


def _stage_message(state: RunState, stage: SetupStage, model: type[M], message: Any, attempt: int) -> M | None:
    """The validated message of a stage's task, claimed for this worker; None when it must do nothing.

    Stale (the scheduler moved on) or redelivered: nothing is written (every write is a
    compare-and-set on the run's status and the stage's attempt). Of another protocol
    version: the stage fails as the lab's (infra). Invalid: as the input's (the run is
    invalid). Either way nothing runs.
    """
    failure: StageFailure | None = None
    parsed: M | None = None
    skew = version_skew(message)
    if skew is not None:  # the lab's worker and the control plane disagree: the lab's problem
        log.error("refused the %s of %s %s: %s", stage.name, state.cid, state.rid, skew)
        failure = StageFailure(cause="infra", reason=skew)
    else:
        try:
            parsed = model.model_validate(message)
        except pydantic.ValidationError as err:
            failure = StageFailure(cause="input", reason=f"{stage.name} message is invalid: {_errors(err)}")
        else:
            if (getattr(parsed, "campaign", None), getattr(parsed, "run_id", None)) != (state.cid, state.rid):
                failure = StageFailure(cause="input", reason=f"{stage.name} message names another run")
    if failure is not None:
        state.finish_stage(stage, attempt, failure)
        return None
    if not state.claim_stage(stage, attempt, f"{socket.gethostname()}:{os.getpid()}"):
        return None
    return parsed


def _note(state: RunState, phase: str) -> Callable[[str], None]:
    """Run-level progress events under ``phase`` (at most one every 5 s for repeated lines)."""
    last = [0.0]

    def note(text: str) -> None:
        if text.startswith("make ") and time.monotonic() - last[0] < 5.0:
            return
        last[0] = time.monotonic()
        _safely(lambda: state.event(kind="phase", node="", phase=phase, detail=text))

    return note


@app.task(name=protocol.BUILD_KERNEL, ignore_result=True)
def build_kernel(message: dict[str, Any], cid: str, rid: str, attempt: int) -> None:
    """Build (or find) a run's ``build`` kernel, on the build queue, once per hash."""
    client = _redis()
    state = RunState(client, cid, rid)
    build = _stage_message(state, BUILD_STAGE, BuildMessage, message, attempt)
    if build is None:
        return
    with _Heartbeat(lambda: state.beat_stage(BUILD_STAGE, attempt)):
        outcome = _build(client, build, _note(state, "build"))
    state.finish_stage(BUILD_STAGE, attempt, outcome)


def _build(client: redis.Redis, message: BuildMessage, note: Callable[[str], None]) -> StageFailure | dict[str, Any]:
    try:
        spec = admit_build(message)
        digest = inputs_digest(spec, note)
        # One build per hash across every build worker; the others find it in the cache after.
        with client.lock(build_lock_key(digest), timeout=BUILD_LOCK_S, blocking_timeout=BUILD_LOCK_S):
            artifact = build_artifact(spec, note)
    except InputFault as refused:
        return StageFailure(cause="input", reason=refused.reason)
    except BuildError as failed:
        note(f"failed ({failed.cause}) at {failed.stage}")
        return StageFailure(cause="input" if failed.cause == "input" else "infra", reason=failed.reason)
    except (KernelError, OSError, redis.RedisError) as err:
        return StageFailure(cause="infra", reason=f"{type(err).__name__}: {err}")
    note(f"built {artifact.summary()}")
    built = {
        "artifact": artifact.hash,
        "release": artifact.meta["release"],
        "uts_version": artifact.meta["uts_version"],
        "patches": [str(patch.get("subject", "")) for patch in artifact.meta.get("patches", [])][:500],
    }
    return built


@app.task(name=protocol.PREPARE_RUN, ignore_result=True)
def prepare_run(spec: dict[str, Any], cid: str, rid: str, attempt: int) -> None:
    """Make the lab's NFS server serve and build the run's node image, once per run attempt."""
    state = RunState(_redis(), cid, rid)
    setup = _stage_message(state, PREPARE_STAGE, RunSetupSpec, spec, attempt)
    if setup is None:
        return
    with _Heartbeat(lambda: state.beat_stage(PREPARE_STAGE, attempt)):
        outcome = _prepare(setup, state)
    state.finish_stage(PREPARE_STAGE, attempt, outcome)


def _prepare(setup: RunSetupSpec, state: RunState) -> StageFailure | dict[str, Any] | str:
    def note(phase: str, text: str) -> None:
        _safely(lambda: state.event(kind="phase", node="", phase=phase, detail=text))

    try:
        prepared = run_setup(setup, note)
    except StepFailure as failure:
        note("prepare", f"failed ({failure.cause}): {failure.reason}")
        return StageFailure(cause=failure.cause, reason=failure.reason)
    return prepared.model_dump(mode="json") if prepared else ""


class _Heartbeat:
    """Calls ``beat`` every few seconds while a long setup runs (the scheduler watches it)."""

    def __init__(self, beat: Callable[[], object]) -> None:
        self._beat = beat
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="setup-heartbeat", daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(SETUP_BEAT_S):
            _safely(self._beat)

    def __enter__(self) -> _Heartbeat:
        self._thread.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=5.0)


# -- the node task -------------------------------------------------------------------------------
@app.task(name=protocol.RUN_NODE, bind=True)
def run_node(self: Any, spec: dict[str, Any], cid: str, rid: str, attempt: int) -> dict[str, Any]:
    """Run one node of one run attempt; idempotent under redelivery."""
    client = _redis()
    state = RunState(client, cid, rid)
    skew = version_skew(spec)
    if skew is not None:
        return _refuse_message(state, spec, attempt, skew, cause="infra")
    try:
        run_spec = NodeRunSpec.model_validate(spec)
    except pydantic.ValidationError as err:
        return _refuse_message(state, spec, attempt, f"node task message is invalid: {_errors(err)}")
    if (run_spec.campaign, run_spec.run_id, run_spec.attempt) != (cid, rid, attempt):
        return _refuse_message(state, spec, attempt, "node task message names another run than its task")
    try:
        admit_node(run_spec)  # this worker's lab and node, before it takes a lease or a guest record
    except InputFault as refused:
        return _refuse_message(state, spec, attempt, refused.reason)
    node = run_spec.node
    try:
        run, node_state = state.run(), state.node(node)
    except CorruptHash as err:  # not swaplab's writing: run nothing on it
        log.error("refused a node task of %s %s: %s", cid, rid, err)
        return {"skipped": str(err)[:500]}
    if run is None or run.attempt != attempt or run.status in TERMINAL:
        return {"skipped": "stale attempt"}
    if node_state is not None and node_state.done and node_state.result is not None:
        return node_state.result.model_dump(mode="json")  # redelivered after it finished
    # The lease, not the message, says whose node it is: a message for a node another run
    # holds must not power off that run's guest, nor boot a second one beside it.
    holder = holder_id(cid, rid, attempt)
    if not LeaseBook(client, run_spec.lab, ttl_s=LEASE_TTL_S).confirm(holder, node):
        return _refuse_message(
            state, spec, attempt, f"node {node} of lab {run_spec.lab} is leased to another run than {holder}"
        )
    return _run_owned_node(client, state, run_spec, attempt, parties=len(run.nodes))


def _refuse_message(
    state: RunState, spec: Any, attempt: int, reason: str, cause: FailureCause = "input"
) -> dict[str, Any]:
    """A message that fails validation runs nothing: its node's result says why (invalid;
    an infra-error when the message is from another protocol version)."""
    named = spec.get("node") if isinstance(spec, dict) else None
    node = named if isinstance(named, str) and named in _run_nodes(state) else "?"
    log.error("refused a node task of %s %s: %s", state.cid, state.rid, reason)
    result = NodeResult(run_id=state.rid, node=node)
    result.failure = Failure(cause=cause, phase="message", reason=reason)
    data = result.model_dump(mode="json")
    if node != "?":  # only a node the run really has gets the verdict, and only for this attempt
        state.node_done(node, attempt, data)
    return data


def _run_nodes(state: RunState) -> list[str]:
    """The nodes of the run's current attempt; none when its hash is missing or unreadable."""
    try:
        run = state.run()
    except CorruptHash:
        return []
    return run.nodes if run is not None else []


def _errors(err: pydantic.ValidationError) -> str:
    """A validation error in one line, without echoing the (untrusted) values at length."""
    return "; ".join(f"{'.'.join(str(p) for p in e['loc']) or 'message'}: {e['msg']}" for e in err.errors()[:5])


def _run_owned_node(
    client: redis.Redis, state: RunState, spec: NodeRunSpec, attempt: int, parties: int
) -> dict[str, Any]:
    node, lab = spec.node, spec.lab
    holder = holder_id(state.cid, state.rid, attempt)
    if not state.claim_node(node, attempt, f"{socket.gethostname()}:{os.getpid()}"):
        taken = state.node(node)
        owner = (taken.owner if taken is not None else "") or "another task"
        return {"skipped": f"already run by {owner}"}  # redelivered: never a second guest
    _clean_orphan(client, lab, node)
    client.set(guest_key(lab, node), json.dumps({"holder": holder, "workdir": str(spec.result_dir(results_root()))}))
    lost = threading.Event()
    keeper = LeaseKeeper(LeaseBook(client, lab, ttl_s=LEASE_TTL_S), holder, [node], on_lost=lambda _n: lost.set())
    keeper.start()
    LEASES_HELD.labels(lab).inc()
    try:
        barrier = RedisBarrier(client, barrier_key(state.cid, state.rid, attempt), parties=parties)
        cancel = _CancelCheck(state, attempt, lost)
        result = run_node_session(
            spec.model_dump(mode="json"),
            _RedisProgress(state, attempt),
            barrier,
            cancel,
            on_budget=lambda seconds: keeper.renew_until(time.monotonic() + seconds),
        )
    finally:
        keeper.stop()  # the scheduler releases the run's leases when it judges the run
        LEASES_HELD.labels(lab).dec()
    _record_health(client, lab, node, NodeResult.model_validate(result))
    if not state.node_done(node, attempt, result):
        log.warning(
            "%s %s %s: attempt %d ended after the run moved on; its result is not kept",
            state.cid,
            state.rid,
            node,
            attempt,
        )
    client.delete(guest_key(lab, node))
    return result


def _record_health(client: redis.Redis, lab: str, node: str, result: NodeResult) -> None:
    # Only the lab's own failures count against a node: a bad kernel must not take good
    # nodes out of the pool. A node nobody can power-cycle that stopped answering is out
    # at once, whoever's fault it was, until a person says it is back.
    health = NodeHealth(client, lab)
    failure = result.failure
    if failure is not None and failure.takes_node_out:
        health.take_out(node, failure.reason)
    elif failure is not None and failure.phase == "boot" and failure.cause == "infra":
        health.record_boot(node, ok=False, reason=failure.reason)
    elif "boot" in result.phases and (failure is None or failure.phase != "boot"):
        health.record_boot(node, ok=True)


class _CancelCheck:
    """Cancelled by the user, by a lost lease, or by the scheduler giving up on the attempt."""

    def __init__(self, state: RunState, attempt: int, lost: threading.Event) -> None:
        self.state, self.attempt, self.lost = state, attempt, lost
        self._checked = 0.0
        self._answer = False

    def __call__(self) -> bool:
        if self.lost.is_set() or self._answer:
            return True
        if time.monotonic() - self._checked > 1.0:
            self._checked = time.monotonic()
            with contextlib.suppress(redis.RedisError):  # Redis restarting: ask again in a second
                self._answer = self.state.aborted(self.attempt) or self.state.cancel_requested()
        return self._answer


class _RedisProgress:
    """Progress into the campaign's event stream and the node's state hash."""

    def __init__(self, state: RunState, attempt: int) -> None:
        self.state = state
        self.attempt = attempt
        self._last_swap: dict[str, float] = {}

    def phase(self, node: str, phase: str, detail: str = "") -> None:
        def record() -> None:
            # "done" is set by the task itself once the node's result is stored.
            self.state.node_status(node, self.attempt, phase if phase != "done" else "finishing")
            if phase == "workload" and self.state.mark_running(self.attempt):
                self.state.event(kind="run", status=RunStatus.RUNNING)
            self.state.event(kind="phase", node=node, phase=phase, detail=detail)

        _safely(record)

    def swap(self, node: str, out_mib: float, in_mib: float, note: str = "") -> None:
        if time.monotonic() - self._last_swap.get(node, 0.0) < 2.0:
            return
        self._last_swap[node] = time.monotonic()
        _safely(
            lambda: self.state.event(
                kind="swap", node=node, out_mib=round(out_mib, 1), in_mib=round(in_mib, 1), detail=note
            )
        )


def _safely(action: Callable[[], object]) -> None:
    try:
        action()
    except redis.RedisError as err:  # progress is best effort; the run goes on
        log.warning("progress not recorded: %s", err)


# -- worker start: registry, metrics and orphan cleanup ----------------------------------------------
def _clean_orphan(client: redis.Redis, lab: str, node: str) -> None:
    """Power off a guest left by a dead worker for ``node`` (found via its record).

    Only for a node this process holds the lease of, or one nobody leases: the record may
    have been written by anyone, but then no live run's guest is on that node (and the
    driver only kills a process with this node's name and pid file).
    """
    raw = client.get(guest_key(lab, node))
    if not raw:
        return
    try:
        record = json.loads(raw)
        workdir = Path(str(record["workdir"])).resolve()
        if not workdir.is_relative_to(results_root()):
            raise ValueError(f"workdir {workdir} is outside this worker's results")
        # The node as this worker's inventory describes it: a record only says which one.
        _lab, config = served_node(lab, node)
        driver = make_driver(config, workdir)
    except (ValueError, KeyError, TypeError, LabNotServed, DriverError) as err:
        log.error("guest record of %s/%s is unusable (%s); left alone", lab, node, err)
        return
    if isinstance(driver, PowerControl):
        driver.power_off()
    client.delete(guest_key(lab, node))
    log.warning("powered off orphaned guest of %s/%s (%s)", lab, node, record.get("holder"))


@signals.worker_ready.connect
def _on_worker_ready(sender: Any = None, **_: Any) -> None:
    client = _redis()
    queues = sorted(sender.app.amqp.queues.consume_from or []) if sender is not None else []
    hostname = getattr(sender, "hostname", socket.gethostname())
    pool = type(getattr(sender, "pool", None)).__module__
    if "prefork" in pool:
        # Node series live in the process that runs the task: prefork children would each
        # hold theirs where the main process's /metrics cannot see them.
        log.error("swaplab workers need -P threads (or solo): node metrics are not exported from prefork children")
    start_metrics_server(hostname)
    _announce_labs(queues)
    concurrency = int(getattr(getattr(sender, "pool", None), "limit", 0) or app.conf.worker_concurrency or 1)
    _register_worker(client, hostname, queues, concurrency)
    for queue in queues:
        lab = lab_of_queue(queue)
        if lab is not None:
            _clean_orphans_of(client, lab)
    for undone in undo_leftovers():
        log.warning("undid a fault a dead worker left: %s", undone)
    # A dead worker's machine may still find its boot files: withdraw them before any
    # machine powers on again, or it could boot a run that no longer exists.
    for withdrawn in boot_files.withdraw_leftovers(boot_server.leftover_runner):
        log.warning("withdrew the boot files a dead worker left: %s", withdrawn)


def _announce_labs(queues: list[str]) -> None:
    """Say which labs this worker serves, from its own inventories; a bad one is loud."""
    try:
        labs = served_labs()
    except SpecError as err:
        log.error("this worker's inventories are invalid; it will refuse every task:\n%s", err)
        return
    log.info("serving labs: %s", ", ".join(f"{name} ({lab.inventory})" for name, lab in sorted(labs.items())))
    for queue in queues:
        lab = lab_of_queue(queue)
        if lab is not None and lab not in labs:
            log.error(
                "consuming %s, but no inventory of lab %s is configured (SWAPLAB_LABS): its tasks are refused",
                queue,
                lab,
            )


def _clean_orphans_of(client: redis.Redis, lab: str) -> None:
    """Power off the guests of nodes nobody leases.

    A leased node is left to its holder's node task, which cleans it once it has confirmed
    the lease: a guest record is anyone's to write, so its ``holder`` field cannot be what
    decides that a live run's guest is an orphan.
    """
    leased = LeaseBook(client, lab, ttl_s=LEASE_TTL_S).holders()
    prefix = guest_key(lab, "")
    for key in client.scan_iter(scan_pattern(prefix)):
        node = key.decode(errors="replace")[len(prefix) :]
        if node not in leased:
            _clean_orphan(client, lab, node)


def _register_worker(client: redis.Redis, hostname: str, queues: list[str], concurrency: int) -> None:
    key = worker_key(hostname)
    info = json.dumps({"queues": queues, "concurrency": concurrency, "pid": os.getpid()})

    def beat() -> None:
        while True:
            try:
                client.set(key, info, ex=WORKER_TTL_S)
            except redis.RedisError as err:
                log.warning("worker registry: %s", err)
            time.sleep(WORKER_TTL_S / 3)

    threading.Thread(target=beat, name="swaplab-registry", daemon=True).start()
