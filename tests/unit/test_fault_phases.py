"""Criteria that address a fault's phases: validated against the campaign's faults (file,
line, field), and judged over the phase's own window — before the fault, during it, after
it — with the query sent at the phase's end; a fault that did not happen makes them invalid."""

from __future__ import annotations

from pathlib import Path

import pytest

from model.campaign import load_campaign
from model.faults import FaultRecord
from model.runspec import NodeResult
from orchestrator.criteria import Criterion, Outcome, Severity
from orchestrator.evaluation import RunWindow, evaluate_node, run_faults
from tests.campaign_issues import CAMPAIGN_HEAD, first_issue

CAMPAIGN = CAMPAIGN_HEAD + "faults:\n  - {kind: server-stall, at_s: 10, for_s: 5}\ncriteria:\n"
LABELS = {"lab": "local", "node": "node1", "kernel": "6.1.0-1-amd64", "scenario": "pressure"}


class Recorder:
    """A Prometheus that answers 0 to every query and keeps what it was asked, and when."""

    def __init__(self) -> None:
        self.asked: list[tuple[str, float]] = []

    def query(self, expr: str, at: float) -> list[tuple[dict[str, str], float]]:
        self.asked.append((expr, at))
        return [({}, 0.0)]


def record(index: int = 0, started: float | None = 1010.0, ended: float | None = 1015.0) -> FaultRecord:
    return FaultRecord(
        index=index, kind="server-stall", target="server", node="node1", planned="p", started_at=started, ended_at=ended
    )


def judged(phase: str | None, faults: list[FaultRecord]) -> tuple[Outcome, str, tuple[str, float]]:
    api = Recorder()
    result = NodeResult(run_id="r001", node="node1", metrics_labels=LABELS, metrics_from=1000.0, metrics_to=1100.0)
    criterion = Criterion(
        "swap_out", "increase(x[{{ window }}])", "==", 0.0, Severity.ERROR, "", fault=1 if phase else None, phase=phase
    )
    window = RunWindow(1000.0, 1100.0)
    [outcome] = evaluate_node(
        [criterion], api, result, window, run_faults([result.model_copy(update={"faults": faults})])
    )  # type: ignore[arg-type]
    return outcome.outcome, outcome.detail, api.asked[0] if api.asked else ("", 0.0)


@pytest.mark.parametrize(
    ("phase", "window", "at"),
    [
        (None, "100000ms", 1100.0),  # the run's window
        ("before", "10000ms", 1010.0),  # from the run's start to the fault's
        ("during", "5000ms", 1015.0),
        ("after", "85000ms", 1100.0),  # from its end to the run's
    ],
)
def test_a_phase_is_judged_over_its_own_window_at_its_end(phase: str | None, window: str, at: float) -> None:
    outcome, detail, (query, asked_at) = judged(phase, [record()])
    assert outcome is Outcome.PASS and query == f"increase(x[{window}])" and asked_at == at
    assert (f"({phase} fault 1)" in detail) == (phase is not None)


def test_a_phase_of_a_fault_that_did_not_happen_is_invalid_and_never_queried() -> None:
    missed = record(started=None, ended=None).model_copy(update={"missed": "the workload ended before +10 s"})
    outcome, detail, asked = judged("during", [missed])
    assert outcome is Outcome.INVALID and "fault 1 did not happen" in detail and "ended before +10 s" in detail
    assert asked == ("", 0.0)
    outcome, detail, _ = judged("after", [])
    assert outcome is Outcome.INVALID and "fault 1 did not happen" in detail


def test_a_fault_recorded_by_the_node_that_injected_it_times_every_nodes_phase() -> None:
    injector = NodeResult(run_id="r001", node="node1", faults=[record(started=None, ended=None), record(index=1)])
    other = NodeResult(run_id="r001", node="node2", faults=[record(started=1020.0, ended=1030.0)])
    faults = run_faults([injector, other])
    assert faults[1].started_at == 1020.0 and faults[2].started_at == 1010.0  # the one that began counts


def _issue(tmp_path: Path, criterion: str) -> tuple[int | None, str, str]:
    return first_issue(tmp_path, CAMPAIGN + criterion)


def test_a_phase_names_a_fault_the_campaign_has(tmp_path: Path) -> None:
    line, field, message = _issue(tmp_path, '  - {name: a, expr: "x", op: ">", value: 1, fault: 2, phase: after}\n')
    assert (line, field) == (10, "criteria[0].fault") and "1 fault(s)" in message
    line, field, message = _issue(tmp_path, '  - {name: a, expr: "x", op: ">", value: 1, phase: during}\n')
    assert line == 10 and field.startswith("criteria[0]") and "give both 'fault'" in message
    _, field, message = _issue(tmp_path, '  - {name: a, expr: "x", op: ">", value: 1, fault: 1, phase: amid}\n')
    assert field == "criteria[0].phase" and "'during'" in message


def test_a_campaign_with_a_phase_criterion_loads(tmp_path: Path) -> None:
    path = tmp_path / "campaign.yaml"
    path.write_text(CAMPAIGN + '  - {name: a, expr: "x", op: ">", value: 1, fault: 1, phase: during}\n')
    [criterion] = load_campaign(path).spec.criteria
    assert (criterion.fault, criterion.phase) == (1, "during")
