"""The fault injector of one node session: a thread beside the workload that starts each
of the session's faults when its moment comes, ends it after its duration, and records
what really happened.

Faults run one after another in the campaign's order (their windows are judged one by
one). A fault starts at its time after the workload's start instant, or once the node has
swapped out its amount since then. What the session brings back per fault: its real
start and end, the swap-out rate before it (was swap-out in progress: did it hit
anything?), and the recovery time — from its end to the first sampler tick at which
swap-out is back at half that rate.
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from model.faults import BEFORE_WINDOW_S, FaultRecord, FaultSpec
from workers.faults.actions import Action, FaultActionError
from workers.samples import PAGE_SIZE, Record

log = logging.getLogger(__name__)
MIB = 2**20
_POLL_S = 0.2


@dataclass
class Planned:
    """One fault of the session: its place in the campaign, its spec, its action."""

    index: int
    spec: FaultSpec
    action: Action
    started_at: float | None = None
    ended_at: float | None = None
    missed: str = ""


@dataclass
class FaultInjector:
    """Times the session's faults against the workload (``start_ns``: its start instant, host clock)."""

    node: str
    planned: list[Planned]
    start_ns: int
    # The node's latest counters (pswpout since boot), and a note for the progress line.
    latest: Callable[[], Record | None]
    note: Callable[[str], None]
    on_active: Callable[[Planned, bool], None] = lambda planned, active: None
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None
    problem: str = ""  # an action that failed: the lab's fault

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name=f"swaplab-faults-{self.node}", daemon=True)
        self._thread.start()

    def stop(self, timeout_s: float = 30.0) -> None:
        """End the session's faults: pending ones are missed, an active one is undone now."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout_s)
        for planned in self.planned:
            self._end(planned)  # idempotent: whatever the thread did not get to
            if planned.started_at is None and not planned.missed:
                planned.missed = _missed_reason(planned.spec)

    def _run(self) -> None:
        try:
            self._inject()
        except Exception as err:  # a bug here must not leave a fault applied until the workload's timeout
            log.exception("the fault injector of %s failed", self.node)
            self.problem = self.problem or f"the fault injector failed: {err!r}"
            for planned in self.planned:
                if planned.started_at is None:
                    with contextlib.suppress(FaultActionError):
                        planned.action.undo()  # applied, perhaps, before its start was recorded
                else:
                    self._end(planned)

    def _inject(self) -> None:
        baseline = _swapped_out_mib(self.latest())
        for planned in self.planned:
            if not self._wait_for_trigger(planned, baseline):
                planned.missed = planned.missed or _missed_reason(planned.spec)
                continue
            if not self._begin(planned):
                return
            until = time.monotonic() + planned.spec.for_s
            while not self._stop.is_set() and not planned.action.finished() and time.monotonic() < until:
                self._stop.wait(min(_POLL_S, max(0.0, until - time.monotonic())))
            self._end(planned)

    def _wait_for_trigger(self, planned: Planned, baseline: float | None) -> bool:
        spec = planned.spec
        while not self._stop.is_set():
            if spec.at_s is not None and time.time_ns() >= self.start_ns + int(spec.at_s * 1e9):
                return True
            if spec.after_swapped_mib is not None:
                now = _swapped_out_mib(self.latest())
                if baseline is not None and now is not None and now - baseline >= spec.after_swapped_mib:
                    return True
            self._stop.wait(_POLL_S)
        return False

    def _begin(self, planned: Planned) -> bool:
        # The disturbance begins as its action does (a server's stop takes seconds).
        began = time.time()
        try:
            planned.action.apply()
        except FaultActionError as err:
            self.problem = f"fault {planned.index + 1} ({planned.spec.kind}): {err}"
            planned.missed = str(err)
            self.note(self.problem)
            return False
        planned.started_at = began
        self.on_active(planned, True)
        self.note(f"fault {planned.index + 1}: {planned.spec.describe()} began")
        return True

    def _end(self, planned: Planned) -> None:
        if planned.started_at is None or planned.ended_at is not None:
            return
        try:
            planned.action.undo()
        except FaultActionError as err:
            self.problem = f"fault {planned.index + 1} ({planned.spec.kind}) could not be undone: {err}"
            self.note(self.problem)
        planned.ended_at = time.time()
        self.on_active(planned, False)
        self.note(f"fault {planned.index + 1} ended after {planned.ended_at - planned.started_at:.1f} s")

    def records(self, samples: Sequence[Record]) -> list[FaultRecord]:
        """What happened to each fault, its recovery measured on ``samples`` (the sampler's ticks)."""
        return [
            fault_record(
                self.node, planned.index, planned.spec, (planned.started_at, planned.ended_at), samples, planned.missed
            )
            for planned in self.planned
        ]


def journal_name(campaign: str, run_id: str, attempt: int, node: str, index: int) -> str:
    """The fault's journal entry: unique per run attempt, node and fault."""
    return f"{campaign}.{run_id}.a{attempt}.{node}.{index}"


def fault_record(
    node: str,
    index: int,
    spec: FaultSpec,
    span: tuple[float | None, float | None],
    samples: Sequence[Record],
    missed: str = "",
) -> FaultRecord:
    """Fault ``index`` as it happened (``span``: its real start and end), its swap-out
    before and its recovery measured on ``samples``; ``node`` injected it."""
    started_at, ended_at = span
    before = recovery = None
    note = ""
    if started_at is not None:
        before = swap_out_rate(samples, started_at - BEFORE_WINDOW_S, started_at)
        if ended_at is not None:
            recovery, note = recovery_time(samples, ended_at, before)
    return FaultRecord(
        index=index,
        kind=spec.kind,
        target=spec.target,
        node=node,
        planned=spec.describe(),
        started_at=started_at,
        ended_at=ended_at,
        grace_s=spec.grace_s,
        hung_task=spec.hung_task,
        swap_out_mibps_before=None if before is None else round(before, 3),
        recovery_s=None if recovery is None else round(recovery, 2),
        recovery_note=note,
        missed=missed[:300],
    )


def _swapped_out_mib(record: Record | None) -> float | None:
    if record is None or "pswpout" not in record:
        return None
    return float(record["pswpout"]) * PAGE_SIZE / MIB


def _at(record: Record) -> float:
    return float(record.get("host_time_ns", 0)) / 1e9


def swap_out_rate(samples: Sequence[Record], since: float, until: float) -> float | None:
    """MiB/s swapped out between the first and last tick within [since, until] (None: fewer than two)."""
    inside = [r for r in samples if since <= _at(r) <= until and "pswpout" in r]
    if len(inside) < 2 or _at(inside[-1]) <= _at(inside[0]):
        return None
    moved = float(inside[-1]["pswpout"]) - float(inside[0]["pswpout"])
    return moved * PAGE_SIZE / MIB / (_at(inside[-1]) - _at(inside[0]))


def recovery_time(samples: Sequence[Record], ended_at: float, before: float | None) -> tuple[float | None, str]:
    """Seconds from ``ended_at`` to the first tick whose swap-out since the tick before is
    at least half of ``before`` (MiB/s); None and why when there is none."""
    if not before:
        return None, "no swap-out before the fault to recover to"
    after = [r for r in samples if _at(r) >= ended_at and "pswpout" in r]
    for previous, tick in itertools.pairwise(after):
        span = _at(tick) - _at(previous)
        if span <= 0:
            continue
        rate = (float(tick["pswpout"]) - float(previous["pswpout"])) * PAGE_SIZE / MIB / span
        if rate >= before / 2:
            return _at(tick) - ended_at, ""
    return None, f"swap-out stayed below half its rate before the fault ({before:.1f} MiB/s) until sampling ended"


def _missed_reason(spec: FaultSpec) -> str:
    if spec.at_s is not None:
        return f"the workload ended before +{spec.at_s:g} s"
    return f"the workload ended before {spec.after_swapped_mib} MiB were swapped out"
