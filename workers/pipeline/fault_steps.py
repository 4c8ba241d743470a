"""The node step that disturbs the NFS path while the workload runs (model.faults).

It comes after the barrier (the workload's start instant is known) and before the
workload: ``run`` makes each of the session's faults an action on the lab and starts the
injector; ``cleanup`` — whatever happened, after the workload — ends every fault and
records what became of each in the node result. A fault that cannot be applied on this
lab is the lab's fault, never the kernel's.
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Sequence

from model.faults import SERVER_TARGET, FaultRecord, FaultSpec, FaultTimes
from model.limits import HOG_SEED_MAX
from model.runspec import Failure
from workers.collab import Barrier
from workers.exporter import FAULT_ACTIVE
from workers.faults import actions
from workers.faults.actions import Action, FaultActionError, Squeeze
from workers.faults.injector import FaultInjector, Planned, fault_record, journal_name
from workers.lab import labbox, network
from workers.lab.network import LabNetworkError
from workers.pipeline.context import NodeContext
from workers.pipeline.step import InputFault, LabFault, Step
from workers.pipeline.workload_steps import hog_command
from workers.samples import Record

# How often a node that does not inject the run's server faults looks at what it was told,
# and how long a fault's news is retried (Redis restarting) or waited for.
_OBSERVE_POLL_S = 0.5
TELL_RETRY_S = 20.0


class FaultStep(Step[NodeContext]):
    """Starts the session's faults beside the workload; ends and records them afterwards."""

    needs = frozenset({"nfs", "sampler", "start", "shell"})
    name = "faults"
    phase = "barrier"

    def __init__(self) -> None:
        self.injector: FaultInjector | None = None
        self.teller: FaultTeller | None = None
        self.observer: FaultObserver | None = None

    def describe(self, ctx: NodeContext) -> str:
        return ", ".join(fault.describe() for _, fault in ctx.spec.own_faults())

    def run(self, ctx: NodeContext, deadline: float) -> None:
        observed = ctx.spec.observed_faults()
        if observed:
            self.observer = FaultObserver(ctx, observed)
            self.observer.start()
        own = ctx.spec.own_faults()
        if not own:
            return
        assert ctx.sampler is not None and ctx.start_at_ns is not None
        planned = [Planned(index, fault, self._action(ctx, index, fault)) for index, fault in own]
        sampler = ctx.sampler
        teller = self.teller = FaultTeller(ctx.barrier, ctx.name)
        self.injector = FaultInjector(
            ctx.name, planned, ctx.start_at_ns, sampler.latest, ctx.note, lambda p, on: _active(ctx, p, on, teller)
        )
        self.injector.start()

    def cleanup(self, ctx: NodeContext) -> None:
        samples = ctx.sampler.records() if ctx.sampler is not None else []
        if self.observer is not None:
            ctx.result.faults = self.observer.stop(samples)
        if self.injector is None:
            return
        self.injector.stop()
        if self.teller is not None:
            self.teller.close()
        ctx.result.faults = self.injector.records(samples) + ctx.result.faults
        squeezes = [(p.index, p.action) for p in self.injector.planned if isinstance(p.action, Squeeze)]
        for index, squeeze in squeezes:
            (ctx.dir / f"squeeze-{index + 1}.log").write_bytes(squeeze.output)
        corrupt = [line for _, squeeze in squeezes for line in squeeze.corrupt()]
        if corrupt and ctx.result.failure is None:
            # The squeeze's hog read back pages it did not write: the kernel's, as the workload's.
            reason = f"the memory squeeze's hog found corrupt pages: {corrupt[0]}"
            ctx.result.failure = Failure(cause="kernel", phase="faults", reason=reason)
        if self.injector.problem and ctx.result.failure is None:
            # The run proves nothing about a fault the lab could not apply or undo.
            ctx.result.failure = Failure(cause="infra", phase="faults", reason=self.injector.problem)

    @staticmethod
    def _action(ctx: NodeContext, index: int, fault: FaultSpec) -> Action:
        name = journal_name(ctx.spec.campaign, ctx.spec.run_id, ctx.spec.attempt, ctx.name, index)
        if fault.kind == "server-restart":
            assert ctx.nfs is not None
            return actions.restart(name, ctx.nfs)
        if fault.kind == "memory-squeeze":
            assert ctx.shell is not None and fault.mib is not None
            seed = (ctx.spec.workload.seed + 1 + index) % (HOG_SEED_MAX + 1)  # its own pages, not the workload's
            return actions.squeeze(name, ctx.shell, hog_command(ctx.tool, fault.mib, 1, seed, None))
        if fault.kind == "server-stall":
            assert ctx.nfs is not None
            try:
                return actions.stall(name, ctx.nfs.serving_pid)
            except FaultActionError as err:
                raise LabFault(f"fault {index + 1}: {err}") from err
        route = ctx.node.nfs_route
        if route is None or not route.lab_network:
            # Validation refuses it against the submitter's inventory; this worker's differs.
            raise InputFault(f"fault {index + 1}: {fault.kind} needs a lab network; node {ctx.name} has none here")
        try:
            port, _net = network.node_port(ctx.lab.name, route)
        except LabNetworkError as err:
            raise LabFault(f"fault {index + 1}: {err}") from err
        if fault.kind == "bandwidth":
            assert fault.mbit is not None
            server_tap = network.TAP_PREFIX + labbox.SERVER_PORT
            return actions.shape(
                name, ctx.lab.name, port.tap, server_tap, str(port.address), fault.direction, fault.mbit
            )
        if fault.kind == "latency":
            assert ctx.nfs is not None and fault.ms is not None
            return actions.delay(name, ctx.nfs, str(port.address), fault.ms)
        if fault.flap_s is not None:
            return actions.flap(name, ctx.lab.name, port.tap, fault.direction, fault.flap_s)
        percent = fault.percent if fault.kind == "loss" else None
        return actions.drop(name, ctx.lab.name, port.tap, fault.direction, percent)


def _active(ctx: NodeContext, planned: Planned, on: bool, teller: FaultTeller | None = None) -> None:
    """The fault as a Prometheus series (1 while active): the node dashboard's annotation;
    the progress watchdog quiet while it lasts and for its grace after; and a server's
    fault told to the run's other nodes, which it disturbs as much."""
    FAULT_ACTIVE.labels(ctx.lab.name, ctx.name, planned.spec.kind).set(1 if on else 0)
    ctx.faults_quiet_until = float("inf") if on else time.time() + planned.spec.grace_s
    if planned.spec.target == SERVER_TARGET and teller is not None:
        teller.tell(planned.index, FaultTimes(node=ctx.name, started_at=planned.started_at, ended_at=planned.ended_at))


class FaultTeller:
    """Tells the run's other nodes of this session's server faults, beside the injector:
    a Redis outage (retried) must not stretch a fault the injector is timing."""

    def __init__(self, barrier: Barrier, name: str) -> None:
        self.barrier = barrier
        self._queue: queue.Queue[tuple[int, FaultTimes] | None] = queue.Queue()
        self._thread = threading.Thread(target=self._run, name=f"swaplab-fault-teller-{name}", daemon=True)
        self._thread.start()

    def tell(self, index: int, times: FaultTimes) -> None:
        self._queue.put((index, times))

    def close(self, timeout_s: float = TELL_RETRY_S) -> None:
        """Tell what is left (each told in turn, retried up to TELL_RETRY_S), then stop."""
        self._queue.put(None)  # the end
        self._thread.join(timeout_s)

    def _run(self) -> None:
        while (item := self._queue.get()) is not None:
            index, times = item
            give_up = time.monotonic() + TELL_RETRY_S
            while not self.barrier.note_fault(index, times) and time.monotonic() < give_up:
                time.sleep(_OBSERVE_POLL_S)


class FaultObserver:
    """On a node that does not inject the run's server faults: follows them as their
    injecting session tells them (the watchdog stays quiet during each and its grace),
    and measures each on this node's own samples afterwards."""

    def __init__(self, ctx: NodeContext, observed: list[tuple[int, FaultSpec]]) -> None:
        self.ctx = ctx
        self.observed = dict(observed)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._follow, name=f"swaplab-fault-observer-{ctx.name}", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self, samples: Sequence[Record]) -> list[FaultRecord]:
        """Stop following; each observed fault as measured here (missed: never told of it)."""
        self._stop.set()
        self._thread.join(5.0)
        told = self._told_to_the_end()
        return [self._record(index, spec, told.get(index), samples) for index, spec in self.observed.items()]

    def _told_to_the_end(self) -> dict[int, FaultTimes]:
        """What was told, once every fault told to have begun was told to have ended (the
        injecting node may end a little after this one), or TELL_RETRY_S passed."""
        give_up = time.monotonic() + TELL_RETRY_S
        while True:
            told = self.ctx.barrier.fault_times()
            open_ones = [t for i, t in told.items() if i in self.observed and t.started_at and t.ended_at is None]
            if not open_ones or time.monotonic() >= give_up:
                return told
            time.sleep(_OBSERVE_POLL_S)

    def _follow(self) -> None:
        while not self._stop.wait(_OBSERVE_POLL_S):
            told = self.ctx.barrier.fault_times()
            quiet = 0.0
            for index, spec in self.observed.items():
                times = told.get(index)
                if times is None or times.started_at is None:
                    continue
                quiet = max(quiet, float("inf") if times.ended_at is None else times.ended_at + spec.grace_s)
            self.ctx.observed_quiet_until = quiet

    def _record(self, index: int, spec: FaultSpec, times: FaultTimes | None, samples: Sequence[Record]) -> FaultRecord:
        if times is None or times.started_at is None:
            span: tuple[float | None, float | None] = (None, None)
            missed = "the run's injecting node never told it began"
        else:
            span, missed = (times.started_at, times.ended_at), ""
        injected_by = times.node if times is not None else "the run's first node"
        record = fault_record(injected_by[:40], index, spec, span, samples, missed)
        return record.model_copy(update={"measured_on": self.ctx.name})
