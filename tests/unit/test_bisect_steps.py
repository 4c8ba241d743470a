"""A bisection's child campaigns and what it reads back from their records: the base beside
every prefix, figures pooled per prefix, and steps judged on the figure or on the verdict."""

from __future__ import annotations

import itertools
import random
from pathlib import Path
from typing import Any

import pytest

from model.bisection import Ask, Bisection, Outcome, Step
from model.campaign import CampaignSpec
from model.kernel import BuildSpec, DebianSource, GitSource
from model.result import campaign_of
from orchestrator.bisect_steps import (
    Gathered,
    Series,
    base_spec,
    child_spec,
    judge,
    prefix_build,
    reusable,
    settings_key,
)

BUILD = BuildSpec(source=DebianSource(debian="linux-source-6.1"), patches=Path("/srv/series.mbox"))
SPEC = CampaignSpec.model_validate(
    {
        "name": "slow-swapin",
        "kernels": [{"build": BUILD.model_dump(mode="json")}],
        "swap": {"size_mib": 512},
        "workloads": [{"name": "small", "mib": 320}],
        "repeats": 3,
        "compare": {"primary": "swap_in_mibps"},
    }
)
SERIES = Series(["a", "b", "c", "d"], ["A <a@example.org>"] * 4, ["a | 1 +"] * 4)
_IDS = itertools.count(1)


def _record(runs: list[tuple[int, str, float]]) -> dict[str, Any]:
    """A child campaign's record: (prefix, verdict, swap-in MiB/s) per run."""
    return {
        "campaign_id": f"c-{next(_IDS)}",
        "runs": [
            {
                "run_id": f"r{index:03d}",
                "kernel_label": BUILD.prefix(prefix).label(),
                "verdict": verdict,
                "nodes": [{"node": "node1", "figures": {"swap_in_mibps": {"value": value}}}],
            }
            for index, (prefix, verdict, value) in enumerate(runs, 1)
        ],
    }


def test_the_ends_run_the_base_beside_the_whole_series_and_a_step_its_prefix_alone() -> None:
    ends = child_spec(SPEC, BUILD, SERIES, Ask(4, 3, ends=True), "slow-swapin-p4")
    assert [kernel.label() for kernel in ends.kernels] == [
        "build:linux-source-6.1+series.mbox[:0]",
        "build:linux-source-6.1+series.mbox[:4]",
    ]
    assert ends.baseline is not None and ends.baseline.kernel == "build:linux-source-6.1+series.mbox[:0]"
    step = child_spec(SPEC, BUILD, SERIES, Ask(3, 2), "slow-swapin-p3")
    assert step.baseline is None
    assert [kernel.label() for kernel in step.kernels] == ["build:linux-source-6.1+series.mbox[:3]"]
    assert (step.name, step.repeats, step.compare, step.workloads) == (
        "slow-swapin-p3",
        2,
        SPEC.compare,
        SPEC.workloads,
    )
    between = base_spec(SPEC, BUILD, SERIES, "slow-swapin-base")
    assert ([k.label() for k in between.kernels], between.repeats) == (["build:linux-source-6.1+series.mbox[:0]"], 1)


def test_a_bisection_over_simulated_runs_names_the_patch_that_slowed_swap_in() -> None:
    """Patch 3 of 4 makes swap-in 58 % slower; runs are noisy (3 %); every step pools the base."""
    noise = random.Random(7)
    state, gathered = Bisection(4, repeats=4, max_repeats=8), Gathered()
    prefixes = {BUILD.prefix(k).label(): k for k in range(5)}
    while (ask := state.ask()) is not None:
        rate = 6.0 if ask.prefix >= 3 else 14.0
        runs = [(ask.prefix, "pass", rate * noise.gauss(1, 0.03)) for _ in range(ask.repeats)]
        runs += [(0, "pass", 14.0 * noise.gauss(1, 0.03)) for _ in range(ask.repeats if ask.ends else 1)]
        gathered.add(_record(runs), prefixes, "swap_in_mibps")
        step, why = judge(ask, 4, gathered, "figure", "swap_in_mibps", None)
        assert why
        state.answer(ask, step)
        gathered = Gathered.from_json(gathered.to_json())  # kept in Redis between steps
    result = state.result()
    assert result is not None and result.outcome is Outcome.CULPRIT and result.culprit == 3, result
    assert len(gathered.values[0]) == 4 + len([s for s in result.log if s.prefix != 4])  # pooled base


def test_on_the_verdict_a_failed_run_is_bad_an_unbuilt_prefix_skipped_an_infra_error_undecided() -> None:
    gathered = Gathered()
    prefixes = {BUILD.prefix(k).label(): k for k in range(5)}
    gathered.add(
        _record(
            [(0, "pass", 1), (4, "fail", 1), (2, "pass", 1), (2, "pass", 1), (3, "invalid", 0), (1, "infra-error", 0)]
        ),
        prefixes,
        "swap_in_mibps",
    )
    assert judge(Ask(4, 1, ends=True), 4, gathered, "verdict", "", None)[0] is Step.BAD
    assert judge(Ask(2, 2), 4, gathered, "verdict", "", None)[0] is Step.GOOD
    assert judge(Ask(3, 1), 4, gathered, "verdict", "", None) == (
        Step.SKIP,
        "its runs are invalid: the prefix did not build",
    )
    assert judge(Ask(1, 1), 4, gathered, "verdict", "", None)[0] is Step.UNDECIDED
    assert gathered.values[4] == []  # a failed run gives no figure


def test_ends_whose_base_fails_cannot_be_bisected_on_the_verdict() -> None:
    gathered = Gathered()
    gathered.add(
        _record([(0, "fail", 1), (4, "fail", 1)]), {BUILD.prefix(k).label(): k for k in (0, 4)}, "swap_in_mibps"
    )
    step, why = judge(Ask(4, 1, ends=True), 4, gathered, "verdict", "", None)
    assert step is Step.UNDECIDED and "the base did not pass" in why


def test_a_git_range_builds_the_commit_of_each_prefix_by_its_id() -> None:
    commits = [f"{k}" * 40 for k in range(5)]  # good, then the range's four, oldest first
    build = BuildSpec(source=GitSource(git=Path("/srv/linux"), ref="mm-unstable", good="v6.1"))
    ranged = Series(["a", "b", "c", "d"], ["A <a@example.org>"] * 4, ["a | 1 +"] * 4, commits=commits)
    assert ranged.unit == "commit" and SERIES.unit == "patch"
    built = [prefix_build(build, ranged, k) for k in range(5)]
    assert [b.source for b in built] == [GitSource(git=Path("/srv/linux"), ref=commit) for commit in commits]
    assert len({b.label() for b in built}) == 5 and built[3].label() == f"build:linux@{'3' * 40}"
    assert all(b.patches is None and b.patches_upto is None and b.config == build.config for b in built)
    ends = child_spec(SPEC, build, ranged, Ask(4, 3, ends=True), "range-p4")
    assert [k.build for k in ends.kernels] == [built[0], built[4]]
    assert ends.baseline is not None and ends.baseline.kernel == built[0].label()
    assert [k.build for k in base_spec(SPEC, build, ranged, "range-base").kernels] == [built[0]]
    assert prefix_build(BUILD, SERIES, 2) == BUILD.prefix(2)  # a series: its first patches, as before


def test_a_series_round_trips_through_json_and_its_columns_must_agree() -> None:
    ranged = Series(["a"], ["A <a@example.org>"], ["a | 1 +"], commits=["0" * 40, "1" * 40])
    assert Series.from_json(ranged.to_json()) == ranged and "commits" not in SERIES.to_json()
    assert Series.from_json(SERIES.to_json()) == SERIES
    with pytest.raises(ValueError, match="do not agree in number"):
        Series(["a"], ["A <a@example.org>"], ["a | 1 +"], commits=["1" * 40])
    with pytest.raises(ValueError, match="do not agree in number"):
        Series(["a", "b"], ["A <a@example.org>"], ["a | 1 +"])


def _stored(artifact: str, sysctl: dict[str, str], bisection: str | None = None) -> dict[str, Any]:
    return {
        "campaign_id": f"c-{next(_IDS)}",
        **({"bisection": bisection} if bisection else {}),
        "runs": [
            {
                "run_id": "r001",
                "kernel_label": "build:linux-source-6.1+series.mbox[:2]",
                "kernel_info": {"artifact": artifact},
                "settings": {"sysctl": sysctl, "node_ram_mib": 144, "workload": {"mib": 160}},
                "verdict": "pass",
                "nodes": [],
            }
        ],
    }


def test_only_runs_of_the_same_kernel_and_settings_from_other_campaigns_are_reusable() -> None:
    same = _stored("a" * 64, {})
    records = [
        same,
        _stored("b" * 64, {}),  # another kernel
        _stored("a" * 64, {"vm.page-cluster": "0"}),  # other settings
        _stored("a" * 64, {}, bisection="bisect-pc-1"),  # this bisection's own: gathered already
    ]
    settings = settings_key(campaign_of(same).runs[0])
    found = reusable(records, "a" * 64, settings, "bisect-pc-1")
    assert found.campaigns == [same["campaign_id"]] and len(found.runs) == 1
