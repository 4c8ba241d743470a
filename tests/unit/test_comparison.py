"""The statistics of a regression comparison (orchestrator.stats), on recorded real figures.

The runs come from ``tests/fixtures/figures/smoke-repeats.json`` (20 runs of one kernel,
once recorded), else ``recorded.json`` (the real runs this host kept). Either file is
``{"_source": ..., "runs": [{"figures": {name: value}}, ...]}`` or a plain list of figure
dicts; a value may be a number, null, or ``{"value": x}`` as in result.json. The tests
work with any number of runs (at least 3): with fewer than two halves of
``min_repeats``, both sides are the whole series.

A known step is made by scaling (for a zero figure: shifting) one half of the real
values, so the true change is known exactly while the noise stays the lab's own.
"""

from __future__ import annotations

import itertools
import json
import math
import random
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest

from model.figures import FIGURE_NAMES
from orchestrator import stats
from orchestrator.stats import (
    DEFAULT_MIN_REPEATS,
    DEFAULT_POLICIES,
    Comparison,
    Policy,
    compare,
    compare_figure,
    defaults_table,
    holm_adjust,
    resolve_policies,
    side_values,
)

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "figures"
PRIMARY = "swap_out_mibps"
Run = dict[str, float | None]


def _value(raw: object) -> float | None:
    """A figure value as stored: a number, null, or result.json's {"value": x}."""
    if isinstance(raw, dict):
        raw = raw.get("value")
    return None if raw is None else float(raw)  # type: ignore[arg-type]


def _runs(entries: Sequence[Any]) -> list[Run]:
    # An entry is a run with its "figures", or the figures themselves.
    return [{name: _value(raw) for name, raw in entry.get("figures", entry).items()} for entry in entries]


def _fixture() -> tuple[Path, dict[str, Any]]:
    path = FIXTURES / "smoke-repeats.json"
    if not path.exists():
        path = FIXTURES / "recorded.json"
    data = json.loads(path.read_text())
    return path, data if isinstance(data, dict) else {"runs": data}


FIXTURE_PATH, FIXTURE = _fixture()
RUNS = _runs(FIXTURE["runs"])


def _halves(runs: Sequence[Run] = RUNS) -> tuple[list[Run], list[Run]]:
    """First half against second half, as a baseline series then a candidate one."""
    if len(runs) < 2 * DEFAULT_MIN_REPEATS:
        return list(runs), list(runs)  # too few to split: an A/A of the same runs
    middle = len(runs) // 2
    return list(runs[:middle]), list(runs[middle:])


def _changed(runs: Sequence[Run], name: str, factor: float = 1.0, shift: float = 0.0) -> list[Run]:
    """The runs with one figure scaled and shifted: a step of known size."""
    out = []
    for run in runs:
        value = run.get(name)
        out.append({**run, name: None if value is None else value * factor + shift})
    return out


def _compare(a: Sequence[Run], b: Sequence[Run], **options: Any) -> Comparison:
    return compare(side_values(a), side_values(b), **options)


def _values(runs: Sequence[Run], name: str) -> list[float | None]:
    return [run.get(name) for run in runs]


def test_the_fixture_holds_real_runs_of_one_kernel() -> None:
    assert "_source" in FIXTURE, f"{FIXTURE_PATH.name}: say where the figures come from"
    assert len(RUNS) >= 3
    assert all(isinstance(run.get(PRIMARY), float) and run[PRIMARY] > 0 for run in RUNS)  # type: ignore[operator]


def test_every_figure_has_a_default_and_the_docstring_table_is_the_codes() -> None:
    assert set(DEFAULT_POLICIES) == set(FIGURE_NAMES)
    doc = stats.__doc__ or ""
    for row in defaults_table():
        assert row in doc, f"module docstring's defaults table lacks: {row}"


@pytest.mark.parametrize(("factor", "outcome"), [(0.6, "regression"), (1.5, "improvement")])
def test_a_known_step_is_found_in_the_right_direction_with_its_size_inside_the_interval(
    factor: float, outcome: str
) -> None:
    a, b = _halves()
    same = _compare(a, b).figure(PRIMARY)
    assert same.ci_low is not None and same.ci_high is not None
    assert same.ci_low <= 1 <= same.ci_high, f"the halves of the series already differ: {same.summary()}"

    result = _compare(a, _changed(b, PRIMARY, factor))
    step = result.figure(PRIMARY)
    assert (result.verdict, step.outcome) == (outcome, outcome)
    assert result.regressed is (outcome == "regression")
    assert step.change_pct is not None and (step.change_pct < 0) is (factor < 1)
    # The interval is of pairwise log differences: it moves by exactly the step, so the
    # true factor lies inside it because 1 lay inside the halves' own interval.
    assert (step.ci_low, step.ci_high) == pytest.approx((same.ci_low * factor, same.ci_high * factor))
    assert step.ci_low <= factor <= step.ci_high  # type: ignore[operator]
    assert step.summary().endswith(f": {outcome}")


def test_the_summary_reads_as_the_issue_asks() -> None:
    a, b = _halves()
    line = _compare(a, _changed(b, PRIMARY, 0.6)).figure(PRIMARY).summary()
    number = r"[0-9.]+"
    signed = r"[+-][0-9]+\.[0-9]"
    pattern = (
        rf"swap_out_mibps: {number} -> {number} MiB/s "
        rf"\({signed} %, 95 % CI {signed} \.\. {signed} %; could see {number} %\): regression"
    )
    assert re.fullmatch(pattern, line), line


@pytest.mark.parametrize(("factor", "outcome"), [(1.5, "regression"), (0.6, "improvement")])
def test_direction_follows_the_figure_a_longer_wall_time_is_a_regression(factor: float, outcome: str) -> None:
    a, b = _halves()
    name = "workload_wall_s"
    result = compare_figure(name, _values(a, name), _values(_changed(b, name, factor), name))
    assert result.outcome == outcome


def _splits(count: int, limit: int = 30) -> list[tuple[int, ...]]:
    """Ways to pick half of ``count`` runs as side A: all of them, or ``limit`` seeded ones."""
    half = count // 2
    if math.comb(count, half) <= limit:
        return list(itertools.combinations(range(count), half))
    chooser = random.Random(13)
    return [tuple(sorted(chooser.sample(range(count), half))) for _ in range(limit)]


def test_noise_is_not_a_change_in_any_split_of_one_kernels_runs() -> None:
    # Too few runs to split: an A/A of the same runs.
    splits = _splits(len(RUNS)) if len(RUNS) >= 2 * DEFAULT_MIN_REPEATS else [tuple(range(len(RUNS)))]
    flagged, looked, alarms = [], 0, []
    for picked in splits:
        a = [run for i, run in enumerate(RUNS) if i in picked]
        b = [run for i, run in enumerate(RUNS) if i not in picked] or a
        result = _compare(a, b)
        if result.verdict != "no change":
            alarms.append(result.figure(PRIMARY).summary())
        others = [f for f in result.figures if f.name != PRIMARY and f.outcome != "insufficient data"]
        looked += len(others)
        flagged += [f.summary() for f in others if f.changed]
    # Every split is the same kernel: a change is a false alarm. The 20 recorded runs drift
    # (some ran beside other work on the host), so a split now and then is unbalanced for
    # real; bench/noise_floor.py measures the rate (a few %). It must stay rare.
    assert len(alarms) <= 0.1 * len(splits), alarms
    assert len(flagged) <= 0.1 * looked, flagged


def test_too_few_runs_is_insufficient_data_never_no_change() -> None:
    a, b = RUNS[:2], _changed(RUNS[-2:], PRIMARY, 0.6)  # a 40 % drop, on two runs a side
    result = _compare(a, b)
    primary = result.figure(PRIMARY)
    assert result.verdict == "insufficient data" and not result.regressed
    assert (primary.ci_low, primary.ci_high, primary.p_value) == (None, None, None)
    assert primary.summary().endswith("(2 vs 2 values, at least 4 per side needed): insufficient data")
    assert _compare(RUNS[:2], RUNS[:2]).verdict == "insufficient data"  # identical runs: still not "no change"


def test_three_a_side_cannot_reach_95_percent_and_says_how_many_can() -> None:
    # Every B below every A happens by chance once in C(6, 3) = 20 orders: 5 % one way,
    # 10 % either way. No 95 % interval exists; four a side is the fewest (2 in 70).
    a, b = RUNS[:3], _changed(RUNS[3:6], PRIMARY, 0.5)
    primary = _compare(a, b).figure(PRIMARY)
    assert primary.outcome == "insufficient data"
    assert primary.summary().endswith("(3 vs 3 values, at least 4 per side needed): insufficient data")
    assert stats.fewest_per_side(0.95) == 4 and stats.fewest_per_side(0.90) == 3
    four = _compare(RUNS[:4], _changed(RUNS[4:8], PRIMARY, 0.5)).figure(PRIMARY)
    assert four.outcome == "regression"


def test_the_real_two_node_runs_are_too_few_to_compare() -> None:
    # The real two-node run kept in recorded.json (one run, two nodes: two values).
    others = _runs(json.loads((FIXTURES / "recorded.json").read_text())["other_runs"])
    assert 0 < len(others) < DEFAULT_MIN_REPEATS
    result = _compare(RUNS, others)
    assert result.verdict == "insufficient data"


def test_none_and_nan_are_dropped_not_read_as_zero() -> None:
    values = [v for v in _values(RUNS, PRIMARY) if v is not None]
    clean = compare_figure(PRIMARY, values, values)
    holed = compare_figure(PRIMARY, [None, *values, math.nan], values)
    assert (holed.n_a, holed.median_a) == (clean.n_a, clean.median_a)
    measured = [v for v in _values(RUNS, "tcp_retrans_per_s") if v is not None]
    assert _compare(RUNS, RUNS).figure("tcp_retrans_per_s").n_a == len(measured)


def test_a_change_of_another_figure_alone_is_reported_but_does_not_decide() -> None:
    a, b = _halves()
    result = _compare(a, _changed(b, "majfault_per_s", 3.0))
    faults = result.figure("majfault_per_s")
    assert faults.outcome == "regression"
    assert faults in result.others_changed
    assert (result.verdict, result.regressed) == ("no change", False)
    assert faults.p_value is not None and faults.p_holm is not None and faults.p_holm >= faults.p_value
    assert result.figure(PRIMARY).p_holm is None  # the primary is not in the family
    as_json = result.to_json()
    assert as_json["verdict"] == "no change"
    assert {"figure": "majfault_per_s", "outcome": "regression"}.items() <= _by_name(as_json)["majfault_per_s"].items()


def _by_name(as_json: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {entry["figure"]: entry for entry in as_json["figures"]}


def test_holm_multiplies_the_smallest_p_by_the_family_size_and_keeps_the_order() -> None:
    adjusted = holm_adjust({"a": 0.01, "b": 0.04, "c": 0.03})
    assert adjusted == pytest.approx({"a": 0.03, "c": 0.06, "b": 0.06})
    assert holm_adjust({"a": 0.6, "b": 0.9}) == {"a": 1.0, "b": 1.0}


def _zeros(name: str) -> tuple[list[float], list[float]]:
    zeros = [0.0 for v in _values(RUNS, name) if v == 0]
    if len(zeros) < DEFAULT_MIN_REPEATS:
        pytest.skip(f"{FIXTURE_PATH.name}: fewer than {DEFAULT_MIN_REPEATS} runs with {name} = 0")
    if len(zeros) < 2 * DEFAULT_MIN_REPEATS:
        return zeros, zeros
    return zeros[: len(zeros) // 2], zeros[len(zeros) // 2 :]


def test_a_zero_baseline_is_compared_by_difference_with_its_absolute_floor() -> None:
    name = "nfs_retrans_per_call"  # 0 in every recorded run: a healthy network
    a, b = _zeros(name)
    floor = DEFAULT_POLICIES[name].abs_tolerance
    assert floor is not None
    same = compare_figure(name, a, b)
    assert (same.scale, same.ratio, same.change_pct, same.outcome) == ("difference", None, None, "no change")
    assert same.ci_low is not None and same.ci_high is not None and same.ci_low <= 0 <= same.ci_high

    worse = compare_figure(name, a, [v + 10 * floor for v in b])
    assert (worse.scale, worse.outcome) == ("difference", "regression")
    assert worse.ci_low is not None and worse.ci_high is not None
    assert worse.ci_low <= 10 * floor <= worse.ci_high
    assert "(+0.01 ratio, 95 % CI +0.01 .. +0.01 ratio; could see 0.001 ratio): regression" in worse.summary()

    blip = compare_figure(name, a, [v + floor / 2 for v in b])
    assert blip.outcome == "no change"  # certain, but under the floor


def test_the_floor_holds_for_ratios_of_rare_events_too() -> None:
    name = "direct_throttle_per_s"  # a few events per run
    assert DEFAULT_POLICIES[name].abs_tolerance is not None
    # The runs that had some (a ratio needs no 0 on either side).
    some = [v for v in _values(RUNS, name) if v]
    assert len(some) >= 8, f"{FIXTURE_PATH.name}: too few runs with {name} above 0"
    xa, xb = some[: len(some) // 2], [v * 10 for v in some[len(some) // 2 :]]
    found = compare_figure(name, xa, xb, policy=Policy(1.0))
    assert found.scale == "ratio" and found.outcome == "regression" and found.difference is not None
    floored = compare_figure(name, xa, xb, policy=Policy(1.0, abs_tolerance=1.5 * found.difference))
    assert floored.outcome == "no change"  # certain and tenfold, yet smaller than the floor
    assert (floored.ci_low, floored.ci_high) == (found.ci_low, found.ci_high)


def test_a_side_with_a_zero_is_compared_by_difference() -> None:
    name = "direct_throttle_per_s"
    # Half of A's values zero: a ratio to them would be unbounded; the change is B - A.
    result = compare_figure(name, [0.0, 0.0, 1.2, 1.5], [12.0, 15.0, 9.0, 11.0])
    assert (result.scale, result.ratio, result.change_pct, result.outcome) == ("difference", None, None, "regression")
    as_json = result.to_json()
    json.dumps(as_json, allow_nan=False)
    assert as_json["detectable"] is not None and " 1/s" in result.summary()


def test_the_same_values_give_the_same_interval_with_no_seed() -> None:
    a, b = _halves()
    first, again = _compare(a, b), _compare(list(reversed(a)), list(reversed(b)))
    assert first.to_json() == again.to_json()
    json.dumps(first.to_json(), allow_nan=False)


def test_the_intervals_cut_is_exact_for_small_sides_and_matches_the_normal_one_for_large() -> None:
    # 5 against 5: P(U <= 2) = 4/252 <= 2.5 % < P(U <= 3) = 7/252: three pairs cut each end.
    assert stats.cut_from_each_end(5, 5, 0.95) == 3
    assert sum(stats.rank_null(5, 5)[:3]) == pytest.approx(4 / 252)
    assert sum(stats.rank_null(7, 4)) == pytest.approx(1.0)
    # At the switch to the normal approximation the cut goes on smoothly (50 -> 51 a side).
    exact, normal = stats.cut_from_each_end(50, 50, 0.95), stats.cut_from_each_end(51, 51, 0.95)
    assert 0 < normal - exact < 60


def test_an_effect_of_half_the_tolerance_is_not_a_change_however_certain() -> None:
    values = [10.0, 10.1, 9.9, 10.05, 9.95, 10.02]
    # 4 % slower with almost no noise: certain, but below half of the 10 % tolerance.
    small = compare_figure(PRIMARY, values, [v * 0.96 for v in values])
    assert small.ci_high is not None and small.ci_high < 1 and small.outcome == "no change"
    # The whole tolerance (10 %) is a regression: the rule sees an effect of its own size.
    assert compare_figure(PRIMARY, values, [v / 1.1 for v in values]).outcome == "regression"


def test_a_secondary_change_that_does_not_survive_holm_is_no_change() -> None:
    # Six runs a side; major faults 8 % worse with some overlap: p = 0.009 alone, a
    # regression by itself, but 0.07 once Holm counts the eight secondary figures.
    base = [100.0 + i for i in range(6)]
    worse = [103.5, 106.5, 108.5, 113.0, 114.0, 115.0]
    a = [dict.fromkeys(FIGURE_NAMES, value) for value in base]
    b = [
        {**dict.fromkeys(FIGURE_NAMES, value), "majfault_per_s": slower}
        for value, slower in zip(base, worse, strict=True)
    ]
    assert compare_figure("majfault_per_s", base, worse).outcome == "regression"
    held = _compare(a, b).figure("majfault_per_s")
    assert held.p_value is not None and held.p_value < 0.05 <= (held.p_holm or 0)
    assert (held.outcome, held.unadjusted) == ("no change", "regression")
    assert "a regression before Holm's adjustment" in held.summary()
    # Clear enough to survive the family: it stands.
    clear = [{**run, "majfault_per_s": 130.0 + i} for i, run in enumerate(a)]
    assert _compare(a, clear).figure("majfault_per_s").outcome == "regression"


def test_a_campaigns_override_applies() -> None:
    a, b = _halves()
    dropped = _changed(b, PRIMARY, 0.6)
    assert _compare(a, dropped, policies={PRIMARY: {"tolerance": 2.0}}).verdict == "no change"  # -40 % tolerated
    assert _compare(a, dropped, policies={PRIMARY: {"min_repeats": 50}}).verdict == "insufficient data"
    assert resolve_policies({"allocstall_per_s": {"tolerance": 0.5}})["allocstall_per_s"].tolerance == 0.5
    assert resolve_policies()["allocstall_per_s"] == DEFAULT_POLICIES["allocstall_per_s"]


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"swap_out_mbps": {"tolerance": 0.1}}, "unknown figure 'swap_out_mbps'"),
        ({PRIMARY: {"tolerance": 0}}, r"tolerance must be a number in \(0, 10\]"),
        ({PRIMARY: {"tolerance": -0.1}}, "tolerance must be"),
        ({PRIMARY: {"tolerance": 10.5}}, "tolerance must be"),
        ({PRIMARY: {"tolerance": math.nan}}, "tolerance must be"),
        ({PRIMARY: {"tolerance": "10%"}}, "tolerance must be"),
        ({PRIMARY: {"tolerance": True}}, "tolerance must be"),
        ({PRIMARY: {"min_repeats": 2}}, "min_repeats must be a whole number >= 3"),
        ({PRIMARY: {"min_repeats": 2.5}}, "min_repeats must be"),
        ({PRIMARY: {"min_repeats": False}}, "min_repeats must be"),
        ({PRIMARY: {"repeats": 3}}, r"unknown setting\(s\) repeats"),
        ({PRIMARY: 0.1}, "expected a mapping"),
    ],
)
def test_bad_overrides_are_refused(overrides: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        resolve_policies(overrides)
    with pytest.raises(ValueError, match=message):
        _compare(RUNS, RUNS, policies=overrides)


def test_unknown_figures_and_settings_are_refused() -> None:
    with pytest.raises(ValueError, match="unknown figure"):
        compare({"swap_out": [1.0]}, {})
    with pytest.raises(ValueError, match="unknown figure"):
        compare({}, {}, primary="swap_out")
    with pytest.raises(ValueError, match="unknown figure"):
        compare_figure("swap_out", [1.0], [1.0])
    with pytest.raises(ValueError, match="confidence"):
        compare_figure(PRIMARY, [1.0], [1.0], confidence=95)


def test_sides_run_apart_carry_the_drift_allowance() -> None:
    values = [10.0, 10.1, 9.9, 10.05, 9.95, 10.02]
    moved = [v * 0.93 for v in values]  # 7 % lower: what a host can drift in an hour
    interleaved = compare_figure(PRIMARY, values, moved)
    apart = compare_figure(PRIMARY, values, moved, drift=0.10)
    assert (interleaved.outcome, apart.outcome) == ("regression", "no change")
    assert apart.ci_low is not None and interleaved.ci_low is not None and apart.ci_low < interleaved.ci_low
    assert "±10 % for drift" in apart.summary() and apart.to_json()["drift"] == 0.10
    # A change well beyond the drift still shows.
    assert compare_figure(PRIMARY, values, [v * 0.7 for v in values], drift=0.10).outcome == "regression"
    assert stats.across_time_drift("host") >= stats.across_time_drift("guest-icount5")
    assert stats.across_time_drift("something newer") == stats.across_time_drift("host")
