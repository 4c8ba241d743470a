"""Criteria as a campaign writes them: a name, a templated PromQL expression, a comparator,
a threshold and a severity. The expression is checked when the file is loaded: known
templates only, valid PromQL, and nothing that turns "no data" into a value that can pass.

Judging them (built-in set, evaluation in Prometheus) is the control plane's job
(``orchestrator.criteria``, ``orchestrator.evaluation``).
"""

from __future__ import annotations

import operator
import re
from collections.abc import Callable
from enum import StrEnum
from typing import Literal

import promql_parser
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

MIB = 2**20
Op = Literal[">", ">=", "<", "<=", "==", "!="]
# A fault's phases: from the run's start to the fault's, the fault itself, from its end to
# the run's end. A criterion with a phase is judged over that window alone.
Phase = Literal["before", "during", "after"]
OPERATORS: dict[str, Callable[[float, float], bool]] = {
    ">": operator.gt,
    ">=": operator.ge,
    "<": operator.lt,
    "<=": operator.le,
    "==": operator.eq,
    "!=": operator.ne,
}
TEMPLATE = re.compile(r"\{\{\s*([a-z_]+)\s*\}\}")
TEMPLATE_VARS = ("window", "window_s", "node", "lab", "kernel", "scenario", "sel")
# "no data" must stay "no data": these turn an empty vector into a number that can pass.
_VACUOUS = re.compile(r"\bor\s+(on\s*\([^)]*\)\s*)?vector\s*\(|\babsent(_over_time)?\s*\(")
SAMPLE_RENDER = {
    "window": "60s",
    "window_s": "60",
    "node": "node1",
    "lab": "lab",
    "kernel": "6.1.0-1-amd64",
    "scenario": "pressure",
    "sel": 'lab="lab",node="node1"',
}


# The always-on criteria (defined in orchestrator.criteria): a campaign's own criteria may
# not take these names.
BUILTIN_CRITERION_NAMES = (
    "no_hung_task",
    "no_oops_or_panic",
    "no_swap_write_error",
    "no_oom_kill",
    "swap_out_used",
    "swap_in_used",
    "node_alive",
    "workload_done",
)


class Severity(StrEnum):
    """warning: reported only; error: fails the run; critical: also stops the campaign."""

    WARNING = "warning"
    ERROR = "error"
    CRITICAL = "critical"


class Outcome(StrEnum):
    """Outcome of one check or criterion."""

    PASS = "pass"
    FAIL = "fail"
    INVALID = "invalid"


class CriterionSpec(BaseModel):
    """A criterion as a campaign file writes it."""

    # strict: YAML's guesses never change a meaning (`value: true` is not 1).
    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)

    name: str = Field(pattern=r"^[a-z][a-z0-9_]{0,62}$")
    expr: str = Field(min_length=1, max_length=4000)
    op: Op
    value: float
    severity: Severity = Field(default=Severity.ERROR, strict=False)
    description: str = ""
    # Judge over one phase of the campaign's N-th fault (1-based) instead of the whole run.
    fault: int | None = Field(default=None, ge=1, le=20)
    phase: Phase | None = None

    @model_validator(mode="after")
    def _phase_of_a_fault(self) -> CriterionSpec:
        if (self.fault is None) != (self.phase is None):
            raise ValueError("a criterion's phase belongs to a fault: give both 'fault' (its number) and 'phase'")
        return self

    @field_validator("expr")
    @classmethod
    def _valid_promql(cls, expr: str) -> str:
        check_expr(expr)
        return expr


def check_expr(expr: str) -> None:
    """Raise ValueError unless ``expr`` renders to valid PromQL that cannot pass on no data."""
    unknown = sorted({m.group(1) for m in TEMPLATE.finditer(expr)} - set(TEMPLATE_VARS))
    if unknown:
        raise ValueError(f"unknown template variable(s) {', '.join(unknown)}; known: {', '.join(TEMPLATE_VARS)}")
    if _VACUOUS.search(expr):
        raise ValueError(
            "'or vector(...)' / absent() turn 'no data' into a value that can pass; leave no data as no data"
        )
    try:
        promql_parser.parse(render(expr, SAMPLE_RENDER))
    except ValueError as err:
        raise ValueError(f"not valid PromQL: {err}") from None


def render(expr: str, variables: dict[str, str]) -> str:
    """Fill ``{{ name }}`` placeholders."""
    return TEMPLATE.sub(lambda m: variables[m.group(1)], expr)
