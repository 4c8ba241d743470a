"""Bisection over a series' prefixes with a fake judge: where the culprit is, steps that
cannot decide or do not build, and a series whose ends do not differ."""

from __future__ import annotations

import json
import math

import pytest

from model.bisection import Ask, Bisection, Judge, Outcome, Step


def _judge_with_culprit(culprit: int, skip: frozenset[int] = frozenset(), calls: list[int] | None = None) -> Judge:
    def judge(prefix: int, repeats: int) -> Step:
        if calls is not None:
            calls.append(prefix)
        if prefix in skip:
            return Step.SKIP
        return Step.BAD if prefix >= culprit else Step.GOOD

    return judge


@pytest.mark.parametrize("patches", [1, 2, 3, 4, 7, 8, 33])
def test_the_culprit_is_found_wherever_it_is_in_about_log2_steps(patches: int) -> None:
    for culprit in range(1, patches + 1):
        calls: list[int] = []
        result = Bisection(patches).run(lambda repeats: Step.BAD, _judge_with_culprit(culprit, calls=calls))
        assert result.outcome is Outcome.CULPRIT and result.culprit == culprit, (patches, culprit, result)
        assert len(calls) <= math.ceil(math.log2(patches)) if patches > 1 else calls == []
        assert len(set(calls)) == len(calls)  # no prefix judged twice


def test_the_ends_are_confirmed_first_and_a_series_no_worse_is_nothing_to_bisect() -> None:
    calls: list[int] = []
    result = Bisection(8).run(lambda repeats: Step.GOOD, _judge_with_culprit(3, calls=calls))
    assert result.outcome is Outcome.NOTHING and result.culprit is None and calls == []
    assert "nothing to bisect" in result.describe()
    assert result.describe("commit") == "nothing to bisect: the bad commit is not worse than the good one"


def test_ends_that_stay_undecided_up_to_the_cap_are_said_so() -> None:
    asked: list[int] = []

    def ends(repeats: int) -> Step:
        asked.append(repeats)
        return Step.UNDECIDED

    result = Bisection(8, repeats=1, max_repeats=4).run(ends, _judge_with_culprit(3))
    assert result.outcome is Outcome.UNDECIDED_ENDS and asked == [1, 2, 4]
    assert [(s.prefix, s.repeats, s.step) for s in result.log] == [(8, r, Step.UNDECIDED) for r in (1, 2, 4)]


def test_an_undecided_step_gets_more_repeats_and_then_decides() -> None:
    def judge(prefix: int, repeats: int) -> Step:
        if prefix == 4 and repeats < 3:
            return Step.UNDECIDED
        return Step.BAD if prefix >= 5 else Step.GOOD

    result = Bisection(8, repeats=1, max_repeats=3).run(lambda repeats: Step.BAD, judge)
    assert result.outcome is Outcome.CULPRIT and result.culprit == 5
    assert [(s.prefix, s.repeats) for s in result.log if s.prefix == 4] == [(4, 1), (4, 2), (4, 3)]


def test_a_step_undecided_at_the_cap_ends_the_bisection_with_a_range_not_a_guess() -> None:
    def judge(prefix: int, repeats: int) -> Step:
        return Step.UNDECIDED if prefix == 2 else (Step.BAD if prefix >= 3 else Step.GOOD)

    result = Bisection(8, max_repeats=2).run(lambda repeats: Step.BAD, judge)
    assert result.outcome is Outcome.RANGE and result.culprit is None
    assert (result.last_good, result.first_bad) == (0, 4)  # 4 bad, then 2 undecided: patches 1-4
    assert result.describe() == "the first bad patch is between patch 1 and patch 4"


def test_prefixes_that_do_not_build_are_skipped_and_the_range_named() -> None:
    result = Bisection(8).run(lambda repeats: Step.BAD, _judge_with_culprit(5, skip=frozenset({4})))
    assert result.outcome is Outcome.RANGE and (result.last_good, result.first_bad) == (3, 5)
    assert Step.SKIP in {s.step for s in result.log}
    assert result.describe() == "the first bad patch is between patch 4 and patch 5"
    assert result.describe("commit") == "the first bad commit is between commit 4 and commit 5"


def test_a_skip_beside_the_culprit_does_not_hide_it_when_the_range_still_splits() -> None:
    result = Bisection(8).run(lambda repeats: Step.BAD, _judge_with_culprit(6, skip=frozenset({3})))
    assert result.outcome is Outcome.CULPRIT and result.culprit == 6


def test_the_next_prefix_is_the_middle_of_the_open_range_the_lower_on_a_tie() -> None:
    bisection = Bisection(8)
    bisection.known.update({0: Step.GOOD, 8: Step.BAD})
    assert bisection.next_prefix() == 4
    bisection.known[4] = Step.SKIP
    assert bisection.next_prefix() == 3
    bisection.known.update({3: Step.SKIP, 5: Step.SKIP})
    assert bisection.next_prefix() == 2


@pytest.mark.parametrize(("patches", "repeats", "cap"), [(0, 1, 3), (4, 0, 3), (4, 4, 3)])
def test_a_bisection_of_nothing_or_with_impossible_repeats_is_refused(patches: int, repeats: int, cap: int) -> None:
    with pytest.raises(ValueError):
        Bisection(patches, repeats=repeats, max_repeats=cap)


def test_a_bisection_kept_between_steps_resumes_where_it_was() -> None:
    """The control plane keeps the state in Redis between steps and after a restart."""

    def judge(prefix: int, repeats: int) -> Step:
        if prefix == 4 and repeats < 2:
            return Step.UNDECIDED
        return Step.BAD if prefix >= 5 else Step.GOOD

    whole = Bisection(8, max_repeats=3).run(lambda repeats: Step.BAD, judge)
    state = Bisection(8, max_repeats=3)
    asked = []
    while (ask := state.ask()) is not None:
        asked.append(ask)
        state.answer(ask, Step.BAD if ask.ends else judge(ask.prefix, ask.repeats))
        state = Bisection.from_json(json.loads(json.dumps(state.to_json())))  # a restart after every step
    assert asked[0] == Ask(8, 1, ends=True) and Ask(4, 2) in asked
    assert state.result() == whole and state.result().culprit == 5  # type: ignore[union-attr]


def test_an_answer_to_another_question_or_a_doctored_state_is_refused() -> None:
    state = Bisection(8)
    with pytest.raises(ValueError, match="not what this bisection asked next"):
        state.answer(Ask(4, 1), Step.GOOD)  # the ends come first
    state.answer(Ask(8, 1, ends=True), Step.BAD)
    kept = state.to_json()
    with pytest.raises(ValueError, match="not what this bisection asked next"):
        Bisection.from_json({**kept, "log": [[8, 1, "bad"], [2, 1, "good"]]})  # 4 is the middle
    with pytest.raises(ValueError, match="do not follow from its log"):
        Bisection.from_json({**kept, "ends": "good"})
