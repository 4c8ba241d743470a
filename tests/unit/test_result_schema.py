"""result.json has one versioned schema: older records load with defaults and render, a
newer record's unknown fields are ignored, and what is wrong is named field by field."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from model.result import RESULT_SCHEMA_VERSION, Campaign, schema_problems
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
