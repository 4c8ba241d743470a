"""A real A/B on the embedded lab: one kernel, two variants of its settings run
interleaved and counterbalanced, one run at a time, four a side (the fewest with which a
95 % interval exists); the comparison against the baseline variant flags the variant
that really swaps in slower (``vm.page-cluster=0``: no swap-in readahead, one NFS read
per page) with the right direction. That identical runs are not called changed (the
A/A) is measured as a rate on real runs taken hours apart: tests/unit/test_precision.py.

The effect is measured again here "by hand", from each run's raw samples.jsonl and
node-result.json, not from swaplab's figures: the swap-in over the sample-bounded window
divided by the hog's own elapsed time on the node's clock, one value per run, and the
median of every pairwise log ratio pc0 / base. It must be swaplab's change (the two must
measure the same thing) and lie inside its interval.
"""

from __future__ import annotations

import itertools
import json
import math
import os
import statistics
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from model.figures import MIB, PAGE_SIZE
from tests.conftest import require_tools

REPO = Path(__file__).resolve().parents[2]
SWAPLAB = Path(sys.executable).with_name("swaplab")
CAMPAIGN = REPO / "campaigns" / "ab-page-cluster.yaml"  # the example in the README, run as it is
# Eight runs, one at a time: ~12 minutes on this host on a good day, 20 on a slow one.
CAMPAIGN_TIMEOUT_S = 1800
# The campaign is the module fixture's setup: the suite's default per-test limit is shorter.
pytestmark = [pytest.mark.e2e, pytest.mark.timeout(CAMPAIGN_TIMEOUT_S + 300)]


@pytest.fixture(scope="module")
def ab(tmp_path_factory: pytest.TempPathFactory) -> tuple[int, dict[str, Any], str]:
    require_tools()
    folder = tmp_path_factory.mktemp("ab")
    env = {**os.environ, "SWAPLAB_RESULTS": str(folder / "results")}
    proc = subprocess.Popen(
        [str(SWAPLAB), "run", "--json", str(CAMPAIGN)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    try:
        out, err = proc.communicate(timeout=CAMPAIGN_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        # SIGTERM, not the SIGKILL subprocess.run sends: `swaplab run` then cancels the
        # campaign and stops the worker and NFS server it started, or later tests share
        # the host's two cores with them.
        proc.terminate()
        out, err = proc.communicate(timeout=120)
        sys.stderr.write(err)
        pytest.fail(f"the A/B campaign did not finish in {CAMPAIGN_TIMEOUT_S} s (a slower host?); cancelled")
    finally:
        subprocess.run([str(SWAPLAB), "nfs", "stop"], capture_output=True, timeout=60)
    sys.stderr.write(err)
    return proc.returncode, json.loads(out), err


def _comparison(result: dict[str, Any], candidate: str) -> dict[str, Any]:
    [entry] = [c for c in result["comparisons"] if c["candidate"] == candidate]
    return entry


def _primary(entry: dict[str, Any]) -> dict[str, Any]:
    [figure] = [f for f in entry["figures"] if f["figure"] == entry["primary"]]
    return figure


def test_every_run_passed_and_the_regression_fails_the_campaign_with_exit_3(
    ab: tuple[int, dict[str, Any], str],
) -> None:
    code, result, _ = ab
    assert [run["verdict"] for run in result["runs"]] == ["pass"] * 8, [
        r["nodes"][0]["reasons"] for r in result["runs"]
    ]
    assert (code, result["verdict"]) == (3, "fail")
    [reason] = [r for r in result["reasons"] if r.startswith("regression")]
    assert "pc0 vs base" in reason and "swap_in_mibps" in reason and "%" in reason


def test_the_sides_ran_interleaved_and_one_at_a_time(ab: tuple[int, dict[str, Any], str]) -> None:
    runs = ab[1]["runs"]
    assert [run["variant"] for run in runs] == ["base", "pc0", "pc0", "base"] * 2
    windows = [(run["window"]["start"], run["window"]["end"]) for run in runs]
    assert all(later[0] >= earlier[1] for earlier, later in itertools.pairwise(windows))


def test_the_ab_effect_is_flagged_with_its_direction_and_the_hand_measured_size_inside_the_interval(
    ab: tuple[int, dict[str, Any], str],
) -> None:
    result = ab[1]
    entry = _comparison(result, "pc0")
    figure = _primary(entry)
    assert (entry["verdict"], figure["outcome"]) == ("regression", "regression"), figure
    assert figure["change_pct"] < -30, figure  # the lab's own effect: at least 30 % slower swap-in
    base, pc0 = _swap_in_rates(result, "base"), _swap_in_rates(result, "pc0")
    # Hodges-Lehmann on logs: the median of every pairwise log ratio (of 16, the mean of the
    # middle two), back to a ratio.
    by_hand = math.exp(statistics.median(math.log(b / a) for a in base for b in pc0))
    print(f"\nA/B pc0 vs base: swaplab {figure['summary']}; by hand ratio {by_hand:.3f}")
    # The same quantity from the raw files: equal to swaplab's but for float rounding (1e-6).
    assert by_hand == pytest.approx(figure["ratio"], rel=1e-6), (by_hand, figure)
    assert figure["ci_low"] * (1 - 1e-6) <= by_hand <= figure["ci_high"] * (1 + 1e-6), (by_hand, figure)


def test_the_text_report_shows_the_comparison(ab: tuple[int, dict[str, Any], str]) -> None:
    report = (Path(ab[1]["result_dir"]) / "report.txt").read_text()
    assert "Comparison" in report and "pc0 vs base" in report and "regression" in report


def _swap_in_rates(result: dict[str, Any], variant: str) -> list[float]:
    """MiB/s swapped in per run of ``variant``, from its raw files: pswpin between the last
    sample at or before the hog started and the first at or after it ended (host time: its
    start on the node's clock less the measured offset, plus its elapsed time), over the
    hog's own elapsed seconds (the figure's definition, computed without swaplab)."""
    rates = []
    for run in result["runs"]:
        if run["variant"] != variant:
            continue
        folder = Path(result["result_dir"]) / run["run_id"] / "node1"
        samples = [json.loads(line) for line in (folder / "samples.jsonl").read_text().splitlines() if line]
        workload = json.loads((folder / "node-result.json").read_text())["workload"]
        start = workload["started_host_ns"]
        end = start + workload["elapsed_s"] * 1e9
        first = [s for s in samples if s["host_time_ns"] <= start][-1]
        last = next(s for s in samples if s["host_time_ns"] >= end)
        rates.append((last["pswpin"] - first["pswpin"]) * PAGE_SIZE / MIB / workload["elapsed_s"])
    return rates
