"""Criteria: campaign-file validation (file, line, field), templating, and the rules that
keep "no data" from ever reading as a pass."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from model.campaign import load_campaign, load_criteria
from model.criteria import BUILTIN_CRITERION_NAMES, SAMPLE_RENDER, check_expr
from model.yamlpos import SpecError
from orchestrator.criteria import Criterion, Outcome, Severity, builtin_criteria, judge_values, render
from tests.campaign_issues import CAMPAIGN_HEAD, first_issue

BASE = CAMPAIGN_HEAD + "criteria:\n"


def issue_of(tmp_path: Path, criteria_yaml: str) -> tuple[int | None, str, str]:
    return first_issue(tmp_path, BASE + criteria_yaml)


def test_a_campaign_with_criteria_loads(tmp_path: Path) -> None:
    path = tmp_path / "campaign.yaml"
    path.write_text(
        BASE
        + "  - name: swap_out_rate\n"
        + '    expr: "rate(swaplab_node_swap_out_bytes_total{ {{ sel }} }[{{ window }}])"\n'
        + "    op: '>'\n    value: 1048576\n    severity: warning\n"
    )
    spec = load_campaign(path).spec.criteria[0]
    assert spec.severity is Severity.WARNING and spec.value == 1048576


@pytest.mark.parametrize(
    ("criterion", "field", "message"),
    [
        ('{name: a, expr: "rate(x[5m)", op: ">", value: 1}', "criteria[0].expr", "not valid PromQL"),
        ('{name: a, expr: "rate(x[5m]) or vector(0)", op: ">", value: 1}', "criteria[0].expr", "no data"),
        ('{name: a, expr: "absent(x)", op: "==", value: 0}', "criteria[0].expr", "no data"),
        ('{name: a, expr: "x{ {{ run_id }} }", op: ">", value: 1}', "criteria[0].expr", "unknown template"),
        ('{name: a, expr: "x", op: "=>", value: 1}', "criteria[0].op", "'>'"),
        ('{name: a, expr: "x", op: ">", value: 1, severity: fatal}', "criteria[0].severity", "critical"),
        ('{name: a, expr: "x", op: ">", value: 1, colour: red}', "criteria[0].colour", "unknown key"),
        ('{name: no_oom_kill, expr: "x", op: ">", value: 1}', "criteria[0].name", "built-in"),
    ],
)
def test_bad_criteria_name_file_line_and_field(tmp_path: Path, criterion: str, field: str, message: str) -> None:
    line, got_field, got_message = issue_of(tmp_path, f"  - {criterion}\n")
    assert (line, got_field) == (8, field)
    assert message in got_message


def test_two_criteria_with_one_name_are_refused(tmp_path: Path) -> None:
    twice = '  - {name: a, expr: "x", op: ">", value: 1}\n  - {name: a, expr: "y", op: ">", value: 1}\n'
    line, field, message = issue_of(tmp_path, twice)
    assert (line, field) == (9, "criteria[1].name") and "another criterion" in message


def test_a_criteria_file_may_be_a_campaign_or_just_the_list(tmp_path: Path) -> None:
    only = tmp_path / "only.yaml"
    only.write_text('criteria:\n  - {name: a, expr: "x{ {{ sel }} }", op: ">", value: 1}\n')
    assert [c.name for c in load_criteria(only)] == ["a"]
    empty = tmp_path / "empty.yaml"
    empty.write_text("name: nothing\n")
    with pytest.raises(SpecError, match="criteria"):
        load_criteria(empty)


def test_templates_fill_the_selector_window_and_node() -> None:
    expr = 'increase(m{ {{ sel }}, kind="x"}[{{ window }}]) / {{ window_s }}'
    assert render(expr, SAMPLE_RENDER) == 'increase(m{ lab="lab",node="node1", kind="x"}[60s]) / 60'


def test_every_builtin_renders_to_valid_promql_without_vacuous_fallbacks() -> None:
    for criterion in builtin_criteria(128):
        check_expr(criterion.expr)
        assert "vector(" not in criterion.expr and criterion.builtin


def crit(op: str, value: float, unmet: Outcome = Outcome.FAIL) -> Criterion:
    return Criterion("c", "q", op, value, Severity.ERROR, "", unmet=unmet)


def test_no_data_and_nan_are_invalid_never_pass() -> None:
    assert judge_values(crit("==", 0), "q", []).outcome is Outcome.INVALID
    assert judge_values(crit("==", 0), "q", [math.nan]).outcome is Outcome.INVALID


def test_every_series_must_meet_the_threshold_and_the_failing_value_is_reported() -> None:
    judged = judge_values(crit("<", 10), "q", [1.0, 12.5, 3.0])
    assert judged.outcome is Outcome.FAIL and judged.value == 12.5 and "12.5 < 10 is false" in judged.detail
    assert judge_values(crit("<", 10), "q", [1.0, 3.0]).outcome is Outcome.PASS


def test_an_unmet_usage_criterion_is_invalid_not_failed() -> None:
    assert judge_values(crit(">=", 100, Outcome.INVALID), "q", [5.0]).outcome is Outcome.INVALID


def test_the_model_knows_every_built_in_criterion_by_name() -> None:
    # Campaign validation refuses user criteria with these names without importing the judge.
    assert tuple(c.name for c in builtin_criteria(0)) == BUILTIN_CRITERION_NAMES
