"""Label values reach PromQL as literals only: a node's ``uname -r`` (its kernel label) and
the other template values are escaped, so a hostile one selects exactly itself and adds
nothing to the query. Checked on the queries the evaluator really sends, parsed by a PromQL
parser."""

from __future__ import annotations

from typing import Any

import promql_parser
import pytest
from hypothesis import given
from hypothesis import strategies as st

from model.runspec import NodeResult
from orchestrator.criteria import Criterion, Outcome, Severity, label_value
from orchestrator.evaluation import RunWindow, evaluate_node, selector

HOSTILE = '6.1"} or vector(1) or foo{a="'
LABELS = {"lab": "local", "node": "node1", "kernel": HOSTILE, "scenario": "pressure"}


class Recorder:
    """A Prometheus that answers 1 to every query and keeps what it was asked."""

    def __init__(self) -> None:
        self.queries: list[str] = []

    def query(self, expr: str, at: float) -> list[tuple[dict[str, str], float]]:
        self.queries.append(expr)
        return [({}, 1.0)]


def _sent(expr: str, labels: dict[str, str]) -> str:
    api = Recorder()
    result = NodeResult(run_id="r001", node="node1", metrics_labels=labels, metrics_from=0.0, metrics_to=60.0)
    criterion = Criterion("c", expr, "==", 0.0, Severity.ERROR, "")
    [outcome] = evaluate_node([criterion], api, result, RunWindow(0.0, 60.0))  # type: ignore[arg-type]
    assert outcome.outcome is Outcome.FAIL  # judged on what the one selector returned
    [query] = api.queries
    return query


def _matchers(query: str) -> dict[str, tuple[str, str]]:
    """name -> (op, value) of the one selector of ``max_over_time(<selector>[w])``; fails on anything else."""
    call: Any = promql_parser.parse(query)
    assert isinstance(call, promql_parser.Call) and len(call.args) == 1, query
    matrix = call.args[0]
    assert isinstance(matrix, promql_parser.MatrixSelector), query
    found = matrix.vector_selector.matchers
    assert not found.or_matchers
    return {m.name: (str(m.op), m.value) for m in found.matchers}


@pytest.mark.parametrize(
    "expr",
    [
        'max_over_time(swaplab_node_oom_kills_total{kernel="{{ kernel }}",node="{{ node }}"}[{{ window }}])',
        "max_over_time(swaplab_node_oom_kills_total{kernel='{{ kernel }}',node='{{ node }}'}[{{ window }}])",
    ],
)
def test_a_hostile_kernel_release_selects_only_itself(expr: str) -> None:
    query = _sent(expr, LABELS)
    matchers = _matchers(query)
    assert matchers == {"kernel": ("MatchOp.Equal", HOSTILE), "node": ("MatchOp.Equal", "node1")}


def test_the_session_selector_pins_every_label_to_its_literal_value() -> None:
    labels = {**LABELS, "node": 'n"\\', "scenario": "a\nb'c"}
    query = _sent("max_over_time(swaplab_node_oom_kills_total{ {{ sel }} }[{{ window }}])", labels)
    assert _matchers(query) == {name: ("MatchOp.Equal", value) for name, value in labels.items()}
    assert selector(NodeResult(run_id="r001", node="n", metrics_labels=labels)) in query


def test_a_plain_release_is_written_as_it_is() -> None:
    assert label_value("6.1.0-57-amd64") == "6.1.0-57-amd64"
    assert label_value("6.12.0-rc3+") == "6.12.0-rc3+"


@given(st.text(alphabet=st.characters(codec="utf-8"), max_size=60), st.sampled_from(['"', "'"]))
def test_any_value_means_itself_in_either_quote(value: str, quote: str) -> None:
    query = f"max_over_time(x{{kernel={quote}{label_value(value)}{quote}}}[1m])"
    assert _matchers(query) == {"kernel": ("MatchOp.Equal", value)}
