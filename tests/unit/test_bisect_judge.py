"""A step between the base and the whole series, judged by the comparison's statistics."""

from __future__ import annotations

from model.bisection import Step
from orchestrator.bisect_judge import judge_ends, judge_step

BASE = [100.0, 101.5, 99.0, 100.8, 99.6, 100.2]  # swap-in MiB/s, a spread of about 1 %
WHOLE = [42.0, 41.1, 43.0, 42.4, 41.7, 42.2]  # 58 % slower: vm.page-cluster=0


def test_a_step_like_the_base_is_good_and_one_like_the_whole_is_bad() -> None:
    assert judge_step("swap_in_mibps", BASE, WHOLE, [100.4, 99.2, 101.0, 99.9, 100.6]).step is Step.GOOD
    bad = judge_step("swap_in_mibps", BASE, WHOLE, [42.6, 41.4, 42.9, 41.9, 42.1])
    assert bad.step is Step.BAD and "regression" in bad.summary()


def test_too_few_runs_for_an_interval_are_undecided_not_a_guess() -> None:
    assert judge_step("swap_in_mibps", BASE, WHOLE, [42.0, 41.0]).step is Step.UNDECIDED


def test_a_step_halfway_between_is_undecided() -> None:
    # Worse than the base and better than the whole: neither end's.
    assert judge_step("swap_in_mibps", BASE, WHOLE, [70.1, 71.0, 69.5, 70.4, 70.8]).step is Step.UNDECIDED


def test_the_ends_say_whether_there_is_anything_to_bisect() -> None:
    assert judge_ends("swap_in_mibps", BASE, WHOLE)[0] is Step.BAD
    assert judge_ends("swap_in_mibps", BASE, [100.3, 99.4, 100.9, 99.8, 100.1])[0] is Step.GOOD
    assert judge_ends("swap_in_mibps", BASE, WHOLE[:2])[0] is Step.UNDECIDED
    # Lower wall time is better: a slower series is a regression on that figure too.
    assert judge_ends("workload_wall_s", [30.0, 30.4, 29.8, 30.1, 30.2], [40.0, 41.0, 40.5, 39.8, 40.2])[0] is Step.BAD
