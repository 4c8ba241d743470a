"""Change points over nightly history (orchestrator.changepoints), on real figures.

Every value here was measured on this host; only the way they are arranged into "nights"
is made by the tests (one real run per night, in the order the runs were recorded):

* the one-kernel series: ``tests/fixtures/figures/smoke-repeats.json`` (20 runs of one
  kernel, once bench/noise_floor.py recorded it), else ``recorded.json`` (6 real runs of
  the smoke campaign);
* the second series, a known step: the 3 runs of the variant ``pc0`` (``vm.page-cluster=0``,
  swap-in without readahead: swap-in throughput falls to less than half) of the real
  campaign ab-page-cluster-20261129-235848-bab2 (tests/fixtures/results/ab-result.json). Three real
  values are enough: E-divisive finds the step after 6 one-kernel nights at p <= 0.05
  (no scaled copy of the recorded series is needed). That campaign's 6 ``base``/``same``
  runs (the same kernel and settings as ``pc0`` but for the sysctl) give a second
  one-level series of the same workload.

The pc0 runs ran another workload (``small``) than the smoke runs (``overcommit``): the
step is the pc0 effect and that of the workload together; the test on the ab campaign's
own runs has the sysctl alone.
"""

from __future__ import annotations

import datetime
import json
import re
import statistics
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from model.figures import FIGURE_NAMES
from orchestrator.changepoints import (
    MIN_NIGHTS,
    MIN_SEGMENT,
    ChangeAnalysis,
    ChangePoint,
    beyond_tolerance,
    detect_changes,
    long_enough,
    split_points,
)
from orchestrator.stats import DEFAULT_POLICIES, Policy

REPO = Path(__file__).resolve().parents[2]
FIGURES_DIR = REPO / "tests" / "fixtures" / "figures"
AB_RESULT = REPO / "tests" / "fixtures" / "results" / "ab-result.json"  # the real A/B campaign's result.json
FIRST_NIGHT = datetime.datetime(2026, 11, 1, 2, 0, tzinfo=datetime.UTC).timestamp()
DAY = 86400.0
Figures = dict[str, float | None]


def _value(raw: object) -> float | None:
    """A figure as stored: a number, null, or result.json's {"value": x}."""
    if isinstance(raw, dict):
        raw = raw.get("value")
    return None if raw is None else float(raw)  # type: ignore[arg-type]


def _one_kernel_runs() -> tuple[str, list[tuple[str | None, Figures]]]:
    """(file name, [(release, figures)]) of the one-kernel series, in recorded order."""
    path = FIGURES_DIR / "smoke-repeats.json"
    if not path.exists():
        path = FIGURES_DIR / "recorded.json"
    data = json.loads(path.read_text())
    runs = data["runs"] if isinstance(data, dict) else data
    # noise_floor.py writes the release as "kernel"; recorded.json "release (package version)".
    return path.name, [
        ((str(run.get("kernel")).split()[0] if run.get("kernel") else None), _figures(run.get("figures", run)))
        for run in runs
    ]


def _figures(raw: Mapping[str, Any]) -> Figures:
    return {name: _value(value) for name, value in raw.items()}


def _ab_runs(variants: set[str]) -> list[tuple[str | None, Figures]]:
    """The node figures of the ab-page-cluster campaign's passing runs of ``variants``, in run order."""
    record = json.loads(AB_RESULT.read_text())
    return [
        ((run.get("kernel_info") or {}).get("release"), _figures(node["figures"]))
        for run in record["runs"]
        if run.get("variant") in variants and run.get("verdict") == "pass"
        for node in run["nodes"]
    ]


SOURCE, ONE_KERNEL = _one_kernel_runs()
PC0 = _ab_runs({"pc0"})
AB_BASE = _ab_runs({"base", "same"})


def night(
    day: int,
    figures: Figures,
    release: str | None,
    verdict: str = "pass",
    workload: str | None = None,
    campaign_verdict: str | None = None,
) -> dict[str, Any]:
    """One stored instance as ``ResultsDb.history()`` gives it: one run, its figures."""
    stamp = datetime.datetime.fromtimestamp(FIRST_NIGHT + day * DAY, datetime.UTC).strftime("%Y%m%d")
    return {
        "campaign_id": f"nightly-{stamp}-020000-{day:04x}",
        "campaign": "nightly",
        "finished_at": FIRST_NIGHT + day * DAY,
        "verdict": campaign_verdict or verdict,
        "exit_code": 0 if verdict == "pass" else 3,
        "runs": [{"run_id": "r001", "release": release, "workload": workload, "verdict": verdict, "figures": figures}],
    }


def nights(*series: Sequence[tuple[str | None, Figures]]) -> list[dict[str, Any]]:
    """The runs of ``series`` one after the other, one night each."""
    runs = [run for part in series for run in part]
    return [night(day, figures, release) for day, (release, figures) in enumerate(runs)]


def swap_in(analysis: ChangeAnalysis) -> list[ChangePoint]:
    """The swap-in change points beyond tolerance."""
    return [p for p in analysis.change_points if p.figure == "swap_in_mibps"]


def swap_in_at(analysis: ChangeAnalysis, item: Mapping[str, Any]) -> ChangePoint:
    """The swap-in change point (below tolerance too) at the night ``item``."""
    (point,) = [
        p for p in analysis.all_change_points if p.figure == "swap_in_mibps" and p.campaign_id == item["campaign_id"]
    ]
    return point


# -- the data -----------------------------------------------------------------------------
def test_the_series_are_real_runs() -> None:
    assert len(ONE_KERNEL) >= MIN_NIGHTS, f"{SOURCE}: fewer runs than nights needed"
    assert len({release for release, _ in ONE_KERNEL}) == 1, f"{SOURCE}: not one kernel"
    assert len(PC0) == 3 and len(AB_BASE) == 6
    # The pc0 effect is real and large: every pc0 run swaps in at under half of every other.
    assert _median(PC0, "swap_in_mibps") < 0.6 * _median(ONE_KERNEL, "swap_in_mibps")


# -- one level: no change -----------------------------------------------------------------
@pytest.mark.parametrize("series", ["one kernel", "ab base and same, twice"])
def test_a_series_of_one_level_has_no_change_point_beyond_tolerance(series: str) -> None:
    runs = ONE_KERNEL if series == "one kernel" else [*AB_BASE, *AB_BASE]
    analysis = detect_changes("nightly", nights(runs))

    assert analysis.change_points == [], [p.summary() for p in analysis.change_points]
    assert all(s.status != "change" for s in analysis.series)
    assert analysis.lines() == [
        f"no change point beyond tolerance in {len(runs)} night(s) of nightly (2026-11-01 .. {_day(len(runs) - 1)})"
    ]


def _median(runs: Sequence[tuple[str | None, Figures]], name: str) -> float:
    return statistics.median(v for _, f in runs if (v := f.get(name)) is not None)


def _day(index: int) -> str:
    return datetime.datetime.fromtimestamp(FIRST_NIGHT + index * DAY, datetime.UTC).strftime("%Y-%m-%d")


# -- a known step -------------------------------------------------------------------------
def test_the_pc0_step_after_the_one_kernel_series_is_found_at_its_first_night() -> None:
    history = nights(ONE_KERNEL, PC0)
    analysis = detect_changes("nightly", history)

    (point,) = swap_in(analysis)  # one change beyond tolerance, at the first pc0 night
    step = len(ONE_KERNEL)
    first_pc0 = history[step]
    assert (point.campaign_id, point.at) == (first_pc0["campaign_id"], first_pc0["finished_at"])
    assert point.worse and point.beyond_tolerance
    # The medians of the segments around it: all pc0 nights after; before, the one-kernel
    # nights back to the previous (small) split, if E-divisive found one in them.
    values = [f["swap_in_mibps"] or 0.0 for _, f in [*ONE_KERNEL, *PC0]]  # measured in every run
    before, after = statistics.median(values[step - point.nights_before : step]), statistics.median(values[step:])
    assert (point.median_before, point.median_after, point.nights_after) == (before, after, len(PC0))
    assert point.change_pct == pytest.approx((after / before - 1) * 100)
    # pc0 is a sysctl on the same kernel: no kernel change to blame, and the line says so.
    assert not point.kernel_changed
    assert "no kernel change (6.1.0-57-amd64)" in point.summary()
    # Fewer pages read ahead, more faults, longer work: all at the same night, all worse.
    moved = {p.figure: p for p in analysis.change_points if p.campaign_id == first_pc0["campaign_id"]}
    assert {"swap_in_mibps", "majfault_per_s", "workload_wall_s"} <= set(moved)
    assert all(moved[name].worse for name in ("swap_in_mibps", "majfault_per_s", "workload_wall_s"))


def test_the_step_within_one_campaign_is_found_too() -> None:
    # The ab campaign's own runs: same kernel, workload and node size; only the sysctl moves.
    history = nights(AB_BASE, PC0)
    (point,) = swap_in(detect_changes("ab-page-cluster", history))
    assert point.campaign_id == history[len(AB_BASE)]["campaign_id"]
    assert point.worse and point.beyond_tolerance
    assert point.change_pct is not None and point.change_pct < -50


def test_the_kernel_change_at_the_step_is_named_in_one_line() -> None:
    # The pc0 nights labelled as a newer kernel's: the measured values are untouched.
    history = nights(ONE_KERNEL, [("6.1.0-58-amd64", figures) for _, figures in PC0])
    (point,) = swap_in(detect_changes("nightly", history))

    assert (point.release_before, point.release_after) == ("6.1.0-57-amd64", "6.1.0-58-amd64")
    assert point.kernel_changed
    pattern = (
        r"\d{4}-\d\d-\d\d \(night nightly-\d{8}-020000-[0-9a-f]{4}\): swap_in_mibps \d+\.\d -> \d+\.\d MiB/s "
        r"\(-\d+\.\d %, worse\), kernel 6\.1\.0-57-amd64 -> 6\.1\.0-58-amd64"
    )
    assert re.fullmatch(pattern, point.summary()), point.summary()
    assert point.summary().startswith(f"{_day(len(ONE_KERNEL))} (night {history[len(ONE_KERNEL)]['campaign_id']}):")


# -- what counts ----------------------------------------------------------------------------
def test_a_failed_night_contributes_nothing_and_is_named() -> None:
    # A night whose runs failed, with the pc0 figures: were they counted, they would be a step.
    middle = len(ONE_KERNEL) // 2
    runs = list(ONE_KERNEL)
    history = [*nights(runs[:middle]), night(middle, PC0[0][1], PC0[0][0], verdict="fail")]
    history += [night(middle + 1 + i, f, r) for i, (r, f) in enumerate(runs[middle:])]
    analysis = detect_changes("nightly", history)

    assert analysis.change_points == []
    assert [s.campaign_id for s in analysis.skipped] == [history[middle]["campaign_id"]]
    assert all(s.nights == len(runs) for s in analysis.series if s.figure == "swap_in_mibps")
    assert any("without a passing run, not counted" in note for note in analysis.notes())


def test_nights_with_faults_never_join_a_series_of_nights_without() -> None:
    # The pc0 step again, but the nights before it ran with a fault: runs under a stalled
    # server are another quantity, so they are set aside, not compared with the rest.
    history = nights(ONE_KERNEL, PC0)
    for item in history[: len(ONE_KERNEL)]:
        item["runs"][0]["faults"] = ["server-stall on server at +10 s for 5 s"]
    analysis = detect_changes("nightly", history)

    assert analysis.all_change_points == []
    assert [s.campaign_id for s in analysis.skipped] == [i["campaign_id"] for i in history[: len(ONE_KERNEL)]]
    assert {s.reason for s in analysis.skipped} == {
        "measured on host time with faults (server-stall on server at +10 s for 5 s), the newest nights on host time"
    }


def test_a_campaign_that_changed_its_clock_starts_a_new_series() -> None:
    # The pc0 step again, but the nights after it measured on guest time: a different
    # quantity, so the switch is no change point; the host-time nights are set aside.
    history = nights(ONE_KERNEL, PC0)
    for item in history[len(ONE_KERNEL) :]:
        item["runs"][0]["timing"] = "guest-icount5"
    analysis = detect_changes("nightly", history)

    assert analysis.all_change_points == []
    assert [s.campaign_id for s in analysis.skipped] == [i["campaign_id"] for i in history[: len(ONE_KERNEL)]]
    assert {s.reason for s in analysis.skipped} == {"measured on host time, the newest nights on guest-icount5 time"}
    assert all(s.nights == len(PC0) for s in analysis.series)
    assert f"{len(ONE_KERNEL)} night(s) not counted: measured on host time, the newest nights on guest-icount5 time" in (
        analysis.notes()
    )
    # Unmarked runs are host time: the same history with the marks removed is the step again.
    for item in history:
        item["runs"][0].pop("timing", None)
    assert swap_in(detect_changes("nightly", history))


def test_a_night_failed_by_a_regression_still_counts() -> None:
    # The nightly comparison fails the night it sees a regression; its runs passed.
    history = nights(ONE_KERNEL, PC0)
    for item in history[len(ONE_KERNEL) :]:
        item["verdict"] = "fail"
    analysis = detect_changes("nightly", history)
    assert analysis.skipped == ()
    assert [p.campaign_id for p in swap_in(analysis)] == [history[len(ONE_KERNEL)]["campaign_id"]]


def test_too_few_nights_is_never_no_change() -> None:
    analysis = detect_changes("nightly", nights(ONE_KERNEL[:3], PC0[:2]))  # 5 nights with a step in them

    assert all(s.status == "too few nights" for s in analysis.series)
    assert analysis.all_change_points == []
    assert analysis.lines() == [
        f"too few nights to tell change points in nightly: 5 with a passing run (2026-11-01 .. {_day(4)}), "
        f"at least {MIN_NIGHTS} needed"
    ]
    assert any(note.startswith(f"too few nights (5, at least {MIN_NIGHTS} needed)") for note in analysis.notes())
    # Six nights of one level: still too few (no six-night split can reach p < 0.05).
    assert all(s.status == "too few nights" for s in detect_changes("nightly", nights(AB_BASE)).series)


def test_no_split_of_six_nights_is_significant_and_eight_can_be() -> None:
    # Three nights at one level, three at a level four times higher: as far apart as nights
    # can be, and still 1 order in 20 (p = 0.1 two-sided) - noise could have done it.
    assert split_points([1.0, 1.1, 0.9, 4.0, 4.1, 3.9]) == []
    assert split_points([1.0, 1.1, 0.9, 1.05, 4.0, 4.1, 3.9, 4.05]) == [4]
    assert MIN_NIGHTS == 8


def test_one_odd_newest_night_is_not_a_step_three_nights_are() -> None:
    # Twelve nights of one level (a real night's figures, swap-in set within 2 %).
    release, figures = ONE_KERNEL[0]
    level = [(release, {**figures, "swap_in_mibps": 16.0 + 0.1 * (i % 4)}) for i in range(12)]
    odd = detect_changes("nightly", nights(level, PC0[:1]))
    assert swap_in(odd) == [], [p.summary() for p in swap_in(odd)]
    held = detect_changes("nightly", nights(level, PC0[:MIN_SEGMENT]))
    assert [p.nights_after for p in swap_in(held)] == [MIN_SEGMENT]
    assert long_enough([1, 5, 10, 11], 12, 3) == [5]


def test_workloads_are_separate_series() -> None:
    # Each night runs both workloads; one night the small workload's run failed. Mixed into
    # one median, the night would jump; per workload, both series are level.
    count = min(len(ONE_KERNEL), len(AB_BASE))
    history = []
    for day in range(count):
        item = night(day, ONE_KERNEL[day][1], ONE_KERNEL[day][0], workload="overcommit")
        small = {**item["runs"][0], "run_id": "r002", "workload": "small", "figures": AB_BASE[day][1]}
        small["verdict"] = "fail" if day == count // 2 else "pass"
        item["runs"].append(small)
        history.append(item)
    analysis = detect_changes("nightly", history)

    assert {s.workload for s in analysis.series} == {"overcommit", "small"}
    assert analysis.change_points == []
    small_swap_in = next(s for s in analysis.series if (s.workload, s.figure) == ("small", "swap_in_mibps"))
    assert small_swap_in.nights == count - 1


# -- tolerance ----------------------------------------------------------------------------
def test_a_change_below_the_tolerance_is_shown_only_when_asked_for() -> None:
    # The real pc0 step judged with a tolerance of 500 %: detected, but below it.
    policies = {**DEFAULT_POLICIES, "swap_in_mibps": Policy(5.0)}
    history = nights(ONE_KERNEL, PC0)
    analysis = detect_changes("nightly", history, policies=policies)

    point = swap_in_at(analysis, history[len(ONE_KERNEL)])
    assert not point.beyond_tolerance and point.worse
    assert point not in analysis.change_points
    assert not any("swap_in_mibps" in line for line in analysis.lines())
    assert point.summary() in analysis.lines(show_all=True)
    assert "worse, below the 500 % tolerance), no kernel change" in point.summary()
    assert any("below the figures' tolerance not shown (--all shows them)" in note for note in analysis.notes())
    assert "swap_in_mibps" not in {p["figure"] for p in analysis.to_json()["change_points"]}
    assert "swap_in_mibps" in {p["figure"] for p in analysis.to_json(show_all=True)["change_points"]}


@pytest.mark.parametrize(
    ("before", "after", "policy", "beyond"),
    [
        (10.0, 11.1, Policy(0.10), True),
        (10.0, 10.9, Policy(0.10), False),
        (10.0, 9.2, Policy(0.10), False),  # a 10 % tolerance is -9.1 % downwards (a factor)
        (10.0, 9.0, Policy(0.10), True),
        (0.1, 0.3, Policy(1.0, abs_tolerance=0.2), False),  # tripled, but under the floor
        (0.1, 0.35, Policy(1.0, abs_tolerance=0.2), True),
        (0.0, 0.5, Policy(1.0, abs_tolerance=1.0), False),  # from 0: the floor decides
        (0.0, 1.5, Policy(1.0, abs_tolerance=1.0), True),
        (0.0, 0.0, Policy(1.0), False),
    ],
)
def test_the_tolerance_rule_is_the_comparisons(before: float, after: float, policy: Policy, beyond: bool) -> None:
    assert beyond_tolerance(before, after, policy) is beyond


# -- determinism, output ------------------------------------------------------------------
def test_detection_is_deterministic_and_leaves_numpys_generator_alone() -> None:
    values = [f["swap_out_mibps"] or 0.0 for _, f in [*ONE_KERNEL, *PC0]]
    np.random.seed(1234)
    expected_next = np.random.random()
    np.random.seed(1234)

    first = [split_points(values) for _ in range(3)]

    assert np.random.random() == expected_next  # the caller's random numbers are unchanged
    assert first[0] == first[1] == first[2] and len(ONE_KERNEL) in first[0]
    history = nights(ONE_KERNEL, PC0)
    assert detect_changes("n", history).to_json() == detect_changes("n", list(reversed(history))).to_json()


def test_the_json_is_plain_and_complete() -> None:
    analysis = detect_changes("nightly", nights(ONE_KERNEL, PC0))
    data = json.loads(json.dumps(analysis.to_json(), allow_nan=False))

    assert data["settings"]["seed"] == 0 and data["settings"]["min_nights"] == MIN_NIGHTS
    assert {s["figure"] for s in data["series"]} <= set(FIGURE_NAMES)
    point = next(p for p in data["change_points"] if p["figure"] == "swap_in_mibps")
    assert {
        "campaign_id", "at", "date", "release_before", "release_after", "median_before", "median_after",
        "change_pct", "worse", "unit", "better", "summary",
    } <= set(point)  # fmt: skip
    assert point["unit"] == "MiB/s" and point["better"] == "higher" and point["worse"] is True
