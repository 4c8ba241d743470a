"""A node's sampler may fall silent while a fault holds its NFS path (its own allocations
reclaim through the stalled server): ``node_alive`` counts only the silence outside each
fault's window and grace — a silence that outlives them still fails, and a node no fault
disturbed is judged over the whole run as before."""

from __future__ import annotations

from model.faults import FaultRecord
from model.runspec import NodeResult
from orchestrator.criteria import Outcome, builtin_criteria
from orchestrator.evaluation import RunWindow, evaluate_node, run_faults, silence_outside

LABELS = {"lab": "local", "node": "node1", "kernel": "6.1.0-1-amd64", "scenario": "pressure"}
STALL = (1010.0, 1025.0 + 30.0)  # a 15 s stall from 1010 and its 30 s grace


def ages(silent_from: float, silent_to: float, start: float = 1000.0, end: float = 1100.0) -> list[tuple[float, float]]:
    """The sampler's age at every scrape: it ticks each second except from silent_from to silent_to."""
    points, last = [], start
    for second in range(int(start), int(end) + 1):
        at = float(second)
        if not silent_from <= at < silent_to:
            last = at
        points.append((at, at - last))
    return points


def test_a_silence_inside_a_fault_window_does_not_count() -> None:
    assert silence_outside(ages(1010, 1025), [STALL]) == 0.0


def test_a_silence_that_outlives_the_window_counts_from_its_end() -> None:
    assert silence_outside(ages(1010, 1070), [STALL]) == 1069 - 1055


def test_a_silence_outside_every_window_counts_whole() -> None:
    assert silence_outside(ages(1060, 1075), [STALL]) == 15.0  # last tick at 1059
    assert silence_outside(ages(1010, 1025), []) == 15.0


class RangePrometheus:
    """Answers a range query with the given points, an instant query with their max age."""

    def __init__(self, points: list[tuple[float, float]]) -> None:
        self.points = points
        self.ranges: list[str] = []

    def query(self, expr: str, at: float) -> list[tuple[dict[str, str], float]]:
        return [({}, max(age for _t, age in self.points))]

    def query_range(
        self, expr: str, start: float, end: float, step_s: float
    ) -> list[tuple[dict[str, str], list[tuple[float, float]]]]:
        self.ranges.append(expr)
        return [({}, [p for p in self.points if start <= p[0] <= end])]


def node_alive(points: list[tuple[float, float]], faults: list[FaultRecord]) -> tuple[Outcome, str, list[str]]:
    api = RangePrometheus(points)
    result = NodeResult(run_id="r001", node="node1", metrics_labels=LABELS, metrics_from=1000.0, metrics_to=1100.0)
    [criterion] = [c for c in builtin_criteria(64) if c.name == "node_alive"]
    window = RunWindow(1000.0, 1100.0)
    [outcome] = evaluate_node(
        [criterion], api, result, window, run_faults([result.model_copy(update={"faults": faults})])
    )  # type: ignore[arg-type]
    return outcome.outcome, outcome.detail, api.ranges


def stall(node: str = "node1", target: str = "server") -> FaultRecord:
    return FaultRecord(
        index=0, kind="server-stall", target=target, node=node, planned="p", started_at=1010.0, ended_at=1025.0
    )


def test_node_alive_passes_a_node_silent_for_a_whole_server_stall() -> None:
    outcome, detail, ranges = node_alive(ages(1010, 1025), [stall()])
    assert outcome is Outcome.PASS, detail
    assert ranges == [
        'swaplab_node_sample_age_seconds{lab="local",node="node1",kernel="6.1.0-1-amd64",scenario="pressure"}'
    ]
    assert "outside 1 fault window(s)" in detail


def test_node_alive_fails_a_node_that_stayed_silent_past_the_grace() -> None:
    outcome, detail, _ = node_alive(ages(1010, 1080), [stall()])
    assert outcome is Outcome.FAIL and detail.startswith("24 < 10 is false"), detail


def test_another_nodes_link_fault_excuses_nothing_here() -> None:
    outcome, detail, ranges = node_alive(ages(1010, 1025), [stall(node="node2", target="node2")])
    assert (outcome, ranges) == (Outcome.FAIL, []), detail
