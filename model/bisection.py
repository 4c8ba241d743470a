"""Bisection over the prefixes of a patch series, judged by runs: which patch made it worse.

Prefix 0 is the base (no patch), prefix n the whole series of n patches; prefix k has the
first k patches applied, so patch k is the one prefix k adds. The ends are confirmed
first (is the whole series worse than the base at all?); then each step picks the prefix
in the middle of the range still open, as ``git bisect`` does, and a judge says whether
it is good (like the base), bad (like the whole), undecided, or could not be built. An
undecided step is judged again with more repeats up to a cap; still undecided, the
bisection stops and names the range it could not split, rather than guessing. A prefix
that does not build is skipped like ``git bisect skip``.

Pure: the judge (builds, runs, statistics) is the caller's.
"""

from __future__ import annotations

import enum
import functools
from collections.abc import Callable
from dataclasses import dataclass, field


class Step(enum.Enum):
    """What the judge made of one prefix."""

    GOOD = "good"
    BAD = "bad"
    UNDECIDED = "undecided"
    SKIP = "skip"  # did not build


class Outcome(enum.Enum):
    """How a bisection ended."""

    CULPRIT = "culprit"  # one patch: the first bad
    RANGE = "range"  # between two patches, skipped or undecided prefixes in the way
    NOTHING = "nothing"  # the whole series is not worse than the base
    UNDECIDED_ENDS = "undecided-ends"  # cannot tell whether the whole series is worse


# A judge looks at one prefix with a number of repeats and says what it is.
Judge = Callable[[int, int], Step]


@dataclass(frozen=True)
class LoggedStep:
    """One judgement, for the bisection's log."""

    prefix: int
    repeats: int
    step: Step


@dataclass
class Bisection:
    """The state of one bisection over a series of ``patches`` patches."""

    patches: int
    repeats: int = 1
    max_repeats: int = 3
    known: dict[int, Step] = field(default_factory=dict)
    log: list[LoggedStep] = field(default_factory=list)

    def __post_init__(self) -> None:
        if self.patches < 1:
            raise ValueError("a bisection needs a series of at least one patch")
        if not 1 <= self.repeats <= self.max_repeats:
            raise ValueError(f"repeats {self.repeats} must be from 1 to the cap {self.max_repeats}")

    # -- where it stands -------------------------------------------------------------------
    @property
    def last_good(self) -> int:
        """The longest prefix judged good (the base until another is)."""
        return max((k for k, step in self.known.items() if step is Step.GOOD), default=0)

    @property
    def first_bad(self) -> int:
        """The shortest prefix past the last good one judged bad (the whole series until one is)."""
        good = self.last_good
        return min((k for k, step in self.known.items() if step is Step.BAD and k > good), default=self.patches)

    def next_prefix(self) -> int | None:
        """The prefix to judge next: the open one nearest the middle of the range (the lower
        on a tie, as git does); None when nothing in the range is left to judge."""
        good, bad = self.last_good, self.first_bad
        open_prefixes = [k for k in range(good + 1, bad) if k not in self.known]
        if not open_prefixes:
            return None
        middle = (good + bad) / 2
        return min(open_prefixes, key=lambda k: (abs(k - middle), k))

    def record(self, prefix: int, repeats: int, step: Step) -> None:
        if not 0 <= prefix <= self.patches:
            raise ValueError(f"prefix {prefix} is outside 0..{self.patches}")
        self.known[prefix] = step
        self.log.append(LoggedStep(prefix, repeats, step))

    # -- running it ---------------------------------------------------------------------------
    def run(self, judge_ends: Callable[[int], Step], judge: Judge) -> Result:
        """Confirm the ends with ``judge_ends(repeats)`` (BAD: the whole series is worse),
        then bisect with ``judge(prefix, repeats)``."""
        ends = self._judged(self.patches, judge_ends)
        if ends is Step.UNDECIDED:
            return Result(Outcome.UNDECIDED_ENDS, 0, self.patches, self.log)
        if ends is not Step.BAD:
            return Result(Outcome.NOTHING, 0, self.patches, self.log)
        self.known[0] = Step.GOOD
        while (prefix := self.next_prefix()) is not None:
            step = self._judged(prefix, functools.partial(judge, prefix))
            if step is Step.UNDECIDED:
                return Result(Outcome.RANGE, self.last_good, self.first_bad, self.log)
        good, bad = self.last_good, self.first_bad
        outcome = Outcome.CULPRIT if bad == good + 1 else Outcome.RANGE
        return Result(outcome, good, bad, self.log)

    def _judged(self, prefix: int, judge: Callable[[int], Step]) -> Step:
        """Judge with more repeats while undecided, up to the cap; record the last answer."""
        repeats = self.repeats
        while True:
            step = judge(repeats)
            if step is not Step.UNDECIDED or repeats >= self.max_repeats:
                self.record(prefix, repeats, step)
                return step
            self.log.append(LoggedStep(prefix, repeats, step))
            repeats = min(self.max_repeats, repeats * 2)


@dataclass(frozen=True)
class Result:
    """The answer: the last good and the first bad prefix (the culprit is patch ``first_bad``
    when they are adjacent), and every judgement made."""

    outcome: Outcome
    last_good: int
    first_bad: int
    log: list[LoggedStep]

    @property
    def culprit(self) -> int | None:
        """The first bad patch (1-based: patch k is the one prefix k adds), when found."""
        return self.first_bad if self.outcome is Outcome.CULPRIT else None

    def describe(self) -> str:
        if self.outcome is Outcome.CULPRIT:
            return f"patch {self.first_bad} is the first bad one"
        if self.outcome is Outcome.NOTHING:
            return "nothing to bisect: the whole series is not worse than the base"
        if self.outcome is Outcome.UNDECIDED_ENDS:
            return "cannot tell whether the whole series is worse than the base"
        return f"the first bad patch is between patch {self.last_good + 1} and patch {self.first_bad}"
