"""Evaluating a run: every criterion, on every node, over the run's window, in Prometheus.

The window runs from the birth of the nodes' series (at zero, before boot) to the scrape
that read their final values; queries are instant queries at its end with
``[{{ window }}]`` covering it to the millisecond: from the birth on, so the zero every
series is born with is inside (whole seconds rounded down lost it, and an OOM kill in the
first second read as an increase of 0), and nothing before the birth, so it never reaches
back into the previous session of the same node.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

from model.faults import FaultRecord, faults_of
from model.runspec import NodeResult
from orchestrator.criteria import (
    Criterion,
    CriterionResult,
    builtin_criteria,
    invalid,
    judge_values,
    label_value,
    render,
)
from orchestrator.figure_check import figure_entries, prometheus_figures
from orchestrator.prometheus import PrometheusApi, PrometheusError, PrometheusUnreachable

# The scrape interval: a silence criterion reads its gauge at every scrape.
SILENCE_STEP_S = 1.0


@dataclass(frozen=True)
class RunWindow:
    """The host-time window (epoch seconds) a run's criteria are judged over."""

    start: float
    end: float

    @property
    def seconds(self) -> int:
        """Whole seconds covered, counted back from the end."""
        return max(1, math.floor(self.end - self.start))

    @property
    def range(self) -> str:
        """The window as a PromQL range, to the millisecond."""
        return f"{max(1, math.ceil((self.end - self.start) * 1000))}ms"

    def to_json(self) -> dict[str, float]:
        """JSON-able form for result.json."""
        return {"start": self.start, "end": self.end, "seconds": self.seconds}


def run_window(results: list[NodeResult]) -> RunWindow | None:
    """From the earliest series birth to the latest final scrape; None if no node exported."""
    starts = [r.metrics_from for r in results if r.metrics_from is not None]
    ends = [r.metrics_to for r in results if r.metrics_to is not None]
    if not starts or not ends:
        return None
    return RunWindow(min(starts), max(ends))


def run_criteria(planned_overcommit_mib: int, user: list[Criterion]) -> list[Criterion]:
    """The built-in set, then the campaign's own."""
    return builtin_criteria(planned_overcommit_mib) + user


def judged(result: NodeResult) -> bool:
    """Criteria are judged for nodes that ran (or failed for the kernel), not for lab faults."""
    return result.failure is None or result.failure.cause == "kernel"


def phase_window(criterion: Criterion, window: RunWindow, faults: dict[int, FaultRecord]) -> RunWindow | str:
    """The window ``criterion`` is judged over: the run's, or a phase of one of its faults
    (before: from the run's start to the fault's; during; after: from its end to the
    run's); why it has none otherwise."""
    if criterion.fault is None or criterion.phase is None:
        return window
    fault = faults.get(criterion.fault)
    if fault is None or fault.started_at is None or fault.ended_at is None:
        missed = f": {fault.missed}" if fault is not None and fault.missed else ""
        return f"fault {criterion.fault} did not happen in this run{missed}"
    start, end = {
        "before": (window.start, fault.started_at),
        "during": (fault.started_at, fault.ended_at),
        "after": (fault.ended_at, window.end),
    }[criterion.phase]
    if end <= start:
        return f"{criterion.over()} is empty (from {start:.3f} to {end:.3f})"
    return RunWindow(start, end)


def run_faults(results: list[NodeResult]) -> dict[int, FaultRecord]:
    """The run's faults by number (1-based) as they happened: a server's fault as the node
    session that injected it recorded it (the others measured it too), a link's by each of
    its nodes (the first that began counts)."""
    faults: dict[int, FaultRecord] = {}

    def rank(fault: FaultRecord) -> tuple[bool, bool]:
        return fault.started_at is not None, not fault.measured_on

    for result in results:
        for fault in result.faults:
            known = faults.get(fault.index + 1)
            if known is None or rank(fault) > rank(known):
                faults[fault.index + 1] = fault
    return faults


def node_faults(result: NodeResult, faults: dict[int, FaultRecord]) -> dict[int, FaultRecord]:
    """The run's faults by number as ``result``'s node saw them: its own records (its
    link's, or a server's measured on it) over the run's."""
    own = {f.index + 1: f for f in faults_of(result.node, list(result.faults)) if f.started_at is not None}
    return {**faults, **own}


def evaluate_node(
    criteria: list[Criterion],
    api: PrometheusApi,
    result: NodeResult,
    window: RunWindow | None,
    faults: dict[int, FaultRecord] | None = None,
) -> list[CriterionResult]:
    """Every criterion for one node; no window or no labels means every one is invalid."""
    # A fault on this node's own link is judged by its own record (each node's begins apart).
    faults = node_faults(result, faults or {})
    outcomes = []
    unreachable = ""
    for criterion in criteria:
        over = phase_window(criterion, window, faults) if window is not None else None
        variables = _variables(result, over if isinstance(over, RunWindow) else window)
        query = render(criterion.expr, variables) if variables else criterion.expr
        if window is None or not variables:
            outcomes.append(invalid(criterion, query, "the node exported no metrics in this run"))
            continue
        if isinstance(over, str):
            outcomes.append(invalid(criterion, query, over))
            continue
        if unreachable:
            outcomes.append(invalid(criterion, query, unreachable))  # not 8 more timeouts
            continue
        assert over is not None
        windows = _disturbed(result, faults) if criterion.silence and criterion.phase is None else []
        try:
            if windows:
                assert criterion.silence is not None
                outcomes.append(_judge_silence(criterion, api, render(criterion.silence, variables), over, windows))
                continue
            values = [value for _labels, value in api.query(query, over.end)]
        except PrometheusError as err:
            unreachable = str(err) if isinstance(err, PrometheusUnreachable) else ""
            outcomes.append(invalid(criterion, query, str(err)))
            continue
        outcomes.append(judge_values(criterion, query, values))
    return outcomes


def _disturbed(result: NodeResult, faults: dict[int, FaultRecord]) -> list[tuple[float, float]]:
    """The windows (start, end + grace) of the faults that disturbed ``result``'s node."""
    windows = [fault.window() for fault in faults.values() if fault.affects(result.node)]
    return sorted(window for window in windows if window is not None)


def _judge_silence(
    criterion: Criterion, api: PrometheusApi, gauge: str, window: RunWindow, faults: list[tuple[float, float]]
) -> CriterionResult:
    """A silence criterion on a node faults disturbed: its sampler's own allocations may
    reclaim through the disturbed NFS path, so it may fall silent for a whole fault. Only
    the silence outside every fault's window and grace counts."""
    series = api.query_range(gauge, window.start, window.end, SILENCE_STEP_S)
    if not series:
        return invalid(criterion, gauge, "no data in the run's window")
    longest = max(silence_outside(points, faults) for _labels, points in series)
    result = judge_values(criterion, gauge, [longest])
    return replace(
        result, detail=f"{result.detail}: the longest silence outside {len(faults)} fault window(s) and grace"
    )


def silence_outside(points: list[tuple[float, float]], windows: list[tuple[float, float]]) -> float:
    """The longest silence outside ``windows``: at each (time, age) point outside them, its
    age — counted from no earlier than the end of the last window before it."""
    longest = 0.0
    for at, age in points:
        if math.isnan(age) or any(start <= at <= end for start, end in windows):
            continue
        ended = [end for _start, end in windows if end < at]
        longest = max(longest, min(age, at - max(ended)) if ended else age)
    return longest


def _variables(result: NodeResult, window: RunWindow | None) -> dict[str, str]:
    labels = result.metrics_labels
    if window is None or not labels:
        return {}
    return {
        "window": window.range,
        "window_s": str(window.seconds),
        # Label values, escaped for the string literals they are written into.
        "node": label_value(labels["node"]),
        "lab": label_value(labels["lab"]),
        "kernel": label_value(labels["kernel"]),
        "scenario": label_value(labels["scenario"]),
        "sel": selector(result),
    }


def selector(result: NodeResult) -> str:
    """The label matchers of exactly this node session's series ("" if it exported none).

    Every label the session's series carry is pinned, not only lab and node: a recorded
    rate of the previous run on the same node (another kernel) can still be in range when
    this run's window opens, and must not count as a series of this run.
    """
    labels = result.metrics_labels
    if not all(labels.get(name) for name in ("lab", "node", "kernel", "scenario")):
        return ""
    return ",".join(f'{name}="{label_value(labels[name])}"' for name in ("lab", "node", "kernel", "scenario"))


@dataclass(frozen=True)
class RunEvaluation:
    """What Prometheus said of a run: its window, each judged node's criteria, each node's figures."""

    window: RunWindow | None
    criteria: dict[str, list[CriterionResult]]
    figures: dict[str, dict[str, dict[str, Any]]]


def evaluate_run(
    criteria: Callable[[NodeResult], list[Criterion]], api: PrometheusApi, results: list[NodeResult]
) -> RunEvaluation:
    """The run's window, each judged node's results of ``criteria(node result)``, and every
    node's figures with Prometheus' values for the same workload window."""
    window = run_window(results)
    faults = run_faults(results)
    judged_nodes = {r.node: evaluate_node(criteria(r), api, r, window, faults) for r in results if judged(r)}
    figures = {}
    for result in results:
        outcomes = judged_nodes.get(result.node, [])
        answered = any(outcome.value is not None for outcome in outcomes)  # Prometheus was there
        from_prometheus = prometheus_figures(api, result, selector(result)) if answered else {}
        figures[result.node] = figure_entries(result, from_prometheus)
    return RunEvaluation(window, judged_nodes, figures)
