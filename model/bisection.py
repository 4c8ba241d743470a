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
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any


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


@dataclass(frozen=True)
class Ask:
    """What to judge next: a prefix (the whole series, for the ends) with this many repeats."""

    prefix: int
    repeats: int
    ends: bool = False


@dataclass
class Bisection:
    """The state of one bisection over a series of ``patches`` patches.

    A state machine a caller drives across processes: ``ask()`` says what to judge next,
    ``answer()`` records the judgement, ``result()`` is the answer once there is one; the
    state round-trips through ``to_json``/``from_json`` (the control plane keeps it between
    steps and resumes it after a restart). ``run`` drives it with a synchronous judge.
    """

    patches: int
    repeats: int = 1
    max_repeats: int = 3
    known: dict[int, Step] = field(default_factory=dict)
    log: list[LoggedStep] = field(default_factory=list)
    ends: Step | None = None  # the whole series against the base, once decided

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

    # -- driving it ---------------------------------------------------------------------------
    def ask(self) -> Ask | None:
        """What to judge next; None once the bisection has its answer."""
        if self.result() is not None:
            return None
        pending = self._pending()
        if pending is not None:
            return pending
        if self.ends is None:
            return Ask(self.patches, self.repeats, ends=True)
        prefix = self.next_prefix()
        return None if prefix is None else Ask(prefix, self.repeats)

    def answer(self, ask: Ask, step: Step) -> None:
        """The judgement of ``ask``: recorded, or logged to ask again with more repeats."""
        if ask != self.ask():
            raise ValueError(f"{ask} is not what this bisection asked next ({self.ask()})")
        if step is Step.UNDECIDED and ask.repeats < self.max_repeats:
            self.log.append(LoggedStep(ask.prefix, ask.repeats, step))  # asked again, more repeats
            return
        if ask.ends:
            self.ends = step
            self.log.append(LoggedStep(ask.prefix, ask.repeats, step))
            if step is Step.BAD:
                self.known[0] = Step.GOOD
            return
        self.record(ask.prefix, ask.repeats, step)

    def _pending(self) -> Ask | None:
        """The last judgement again with more repeats, when it was undecided below the cap."""
        if not self.log or self.log[-1].step is not Step.UNDECIDED:
            return None
        last = self.log[-1]
        if last.repeats >= self.max_repeats:
            return None
        decided = last.prefix in self.known or (last.prefix == self.patches and self.ends is not None)
        if decided:
            return None
        return Ask(last.prefix, min(self.max_repeats, last.repeats * 2), ends=self.ends is None)

    def result(self) -> Result | None:
        """The answer, once there is one."""
        if self.ends is None:
            return None
        if self.ends is Step.UNDECIDED:
            return Result(Outcome.UNDECIDED_ENDS, 0, self.patches, self.log)
        if self.ends is not Step.BAD:
            return Result(Outcome.NOTHING, 0, self.patches, self.log)
        if any(step is Step.UNDECIDED for step in self.known.values()):
            return Result(Outcome.RANGE, self.last_good, self.first_bad, self.log)
        if self._pending() is not None or self.next_prefix() is not None:
            return None
        good, bad = self.last_good, self.first_bad
        return Result(Outcome.CULPRIT if bad == good + 1 else Outcome.RANGE, good, bad, self.log)

    def run(self, judge_ends: Callable[[int], Step], judge: Judge) -> Result:
        """Confirm the ends with ``judge_ends(repeats)`` (BAD: the whole series is worse),
        then bisect with ``judge(prefix, repeats)``."""
        while (ask := self.ask()) is not None:
            self.answer(ask, judge_ends(ask.repeats) if ask.ends else judge(ask.prefix, ask.repeats))
        result = self.result()
        assert result is not None  # nothing left to ask: answered
        return result

    # -- kept between steps -------------------------------------------------------------------
    def to_json(self) -> dict[str, Any]:
        return {
            "patches": self.patches,
            "repeats": self.repeats,
            "max_repeats": self.max_repeats,
            "ends": self.ends.value if self.ends is not None else None,
            "log": [[s.prefix, s.repeats, s.step.value] for s in self.log],
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Bisection:
        """The state ``to_json`` kept, replayed: its log is checked as it is read back."""
        state = cls(int(data["patches"]), int(data["repeats"]), int(data["max_repeats"]))
        for prefix, repeats, step in data["log"]:
            state.answer(Ask(int(prefix), int(repeats), ends=state.ends is None), Step(step))
        if (state.ends.value if state.ends is not None else None) != data["ends"]:
            raise ValueError("the kept bisection's ends do not follow from its log")
        return state


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

    def describe(self, unit: str = "patch") -> str:
        """The answer in a sentence; ``unit`` is what a prefix adds (a patch, or a commit of a
        git range: its ends are then the good and the bad commit)."""
        whole, base = ("the whole series", "the base") if unit == "patch" else ("the bad commit", "the good one")
        if self.outcome is Outcome.CULPRIT:
            return f"{unit} {self.first_bad} is the first bad one"
        if self.outcome is Outcome.NOTHING:
            return f"nothing to bisect: {whole} is not worse than {base}"
        if self.outcome is Outcome.UNDECIDED_ENDS:
            return f"cannot tell whether {whole} is worse than {base}"
        return f"the first bad {unit} is between {unit} {self.last_good + 1} and {unit} {self.first_bad}"
