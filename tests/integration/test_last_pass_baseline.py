"""`baseline: last-pass` finds the newest passing instance of the same campaign with the
same settings in a real results database (SQLite), and compares with it."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import pytest
import redis

from model.campaign import CompareSpec
from orchestrator.baselines import against_instance
from orchestrator.history.db import ResultsDb
from orchestrator.scheduler import Scheduler
from tests.integration.dispatch import RecordingDispatch

pytestmark = pytest.mark.integration
RECORD = json.loads((Path(__file__).resolve().parents[1] / "fixtures" / "results" / "pair-result.json").read_text())


def _instance(cid: str, finished_at: float, verdict: str = "pass", ram: int = 256) -> dict[str, Any]:
    record = copy.deepcopy(RECORD)
    record.update(campaign_id=cid, finished_at=finished_at, verdict=verdict, exit_code=0 if verdict == "pass" else 1)
    record["runs"] = [run for run in record["runs"] if run["verdict"] == "pass"]
    for run in record["runs"]:
        run["settings"]["node_ram_mib"] = ram
    return record


def test_the_newest_passing_instance_with_the_same_settings_is_the_baseline(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SWAPLAB_DB_URL", f"sqlite:///{tmp_path / 'results.db'}")
    with ResultsDb() as db:
        db.store(_instance("pair-patched-20261101-000000-0001", 1.0e9))
        db.store(_instance("pair-patched-20261102-000000-0002", 2.0e9))  # the one
        db.store(_instance("pair-patched-20261103-000000-0003", 3.0e9, verdict="fail"))
        db.store(_instance("pair-patched-20261104-000000-0004", 4.0e9, ram=512))  # other node size
    tonight = _instance("pair-patched-20261105-000000-0005", 5.0e9)
    scheduler = Scheduler(redis.Redis(), RecordingDispatch(), tmp_path)  # last_pass reads no Redis
    baseline = scheduler.last_pass(tonight)
    assert baseline is not None and baseline["campaign_id"] == "pair-patched-20261102-000000-0002"
    # Two kernels a night: each compared with its own runs of the baseline night, never pooled.
    entries = {entry["kernel"]: entry for entry in against_instance(tonight, baseline, CompareSpec())}
    assert set(entries) == {"6.1.0-57-amd64", "6.1.192-swaplab+"}
    for kernel, entry in entries.items():
        assert (entry["axis"], entry["baseline"]) == ("instance", "pair-patched-20261102-000000-0002")
        assert entry["baseline_kernels"] == entry["candidate_kernels"] == [kernel]
