"""Node steps of the test itself: meet the run's other nodes, run the workload from the
common start instant while watching the node, and collect the last counters."""

from __future__ import annotations

import time
from collections.abc import Callable

from workers.collab import BarrierBroken
from workers.coordination.streams import WorkloadStream, workload_progress
from workers.pipeline import evidence
from workers.pipeline.context import NodeContext
from workers.pipeline.step import Aborted, Cancelled, InputFault, KernelFault, Step, StepFailure
from workers.pipeline.watchdog import ProgressWatchdog

BARRIER_TIMEOUT_S = 600.0
# A sampler silent this long makes the session ask the node whether it still answers.
SILENCE_S = 30.0
# A node "answers" for the progress watchdog while its sampler ticked this recently (it
# ticks every second).
ANSWERING_S = 5.0
ALIVE_PROBE_S = 10.0
USAGE_EXIT = 2  # swaplab-node's exit status for arguments it refuses


def hog_command(tool: str, mib: int, passes: int, seed: int, start_at_node_ns: int | None) -> str:
    """The workload's command: from ``start_at_node_ns`` on the node's clock, or at once."""
    start = "" if start_at_node_ns is None else f"--start-at {start_at_node_ns} "
    return f"{tool} hog --mib {mib} --passes {passes} {start}--seed {seed}"


def wait_until(instant_ns: int, cancelled: Callable[[], bool]) -> None:
    """Sleep until ``instant_ns`` on this host's clock, or until ``cancelled()``.

    On guest time the start instant is kept here, not on the node: the guest's clock runs
    at its own pace (icount), so the offset measured before the barrier no longer places
    host time on it. The start then lags by one SSH exec, the same on every node.
    """
    while not cancelled() and (left := (instant_ns - time.time_ns()) / 1e9) > 0:
        time.sleep(min(left, 0.5))


class BarrierStep(Step[NodeContext]):
    """Every node of the run arrives after swapon; they learn one start instant."""

    needs = frozenset({"sampler", "swap"})
    provides = frozenset({"start"})
    name = "barrier"
    phase = "barrier"

    def timeout_s(self, ctx: NodeContext) -> float:
        return BARRIER_TIMEOUT_S

    def describe(self, ctx: NodeContext) -> str:
        return "waiting for every node of the run"

    def run(self, ctx: NodeContext, deadline: float) -> None:
        try:
            ctx.start_at_ns = ctx.barrier.arrive_and_wait(ctx.name, BARRIER_TIMEOUT_S)
        except BarrierBroken as broken:
            raise Aborted(f"run aborted before the start: {broken}") from broken
        ctx.passed_barrier = True


class WorkloadStep(Step[NodeContext]):
    """``swaplab-node hog`` from the start instant to its verdict on every page."""

    needs = frozenset({"shell", "sampler", "start", "sizes", "swap"})
    name = "workload"
    phase = "workload"

    def __init__(self) -> None:
        self._next_probe = 0.0
        self._stall: str | None = None

    def timeout_s(self, ctx: NodeContext) -> float:
        lead_s = max(0.0, ((ctx.start_at_ns or 0) - time.time_ns()) / 1e9)
        return ctx.spec.workload.timeout_s + lead_s

    def describe(self, ctx: NodeContext) -> str:
        return f"touch {ctx.workload_mib} MiB x {ctx.spec.workload.passes} pass(es)"

    def run(self, ctx: NodeContext, deadline: float) -> None:
        assert ctx.shell is not None and ctx.sampler is not None and ctx.start_at_ns is not None
        assert ctx.workload_mib is not None
        work, offset = ctx.spec.workload, ctx.result.clock_offset_ns or 0
        on_node_clock = ctx.spec.timing != "guest"
        if not on_node_clock:
            wait_until(ctx.start_at_ns, ctx.cancel)
        start_at = ctx.start_at_ns + offset if on_node_clock else None
        command = hog_command(ctx.tool, ctx.workload_mib, work.passes, work.seed, start_at)
        stream = WorkloadStream(ctx.shell.open_channel(command), ctx.dir / "workload.log")
        baseline = ctx.sampler.latest()
        watchdog = ProgressWatchdog(_stall_bound(ctx), ctx.quiet_until)
        finished = stream.wait(
            deadline=deadline,
            on_tick=lambda: self._report(ctx, baseline, stream.last_line),
            stop=lambda: (
                ctx.cancel() or not ctx.machine_running() or self._silent(ctx) or self._stalled(ctx, watchdog, stream)
            ),
        )
        ctx.result.workload = outcome = stream.outcome(ctx.start_at_ns, offset, ctx.spec.timing == "guest")
        if ctx.series is not None and outcome.done and outcome.bad_pages == 0 and outcome.exit_status == 0:
            ctx.series.progress, ctx.series.done = 1.0, 1.0
        if not finished:
            raise self._stopped(ctx)
        if outcome.exit_status is None or outcome.exit_status < 0:
            self._check_node_still_there(ctx)
        if outcome.exit_status == USAGE_EXIT and not outcome.done:
            # The tool refused what it was given: an input validation should have caught,
            # never the kernel's failure (docs/ARCHITECTURE.md, "Input").
            raise InputFault(f"swaplab-node refused its arguments: {stream.stderr.strip() or command}")

    def cleanup(self, ctx: NodeContext) -> None:
        # A workload left running on a node that outlives the run (cancel, timeout).
        if ctx.persistent:
            ctx.remote("pkill -x swaplab-node; true", timeout=15)

    def _report(self, ctx: NodeContext, baseline: dict[str, float] | None, note: str) -> None:
        assert ctx.sampler is not None and ctx.workload_mib is not None
        fraction = workload_progress(note, ctx.workload_mib, ctx.spec.workload.passes)
        if ctx.series is not None and fraction is not None:
            ctx.series.progress = fraction
        latest = ctx.sampler.latest()
        if baseline is None or latest is None:
            return
        out = (latest.get("pswpout", 0) - baseline.get("pswpout", 0)) * 4096 / 2**20
        into = (latest.get("pswpin", 0) - baseline.get("pswpin", 0)) * 4096 / 2**20
        ctx.progress.swap(ctx.name, out, into, note)

    def _silent(self, ctx: NodeContext) -> bool:
        """The sampler went quiet and the node does not answer a trivial command."""
        assert ctx.sampler is not None and ctx.shell is not None
        last = ctx.sampler.last_host_time()
        if last is None or time.time() - last < SILENCE_S or time.monotonic() < self._next_probe:
            return False
        if time.time() < ctx.quiet_until():
            return False  # a node silent during a fault and its grace may yet recover: judged after
        self._next_probe = time.monotonic() + ALIVE_PROBE_S
        return not ctx.shell.is_alive(timeout=ALIVE_PROBE_S)

    def _stalled(self, ctx: NodeContext, watchdog: ProgressWatchdog, stream: WorkloadStream) -> bool:
        """The node answers (its sampler ticks) but makes no progress (the watchdog)."""
        assert ctx.sampler is not None
        last = ctx.sampler.last_host_time()
        if last is None or time.time() - last > ANSWERING_S:
            # Not ticking now: a node silent for a moment is not known to answer (a frozen
            # guest is a hang, not a stall), and a silent one is the silence probe's to judge.
            return False
        watchdog.observe(ctx.sampler.latest(), stream.last_line)
        self._stall = watchdog.stalled()
        return self._stall is not None

    def _stopped(self, ctx: NodeContext) -> StepFailure:
        """Why the workload did not finish: cancelled, lab gone, node silent, stalled, or too slow."""
        assert ctx.shell is not None
        if ctx.cancel():
            return Cancelled("cancelled")
        if self._stall is not None:
            return KernelFault(self._stall)
        gone = evidence.machine_or_server_gone(ctx)
        if gone is not None:
            return gone
        if not ctx.shell.is_alive(timeout=ALIVE_PROBE_S):
            return evidence.stopped_answering(ctx)
        return KernelFault(
            f"workload did not finish within {ctx.spec.workload.timeout_s} s "
            f"(last report: {ctx.result.workload.last_line!r})"
        )

    @staticmethod
    def _check_node_still_there(ctx: NodeContext) -> None:
        """The workload's channel ended without a status: the machine, the server or the node went."""
        assert ctx.shell is not None
        gone = evidence.machine_or_server_gone(ctx)
        if gone is not None:
            raise gone
        if not ctx.shell.is_alive(timeout=ALIVE_PROBE_S):
            raise evidence.stopped_answering(ctx)


def _stall_bound(ctx: NodeContext) -> float:
    """The watchdog's bound; on a node that does not inject the run's server faults (it
    cannot see their windows) long enough to sit through the longest of them and its grace."""
    others = [
        f.for_s + f.grace_s
        for i, f in enumerate(ctx.spec.faults)
        if f.target == "server" and not f.injected_by(ctx.spec.run_index)
    ]
    return ctx.spec.workload.stalled_after_s + max(others, default=0.0)


class CollectStep(Step[NodeContext]):
    """A couple more sampler ticks, so the final counters cover the whole workload."""

    needs = frozenset({"sampler"})
    name = "collect"
    phase = "collect"

    def run(self, ctx: NodeContext, deadline: float) -> None:
        assert ctx.sampler is not None
        ctx.sampler.wait_for_more(2, timeout_s=5.0)
