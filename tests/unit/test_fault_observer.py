"""A server's fault disturbs every node of the run, but one node session injects it: it
tells the others when it began and ended (through the run's barrier), and each of them
keeps its watchdog quiet for it and measures it on its own samples — its own swap-out
before the fault and its own recovery — so each node is judged by what it itself did."""

from __future__ import annotations

import time
from types import SimpleNamespace
from typing import Any

import pytest
from pydantic import ValidationError

from model.faults import FaultRecord, FaultSpec, FaultTimes, faults_of
from model.runspec import NodeResult
from orchestrator.blame import fault_outcome
from orchestrator.criteria import Outcome
from orchestrator.evaluation import run_faults
from workers.pipeline.fault_steps import FaultObserver, FaultTeller
from workers.samples import PAGE_SIZE

STALL = FaultSpec(kind="server-stall", at_s=10.0, for_s=5.0, grace_s=30.0)
MIB_PAGES = 2**20 // PAGE_SIZE


def record(node: str, measured_on: str = "", **overrides: Any) -> FaultRecord:
    base: dict[str, Any] = {
        "index": 0,
        "kind": "server-stall",
        "target": "server",
        "node": node,
        "measured_on": measured_on,
        "planned": STALL.describe(),
        "started_at": 1000.0,
        "ended_at": 1005.0,
        "swap_out_mibps_before": 12.0,
        "recovery_s": 1.5,
    }
    return FaultRecord(**{**base, **overrides})


def test_each_node_is_judged_by_the_record_measured_on_it() -> None:
    injected = record("node1")
    seen_by_node2 = record("node1", measured_on="node2", recovery_s=4.0)
    records = [injected, seen_by_node2]
    assert faults_of("node1", records) == [injected]
    assert faults_of("node2", records) == [seen_by_node2]
    assert faults_of("node3", records) == [injected]  # it measured nothing: the injector's record
    untold = record("node1", measured_on="node2", started_at=None, ended_at=None, missed="never told")
    assert faults_of("node2", [untold, injected]) == [injected]  # Redis was out when it began
    results = [
        NodeResult(run_id="r001", node=n, faults=f) for n, f in (("node2", [seen_by_node2]), ("node1", [injected]))
    ]
    assert run_faults(results) == {1: injected}  # the run's fault is the injecting node's


def test_a_fault_measured_here_says_nothing_of_another_node_and_a_miss_here_is_no_invalid_run() -> None:
    outcome, detail = fault_outcome(record("node1", measured_on="node2", recovery_s=4.0), "node2")
    assert outcome is Outcome.PASS and detail.endswith("recovered 4.0 s after its end"), detail
    outcome, detail = fault_outcome(record("node1", measured_on="node2", swap_out_mibps_before=0.0), "node2")
    assert outcome is Outcome.PASS and "not under way on this node" in detail
    # The injecting node's own miss still makes the run prove nothing.
    assert fault_outcome(record("node1", swap_out_mibps_before=0.0), "node1")[0] is Outcome.INVALID


class Board:
    """The run's barrier as far as faults go."""

    def __init__(self) -> None:
        self.told: dict[int, FaultTimes] = {}

    def fault_times(self) -> dict[int, FaultTimes]:
        return dict(self.told)


def ticks(start: float, rates: list[float]) -> list[dict[str, Any]]:
    """One sample a second from ``start``, swapping out ``rates[i]`` MiB in second i."""
    out, pages = [], 0
    for second, rate in enumerate(rates):
        pages += int(rate * MIB_PAGES)
        out.append({"host_time_ns": int((start + second) * 1e9), "pswpout": pages})
    return out


def test_an_observer_keeps_the_watchdog_quiet_and_measures_the_fault_on_its_own_samples() -> None:
    board = Board()
    ctx = SimpleNamespace(name="node2", barrier=board, observed_quiet_until=0.0)
    observer = FaultObserver(ctx, [(0, STALL)])  # type: ignore[arg-type]
    observer.start()
    now = time.time()
    board.told[0] = FaultTimes(node="node1", started_at=now)
    deadline = time.monotonic() + 5
    while ctx.observed_quiet_until != float("inf"):
        assert time.monotonic() < deadline, "the observer never went quiet for the active fault"
        time.sleep(0.05)
    board.told[0] = FaultTimes(node="node1", started_at=now, ended_at=now + 5)
    while ctx.observed_quiet_until == float("inf"):
        assert time.monotonic() < deadline + 5, "the watchdog stayed quiet past the fault's end"
        time.sleep(0.05)
    # 4 MiB/s for 10 s, nothing during the 5 s stall, 3 MiB/s after it (back at half at once).
    samples = ticks(now - 10, [4.0] * 11 + [0.0] * 5 + [3.0] * 5)
    [seen] = observer.stop(samples)
    assert (seen.node, seen.measured_on, seen.started_at, seen.ended_at) == ("node1", "node2", now, now + 5)
    assert seen.swap_out_mibps_before == pytest.approx(4.0, rel=0.05)
    assert seen.recovery_s is not None and seen.recovery_s <= 1.5


def test_a_fault_the_injecting_node_never_told_of_is_missed_here() -> None:
    ctx = SimpleNamespace(name="node2", barrier=Board(), observed_quiet_until=0.0)
    observer = FaultObserver(ctx, [(0, STALL)])  # type: ignore[arg-type]
    observer.start()
    [seen] = observer.stop([])
    assert seen.started_at is None and "never told" in seen.missed and seen.measured_on == "node2"


@pytest.mark.parametrize(
    "told",
    [
        '{"node": "node1", "started_at": "soon"}',
        '{"node": "node1", "started_at": -5}',
        '{"node": "node1; rm -rf /", "started_at": 1}',
        '{"node": "node1", "started_at": 1, "extra": 1}',
    ],
)
def test_what_another_worker_told_is_checked(told: str) -> None:
    with pytest.raises(ValidationError):
        FaultTimes.model_validate_json(told)


def test_whole_seconds_read_as_times() -> None:
    assert FaultTimes.model_validate_json('{"node": "node1", "started_at": 1700000000}').started_at == 1700000000.0


class Flaky:
    """A barrier whose Redis is away for the first tries."""

    def __init__(self, failures: int) -> None:
        self.failures = failures
        self.told: list[tuple[int, FaultTimes]] = []

    def note_fault(self, index: int, times: FaultTimes) -> bool:
        if self.failures > 0:
            self.failures -= 1
            return False
        self.told.append((index, times))
        return True


def test_the_news_of_a_fault_is_retried_beside_the_injector_and_told_in_order() -> None:
    barrier = Flaky(failures=2)
    teller = FaultTeller(barrier, "node1")  # type: ignore[arg-type]
    began = time.monotonic()
    teller.tell(0, FaultTimes(node="node1", started_at=1000.0))
    teller.tell(0, FaultTimes(node="node1", started_at=1000.0, ended_at=1005.0))
    assert time.monotonic() - began < 0.1  # telling never blocks the injector
    teller.close()
    assert barrier.told == [
        (0, FaultTimes(node="node1", started_at=1000.0)),
        (0, FaultTimes(node="node1", started_at=1000.0, ended_at=1005.0)),
    ]
