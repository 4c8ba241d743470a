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
from dataclasses import dataclass
from typing import Any

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


def evaluate_node(
    criteria: list[Criterion], api: PrometheusApi, result: NodeResult, window: RunWindow | None
) -> list[CriterionResult]:
    """Every criterion for one node; no window or no labels means every one is invalid."""
    variables = _variables(result, window)
    outcomes = []
    unreachable = ""
    for criterion in criteria:
        query = render(criterion.expr, variables) if variables else criterion.expr
        if window is None or not variables:
            outcomes.append(invalid(criterion, query, "the node exported no metrics in this run"))
            continue
        if unreachable:
            outcomes.append(invalid(criterion, query, unreachable))  # not 8 more timeouts
            continue
        try:
            values = [value for _labels, value in api.query(query, window.end)]
        except PrometheusError as err:
            unreachable = str(err) if isinstance(err, PrometheusUnreachable) else ""
            outcomes.append(invalid(criterion, query, str(err)))
            continue
        outcomes.append(judge_values(criterion, query, values))
    return outcomes


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
    judged_nodes = {r.node: evaluate_node(criteria(r), api, r, window) for r in results if judged(r)}
    figures = {}
    for result in results:
        outcomes = judged_nodes.get(result.node, [])
        answered = any(outcome.value is not None for outcome in outcomes)  # Prometheus was there
        from_prometheus = prometheus_figures(api, result, selector(result)) if answered else {}
        figures[result.node] = figure_entries(result, from_prometheus)
    return RunEvaluation(window, judged_nodes, figures)
