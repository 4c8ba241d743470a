"""Criteria: PromQL expressions judged over a run's window, kube-burner style, minus its
vacuous passes.

A criterion is ``{name, expr, op, value, severity, description}``; ``expr`` is templated
with the run's window and node (``{{ window }}``, ``{{ node }}``, ``{{ sel }}`` ...). The
built-in set is always on. Outcomes: *pass*, *fail*, or *invalid* when the query returns
no data (an empty vector is never read as zero) — and an expression that would turn "no
data" into a number (``or vector(0)``) is refused when the campaign is loaded.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, replace

from model.criteria import MIB, OPERATORS, CriterionSpec, Outcome, Severity, render

__all__ = [
    "Criterion",
    "CriterionResult",
    "CriterionSpec",
    "Outcome",
    "Severity",
    "builtin_criteria",
    "label_value",
    "render",
]

# Characters a label value keeps as they are inside a PromQL string literal; every other
# one is written as a \u escape.
_PLAIN = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789._+~:-")


def label_value(value: str) -> str:
    """``value`` as the inside of a PromQL string literal that means exactly ``value``.

    Template values come from the nodes (an ssh node's ``uname -r`` is its kernel label):
    a quote in one must not end the string and let the rest choose the query. A \\u
    escape means the same character in a "..." and a '...' literal, so the value cannot
    end either; in a `...` raw literal it stays text and matches nothing. Used for every
    label value put into a query (the templates and ``{{ sel }}``).
    """
    return "".join(ch if ch in _PLAIN else _escaped(ch) for ch in value)


def _escaped(ch: str) -> str:
    code = ord(ch)
    return f"\\u{code:04x}" if code <= 0xFFFF else f"\\U{code:08x}"


@dataclass(frozen=True)
class Criterion:
    """A criterion ready to evaluate: a user's, or a built-in with its own rules."""

    name: str
    expr: str
    op: str
    value: float
    severity: Severity
    description: str
    builtin: bool = False
    # A built-in that measures whether the run exercised anything (swap really used)
    # makes the run invalid, not failed, when unmet.
    unmet: Outcome = Outcome.FAIL
    # Judged over one phase of the campaign's N-th fault (1-based), not the whole run.
    fault: int | None = None
    phase: str | None = None
    # The gauge (seconds since the node's last sign of life) a silence criterion reads:
    # on a node a fault disturbed, judged outside each fault's window and grace only.
    silence: str | None = None

    @classmethod
    def from_spec(cls, spec: CriterionSpec) -> Criterion:
        """A user criterion from the campaign file."""
        return cls(
            spec.name,
            spec.expr,
            spec.op,
            spec.value,
            spec.severity,
            spec.description,
            fault=spec.fault,
            phase=spec.phase,
        )

    def over(self) -> str:
        """The window it is judged over, for people: "the run's window", "during fault 1"."""
        return f"{self.phase} fault {self.fault}" if self.phase else "the run's window"


@dataclass(frozen=True)
class CriterionResult:
    """One criterion on one node: the query sent, the value read, the outcome."""

    name: str
    query: str
    op: str
    threshold: float
    value: float | None
    outcome: Outcome
    severity: Severity
    builtin: bool
    detail: str

    def to_json(self) -> dict[str, object]:
        """JSON-able form for result.json."""
        return {**asdict(self), "outcome": self.outcome.value, "severity": self.severity.value}

    @classmethod
    def from_json(cls, data: dict[str, object]) -> CriterionResult:
        """Back from result.json."""
        fields = dict(data)
        fields["outcome"] = Outcome(str(fields["outcome"]))
        fields["severity"] = Severity(str(fields["severity"]))
        return cls(**fields)  # type: ignore[arg-type]

    @property
    def counts(self) -> bool:
        """A failure of this criterion fails the run (warnings are reported only)."""
        return self.severity is not Severity.WARNING


_SEL = "{{{ sel }}}"
_SAMPLE_AGE = "swaplab_node_sample_age_seconds" + _SEL


def _console(kind_regex: str) -> str:
    # sum() over the kinds: still no data (invalid) when the node exported no series at all.
    return 'sum(increase(swaplab_node_console_events_total{{{ sel }},kind=~"' + kind_regex + '"}[{{ window }}]))'


def builtin_criteria(planned_overcommit_mib: int) -> list[Criterion]:
    """The always-on set: kernel health, swap really used, node alive, workload done."""
    moved = planned_overcommit_mib * MIB

    def builtin(
        name: str, expr: str, op: str, value: float, description: str, unmet: Outcome = Outcome.FAIL
    ) -> Criterion:
        return Criterion(name, expr, op, value, Severity.ERROR, description, builtin=True, unmet=unmet)

    return [
        builtin("no_hung_task", _console("hung_task"), "==", 0, "no 'task blocked for more than N seconds'"),
        builtin("no_oops_or_panic", _console("oops|panic"), "==", 0, "no oops, BUG or panic on the console"),
        builtin("no_swap_write_error", _console("swap_write_error"), "==", 0, "no swap write/read error"),
        builtin(
            "no_oom_kill",
            "increase(swaplab_node_oom_kills_total" + _SEL + "[{{ window }}])",
            "==",
            0,
            "vmstat oom_kill did not move",
        ),
        builtin(
            "swap_out_used",
            "increase(swaplab_node_swap_out_bytes_total" + _SEL + "[{{ window }}])",
            ">=",
            moved,
            f"at least the planned overcommit ({planned_overcommit_mib} MiB) swapped out",
            unmet=Outcome.INVALID,
        ),
        builtin(
            "swap_in_used",
            "increase(swaplab_node_swap_in_bytes_total" + _SEL + "[{{ window }}])",
            ">=",
            moved,
            f"at least the planned overcommit ({planned_overcommit_mib} MiB) swapped back in",
            unmet=Outcome.INVALID,
        ),
        replace(
            builtin(
                "node_alive",
                "max_over_time(" + _SAMPLE_AGE + "[{{ window }}])",
                "<",
                10,
                "the node's sampler never went silent for 10 s (outside a fault's window and grace)",
            ),
            silence=_SAMPLE_AGE,
        ),
        builtin(
            "workload_done",
            "max_over_time(swaplab_node_workload_done" + _SEL + "[{{ window }}])",
            "==",
            1,
            "the workload finished and verified every page",
        ),
    ]


def judge_values(criterion: Criterion, query: str, values: list[float]) -> CriterionResult:
    """Outcome of ``criterion`` from the values its query returned (one per series)."""
    finite = [v for v in values if not math.isnan(v)]
    if not finite:
        detail = f"no data {_over(criterion)}" if not values else "the query returned NaN only"
        return _result(criterion, query, None, Outcome.INVALID, detail)
    compare = OPERATORS[criterion.op]
    failing = [v for v in finite if not compare(v, criterion.value)]
    value = failing[0] if failing else finite[0]
    shown = f"{_fmt(value)} {criterion.op} {_fmt(criterion.value)}"
    if criterion.phase:
        shown += f" ({criterion.over()})"
    if not failing:
        return _result(criterion, query, value, Outcome.PASS, shown)
    return _result(criterion, query, value, criterion.unmet, f"{shown} is false")


def _over(criterion: Criterion) -> str:
    return f"{criterion.over()}" if criterion.phase else "in the run's window"


def invalid(criterion: Criterion, query: str, reason: str) -> CriterionResult:
    """A criterion that could not be evaluated at all (Prometheus down, query error)."""
    return _result(criterion, query, None, Outcome.INVALID, reason)


def _result(criterion: Criterion, query: str, value: float | None, outcome: Outcome, detail: str) -> CriterionResult:
    return CriterionResult(
        criterion.name,
        query,
        criterion.op,
        criterion.value,
        value,
        outcome,
        criterion.severity,
        criterion.builtin,
        detail,
    )


def _fmt(value: float) -> str:
    if value == int(value) and abs(value) < 1e15:
        return str(int(value))
    return f"{value:.4g}"
