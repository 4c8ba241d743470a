"""result.json has one versioned schema: older records load with defaults and render, a
newer record's unknown fields are ignored, and what is wrong is named field by field."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from model.result import RESULT_SCHEMA_VERSION, Campaign, RecordError, campaign_of, schema_problems
from orchestrator.reports.text import render_text

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "results"


@pytest.mark.parametrize("name", ["smoke-old-result.json", "pair-result.json", "ab-result.json"])
def test_records_from_before_the_version_load_as_version_0_and_render(name: str) -> None:
    record = json.loads((FIXTURES / name).read_text())
    assert "schema_version" not in record
    loaded = Campaign.model_validate(record)
    assert loaded.schema_version == 0 and loaded.runs
    assert record["campaign_id"] in render_text(record)


def test_a_newer_record_loads_without_its_new_fields() -> None:
    record = json.loads((FIXTURES / "pair-result.json").read_text())
    record.update(schema_version=RESULT_SCHEMA_VERSION + 1, faults=[{"kind": "server-stall"}])
    record["runs"][0]["nodes"][0]["fault_effects"] = {"stalled_s": 3}
    assert schema_problems(record) is None
    assert Campaign.model_validate(record).schema_version == RESULT_SCHEMA_VERSION + 1


def test_what_is_wrong_is_named_by_field() -> None:
    record = json.loads((FIXTURES / "pair-result.json").read_text())
    del record["campaign_id"]
    record["runs"][0]["attempt"] = "second"
    problems = schema_problems(record) or ""
    assert "campaign_id" in problems and "runs.0.attempt" in problems


def test_what_the_reports_and_comparisons_read_is_typed() -> None:
    pair = Campaign.model_validate(json.loads((FIXTURES / "pair-result.json").read_text()))
    node = pair.runs[0].nodes[0]
    assert len(node.series["t"]) == len(node.series["swap_out_mibps"]) > 0
    assert (node.phases_s["workload"] or 0) > 0 and node.workload.elapsed_s is not None
    assert (
        pair.runs[0].window.seconds is not None and pair.reproduce.command == "swaplab run campaigns/pair-patched.yaml"
    )
    ab = Campaign.model_validate(json.loads((FIXTURES / "ab-result.json").read_text()))
    [pc0] = [entry for entry in ab.comparisons if entry.candidate == "pc0"]
    assert pc0.verdict == "regression" and pc0.method.resamples and pc0.rule
    [primary] = [figure for figure in pc0.figures if figure.figure == pc0.primary]
    assert primary.outcome == "regression" and primary.median_a and primary.summary


def test_an_older_record_without_the_reports_fields_takes_their_defaults() -> None:
    record = {"campaign_id": "c", "runs": [{"run_id": "r001", "nodes": [{"node": "n", "series": None}]}]}
    loaded = Campaign.model_validate(record)
    assert loaded.runs[0].nodes[0].series == {} and loaded.runs[0].window.seconds is None
    assert loaded.reproduce.file is None and loaded.comparisons == []


def test_a_refused_record_says_so_in_one_printable_line() -> None:
    record = {
        "campaign_id": "c\x1b[2J",
        "runs": [{"run_id": "r001", "nodes": [{"node": "n", "figures": {"x\x1b]0;t\x07": 1}}]}],
    }
    with pytest.raises(RecordError) as refused:
        campaign_of(record)
    message = str(refused.value)
    assert message.startswith("campaign record c does not match result.json's schema: runs.0.nodes.0.figures.x")
    assert "\x1b" not in message and "\n" not in message
    assert campaign_of(loaded := Campaign.model_validate({"campaign_id": "c", "runs": []})) is loaded
