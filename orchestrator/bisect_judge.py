"""Is a prefix of the series like the base or like the whole? The bisection's judgement of
one step, by the same statistics as ``swaplab compare`` (``orchestrator.stats``).

A step is compared twice on the campaign's primary figure: with the base's runs (pooled
across the bisection's steps) and with the whole series' runs. It is **bad** when it is a
regression against the base and not better than the whole; **good** when it is better
than the whole and no regression against the base; anything else (too few runs, or both
or neither comparison calling a change) is **undecided**, and the bisection asks for more
repeats before it concludes anything.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from model.bisection import Step
from orchestrator.stats import DEFAULT_CONFIDENCE, FigureComparison, Policy, compare_figure


@dataclass(frozen=True)
class StepJudgement:
    """A step's class and the two comparisons it came from (for the bisection's log)."""

    step: Step
    against_base: FigureComparison
    against_whole: FigureComparison

    def summary(self) -> str:
        return (
            f"{self.step.value}: against the base {self.against_base.summary()}; "
            f"against the whole series {self.against_whole.summary()}"
        )


def judge_step(
    figure: str,
    base: Sequence[float | None],
    whole: Sequence[float | None],
    step: Sequence[float | None],
    policy: Policy | None = None,
    confidence: float = DEFAULT_CONFIDENCE,
) -> StepJudgement:
    """Classify the runs ``step`` of one prefix between ``base`` and ``whole`` on ``figure``."""
    against_base = compare_figure(figure, base, step, policy, confidence)
    against_whole = compare_figure(figure, whole, step, policy, confidence)
    worse_than_base = against_base.outcome == "regression"
    better_than_whole = against_whole.outcome == "improvement"
    if worse_than_base and not better_than_whole:
        verdict = Step.BAD
    elif better_than_whole and not worse_than_base:
        verdict = Step.GOOD
    else:
        verdict = Step.UNDECIDED
    return StepJudgement(verdict, against_base, against_whole)


def judge_ends(
    figure: str,
    base: Sequence[float | None],
    whole: Sequence[float | None],
    policy: Policy | None = None,
    confidence: float = DEFAULT_CONFIDENCE,
) -> tuple[Step, FigureComparison]:
    """Whether the whole series is worse than the base: BAD (a regression: bisect), GOOD (no
    change or better: nothing to bisect) or UNDECIDED (too few runs to say)."""
    found = compare_figure(figure, base, whole, policy, confidence)
    if found.outcome == "regression":
        return Step.BAD, found
    if found.outcome == "insufficient data":
        return Step.UNDECIDED, found
    return Step.GOOD, found
