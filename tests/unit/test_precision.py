"""What comparisons make of real identical runs taken at different times (the committed
blocks fixture, bench/blocks.py): false alarms at most 5 % interleaved and across time,
and a true 10 % slowdown of the primary figure, and a change of any figure's tolerance,
seen at least 4 times in 5 at the recommended repeats — on guest time, the mode
comparisons are recommended on.

These are computations on stored real runs (no lab), seeded: they do not flake. The
blocks, the machine and the times they were taken at are in the fixture; bench/README.md
has the whole table (bench/blocks.py study).
"""

from __future__ import annotations

import itertools
import random
import sys
from collections import Counter
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))
import blocks

from orchestrator.stats import DEFAULT_POLICIES, RECOMMENDED_REPEATS, across_time_drift

DATA = blocks.load(blocks.FIXTURE)
GUEST = blocks.by_timing(DATA)["guest-icount5"]
POOLED = [run for block in GUEST for run in blocks.figures(block)]
TRIALS = 300
ALARMS = ("regression", "improvement")


def _share(counts: Counter[str], *outcomes: str) -> float:
    return sum(counts[o] for o in outcomes) / sum(counts.values())


def test_the_fixture_holds_three_blocks_an_hour_apart_with_machine_and_times() -> None:
    assert {"host", "cores", "cpu", "kernel"} <= set(DATA["_machine"])
    # A block is a guest half and a host half (their order alternates): blocks start an hour apart.
    starts: dict[int, float] = {}
    for block in DATA["blocks"]:
        at = blocks._seconds(block["started"])
        starts[block["block"]] = min(at, starts.get(block["block"], at))
    ordered = [starts[number] for number in sorted(starts)]
    assert len(GUEST) >= 3 and all(later - earlier >= 3600 for earlier, later in itertools.pairwise(ordered))
    assert all(len(block["runs"]) >= RECOMMENDED_REPEATS for block in GUEST)


@pytest.mark.parametrize("k", [4, RECOMMENDED_REPEATS])
def test_identical_runs_interleaved_are_rarely_called_changed(k: int) -> None:
    counts = blocks.interleaved(POOLED, k, effect=False, trials=TRIALS, rng=random.Random(k))
    assert _share(counts, *ALARMS) <= 0.05, counts


DRIFT = across_time_drift("guest-icount5")  # what swaplab compare and last-pass apply


@pytest.mark.parametrize("k", [4, RECOMMENDED_REPEATS])
def test_identical_runs_an_hour_apart_are_rarely_called_changed(k: int) -> None:
    counts = blocks.across_time(GUEST, k, effect=False, drift=DRIFT)
    assert _share(counts, *ALARMS) <= 0.05, counts


def test_a_true_ten_percent_slowdown_is_seen_at_the_recommended_repeats() -> None:
    k = RECOMMENDED_REPEATS
    interleaved = blocks.interleaved(POOLED, k, effect=True, trials=TRIALS, rng=random.Random(1))
    across = blocks.across_time(GUEST, k, effect=True, drift=DRIFT)
    assert _share(interleaved, "regression") >= 0.8, interleaved
    assert _share(across, "regression") >= 0.8, across


@pytest.mark.parametrize("name", sorted(DEFAULT_POLICIES))
def test_a_change_of_each_figures_tolerance_is_seen_at_the_recommended_repeats(name: str) -> None:
    # The figure as the primary, B worse by exactly its tolerance (its floor, for a figure
    # that is 0 in most runs): what README promises of every tolerance.
    counts = blocks.tolerance_power(POOLED, name, RECOMMENDED_REPEATS, TRIALS, random.Random(2))
    assert _share(counts, "regression") >= 0.8, counts
