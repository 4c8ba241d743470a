"""Change points over a campaign's nightly history: which night, which kernel change, which figure, how much.

A nightly campaign leaves one stored instance per night in the results database
(``orchestrator.history``). Over that series this module finds, per figure, the nights
where the figure's level changed and stayed changed, and says what changed with it.

**One value per night.** A night's value of a figure is the median over that night's
*passing* runs (each run's value is the mean over its nodes, as ``ResultsDb.history``
gives it), as in comparisons: a run that failed keeps its figures for inspection but does
not count. A night without any passing run contributes nothing at all and is listed as
skipped (a failed night is not a night at level 0). A night that *failed because the
nightly comparison found a regression* still has passing runs: it counts, and it is
exactly the night to see. A campaign that runs several workloads gets one series per
workload and figure: their levels differ, and a night where one workload's runs failed
would otherwise look like a step.

**E-divisive means** (Matteson & James, 2014; MongoDB's ``signal-processing-algorithms``,
the method MongoDB and Apache Otava use for continuous performance testing): the series
is split where the energy distance between the part before and the part after is largest,
and each part again, for as long as a permutation test finds the split significant
(``PVALUE`` over ``PERMUTATIONS`` shuffles of the nights). It assumes no bell curve and
needs no window: nights are compared as whole segments, so one odd night does not make
a change point of its own unless it is far off every other. A split is placed where the
evidence is best; when a change is small against the night-to-night spread it may land a
night early or late, so the kernel named is that of the two nights around the split.

**Deterministic.** The library shuffles with numpy's *global* random generator
(``np.random.shuffle``). Each series is analysed with that generator seeded (``SEED``),
its previous state restored afterwards, under a lock: the same history always gives the
same change points, and nothing else in the process has its random numbers changed.

**One clock.** Figures measured on guest time and on host time (``model.figures.Timing``)
are different quantities, and so are figures of runs with faults and without. Only the
nights on the newest night's clock and faults form the series; a campaign that changed its
``timing`` or its ``faults`` starts afresh, its older nights skipped with that reason,
rather than showing the switch as a change point.

**Too few nights.** A series with fewer than ``MIN_NIGHTS`` nights is "too few nights",
never "no change": no split of six nights can reach p < 0.05 in a permutation test (three
a side: 1 of 20 orders at best, two-sided 1 in 10); eight is the fewest that can.

**Minimum segment.** A split that leaves fewer than ``MIN_SEGMENT`` nights on either side
is dropped: one odd night - the newest, say, a host busy that night - is not a new level
(the nightly comparison judges that night on its own). A new level shows once it has held
for ``MIN_SEGMENT`` nights.

**What a change point says.** The night where the new level starts (its campaign id and
finished_at), the kernel release of the night before and of that night (the kernel change
it coincides with, or none: a sysctl, the host or the NFS server moved), the medians of
the segments before and after (the nights between the neighbouring change points), the
change in percent (None when the level before is 0: the difference then says it), and
whether it is worse or better by the figure's direction (``model.figures``).

**Tolerance.** E-divisive finds changes that are real but may be tiny (a very stable
figure shifting 2 %). A change point is *beyond tolerance* by the comparisons' rule
(``orchestrator.stats.DEFAULT_POLICIES``: the ratio of the medians beyond the
figure's tolerance either way, and the difference beyond its absolute floor); the others
are "below tolerance": kept, shown only when asked for (``--all``) and never stored.
"""

from __future__ import annotations

import math
import statistics
import threading
import time
from collections import Counter, defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

# The library ships no type hints.
from signal_processing_algorithms.energy_statistics.energy_statistics import (  # type: ignore[import-untyped]
    e_divisive,
)

from model.figures import BY_NAME, FIGURE_NAMES, Better
from orchestrator.stats import DEFAULT_POLICIES, Policy

__all__ = [
    "HISTORY_NIGHTS",
    "MIN_NIGHTS",
    "MIN_SEGMENT",
    "PERMUTATIONS",
    "PVALUE",
    "SEED",
    "ChangeAnalysis",
    "ChangePoint",
    "NightValue",
    "SeriesResult",
    "SkippedNight",
    "beyond_tolerance",
    "detect_changes",
    "long_enough",
    "nightly_series",
    "split_points",
]

# The library's default significance; the tolerance, not a smaller p, keeps tiny moves out.
PVALUE = 0.05
# 199 shuffles: p-values in steps of 1/200, so p <= 0.05 means at most 9 shuffles as extreme.
PERMUTATIONS = 199
SEED = 0
MIN_NIGHTS = 8
MIN_SEGMENT = 3
# How many of the newest nights are analysed: a year of nightly runs. The distance matrix
# and each permutation are quadratic in the nights.
HISTORY_NIGHTS = 365
PASS = "pass"  # orchestrator.verdict.Verdict.PASS, without loading the judging code
NO_PASSING_RUN = "no passing run"

Status = Literal["change", "no change", "too few nights"]
SeriesKey = tuple[str | None, str]  # (workload, figure)

# The library draws from numpy's global generator: one analysis at a time in a process.
_RNG_LOCK = threading.Lock()


@dataclass(frozen=True)
class NightValue:
    """One night of one series: its instance, kernel release(s) and the figure's value."""

    campaign_id: str
    finished_at: float
    release: str | None
    value: float


@dataclass(frozen=True)
class SkippedNight:
    """A stored instance that contributes nothing, and why."""

    campaign_id: str
    finished_at: float
    verdict: str | None
    reason: str

    def to_json(self) -> dict[str, Any]:
        """A JSON-safe dict."""
        return {
            "campaign_id": self.campaign_id,
            "finished_at": self.finished_at,
            "verdict": self.verdict,
            "reason": self.reason,
        }


@dataclass(frozen=True)
class ChangePoint:
    """Where one figure's level changed: the first night at the new level, and by how much."""

    figure: str
    unit: str
    better: Better
    workload: str | None
    campaign_id: str  # the night where the new level starts
    at: float  # that night's finished_at, epoch seconds
    release_before: str | None  # the kernel of the last night before it
    release_after: str | None  # the kernel of that night
    median_before: float  # over the segment before (from the previous change point)
    median_after: float  # over the segment after (to the next change point)
    nights_before: int
    nights_after: int
    change_pct: float | None  # None when the level before is 0
    difference: float  # median_after - median_before, in the figure's unit
    worse: bool
    beyond_tolerance: bool
    tolerance: float
    abs_tolerance: float | None

    @property
    def kernel_changed(self) -> bool:
        """Whether the kernel release differs between the nights around the change."""
        return self.release_before != self.release_after

    @property
    def date(self) -> str:
        """The night's date (UTC, as the reports print times)."""
        return time.strftime("%Y-%m-%d", time.gmtime(self.at))

    def summary(self, with_workload: bool = False) -> str:
        """One line: night, figure, both medians, change, direction, kernel change."""
        figure = f"{self.figure} ({self.workload})" if with_workload and self.workload else self.figure
        medians = f"{_num(self.median_before)} -> {_num(self.median_after)} {self.unit}"
        return f"{self.date} (night {self.campaign_id}): {figure} {medians} ({self._how()}), {self._kernel()}"

    def _how(self) -> str:
        size = f"{self.change_pct:+.1f} %" if self.change_pct is not None else f"{self.difference:+.3g} {self.unit}"
        direction = "worse" if self.worse else ("better" if self.difference else "same median")
        if self.beyond_tolerance:
            return f"{size}, {direction}"
        return f"{size}, {direction}, below the {self.tolerance * 100:g} % tolerance"

    def _kernel(self) -> str:
        if self.kernel_changed:
            return f"kernel {self.release_before or 'unknown'} -> {self.release_after or 'unknown'}"
        return f"no kernel change ({self.release_after or 'release unknown'})"

    def to_json(self) -> dict[str, Any]:
        """A JSON-safe dict, with the one-line summary."""
        return {
            "figure": self.figure,
            "unit": self.unit,
            "better": self.better,
            "workload": self.workload,
            "campaign_id": self.campaign_id,
            "at": self.at,
            "date": self.date,
            "release_before": self.release_before,
            "release_after": self.release_after,
            "kernel_changed": self.kernel_changed,
            "median_before": self.median_before,
            "median_after": self.median_after,
            "nights_before": self.nights_before,
            "nights_after": self.nights_after,
            "change_pct": self.change_pct,
            "difference": self.difference,
            "worse": self.worse,
            "beyond_tolerance": self.beyond_tolerance,
            "tolerance": self.tolerance,
            "abs_tolerance": self.abs_tolerance,
            "summary": self.summary(),  # the workload has its own key
        }


@dataclass(frozen=True)
class SeriesResult:
    """One figure's series (of one workload): how many nights, the outcome, its change points.

    ``status`` is "change" when a change point is beyond tolerance, "no change" when none
    is (change points below tolerance are still listed), "too few nights" below the minimum.
    """

    figure: str
    workload: str | None
    nights: int
    status: Status
    change_points: tuple[ChangePoint, ...] = ()

    def to_json(self, show_all: bool = False) -> dict[str, Any]:
        """A JSON-safe dict; change points below tolerance only with ``show_all``."""
        shown = [p for p in self.change_points if show_all or p.beyond_tolerance]
        return {
            "figure": self.figure,
            "workload": self.workload,
            "nights": self.nights,
            "status": self.status,
            "change_points": [p.to_json() for p in shown],
        }


@dataclass(frozen=True)
class ChangeAnalysis:
    """The change points of every figure over one campaign's nights, and what was left out."""

    campaign: str
    instances: int  # stored instances read, skipped ones included
    first_at: float | None
    last_at: float | None
    skipped: tuple[SkippedNight, ...]
    series: tuple[SeriesResult, ...]
    pvalue: float = PVALUE
    permutations: int = PERMUTATIONS
    seed: int = SEED
    min_nights: int = MIN_NIGHTS

    @property
    def change_points(self) -> list[ChangePoint]:
        """The change points beyond tolerance, by night (what is reported and stored)."""
        return [p for p in self.all_change_points if p.beyond_tolerance]

    @property
    def all_change_points(self) -> list[ChangePoint]:
        """Every change point found, below tolerance too, by night then figure order."""
        points = [p for s in self.series for p in s.change_points]
        order = {name: i for i, name in enumerate(FIGURE_NAMES)}
        return sorted(points, key=lambda p: (p.at, p.campaign_id, p.workload or "", order.get(p.figure, 0)))

    @property
    def workloads(self) -> list[str | None]:
        """The workloads with a series, in first-seen order."""
        return list(dict.fromkeys(s.workload for s in self.series))

    def lines(self, show_all: bool = False) -> list[str]:
        """One line per change point (below tolerance too with ``show_all``), or one saying there is none."""
        points = self.all_change_points if show_all else self.change_points
        several = len(self.workloads) > 1
        if points:
            return [p.summary(with_workload=several) for p in points]
        span = f" ({_day(self.first_at)} .. {_day(self.last_at)})" if self.first_at is not None else ""
        counted = self.instances - len(self.skipped)
        if all(s.status == "too few nights" for s in self.series):
            # Never "no change" from too few nights: nothing could have been seen.
            return [
                f"too few nights to tell change points in {self.campaign}: {counted} with a passing run{span}, "
                f"at least {self.min_nights} needed"
            ]
        return [f"no change point beyond tolerance in {counted} night(s) of {self.campaign}{span}"]

    def notes(self, show_all: bool = False) -> list[str]:
        """What the lines leave out: nights not counted, series too short, hidden small changes."""
        notes = []
        failed = [s.campaign_id for s in self.skipped if s.reason == NO_PASSING_RUN]
        if failed:
            notes.append(f"{len(failed)} night(s) without a passing run, not counted: {', '.join(failed)}")
        other = Counter(s.reason for s in self.skipped if s.reason != NO_PASSING_RUN)
        notes += [f"{count} night(s) not counted: {reason}" for reason, count in other.items()]
        short = [s for s in self.series if s.status == "too few nights"]
        for (workload, nights), names in _grouped_names(short).items():
            where = f" of workload {workload}" if len(self.workloads) > 1 and workload else ""
            notes.append(
                f"too few nights{where} ({nights}, at least {self.min_nights} needed), "
                f"no change point can be told: {', '.join(names)}"
            )
        hidden = len(self.all_change_points) - len(self.change_points)
        if hidden and not show_all:
            notes.append(f"{hidden} change point(s) below the figures' tolerance not shown (--all shows them)")
        return notes

    def to_json(self, show_all: bool = False) -> dict[str, Any]:
        """A JSON-safe dict; change points below tolerance only with ``show_all``."""
        points = self.all_change_points if show_all else self.change_points
        return {
            "campaign": self.campaign,
            "instances": self.instances,
            "first_at": self.first_at,
            "last_at": self.last_at,
            "settings": {
                "method": "e-divisive means (signal-processing-algorithms)",
                "pvalue": self.pvalue,
                "permutations": self.permutations,
                "seed": self.seed,
                "min_nights": self.min_nights,
            },
            "change_points": [p.to_json() for p in points],
            "series": [s.to_json(show_all) for s in self.series],
            "skipped": [s.to_json() for s in self.skipped],
        }


# -- the series ---------------------------------------------------------------------------


def nightly_series(
    instances: Iterable[Mapping[str, Any]],
) -> tuple[dict[SeriesKey, list[NightValue]], list[SkippedNight]]:
    """Per (workload, figure), one value per night, oldest first; and the nights skipped.

    ``instances`` are ``ResultsDb.history()`` items in any order (they are sorted by
    finished_at, then campaign id). Only nights measured on the newest night's clock (and faults) count:
    figures on guest time and on host time are different quantities, so a campaign that
    changed its ``timing`` starts a new series (the older nights are skipped, with why).
    """
    series: dict[SeriesKey, list[NightValue]] = defaultdict(list)
    skipped: list[SkippedNight] = []
    nights = sorted(instances, key=lambda i: (float(i.get("finished_at") or 0), str(i.get("campaign_id"))))
    passing = {str(item.get("campaign_id")): _passing(item) for item in nights}
    newest = next((_clock(runs) for runs in reversed(list(passing.values())) if runs), None)
    for item in nights:
        cid, finished = str(item.get("campaign_id")), float(item.get("finished_at") or 0)
        runs = passing[cid]
        if not runs or _clock(runs) != newest:
            why = f"measured on {_clock(runs)}, the newest nights on {newest}" if runs else NO_PASSING_RUN
            skipped.append(SkippedNight(cid, finished, item.get("verdict"), why))
            continue
        for workload, group in _group_by_workload(runs).items():
            release = _release(group)
            for name in FIGURE_NAMES:
                values = [v for run in group if (v := _finite((run.get("figures") or {}).get(name))) is not None]
                if values:
                    series[(workload, name)].append(NightValue(cid, finished, release, statistics.median(values)))
    return dict(series), skipped


def _passing(item: Mapping[str, Any]) -> list[Mapping[str, Any]]:
    return [run for run in item.get("runs") or [] if run.get("verdict") == PASS]


def _clock(runs: Sequence[Mapping[str, Any]]) -> str:
    """The night's clock (``model.figures.timing_label``; runs stored before it was kept ran
    on host time), and its faults if it had any: nights of other conditions never meet."""
    clock = " + ".join(sorted({str(run.get("timing") or "host") for run in runs}))
    faults = sorted({fault for run in runs for fault in run.get("faults") or []})
    return f"{clock} time with faults ({'; '.join(faults)})" if faults else f"{clock} time"


def _group_by_workload(runs: Sequence[Mapping[str, Any]]) -> dict[str | None, list[Mapping[str, Any]]]:
    groups: dict[str | None, list[Mapping[str, Any]]] = defaultdict(list)
    for run in runs:
        groups[run.get("workload")].append(run)
    return groups


def _release(runs: Sequence[Mapping[str, Any]]) -> str | None:
    """The night's kernel release; several (a campaign of several kernels) joined with ' + '."""
    releases = sorted({str(r) for run in runs if (r := run.get("release"))})
    return " + ".join(releases) if releases else None


def _finite(value: Any) -> float | None:
    # A figure not measured (None) or undefined (NaN) is no value, never a 0.
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        return None
    return float(value)


# -- detection ----------------------------------------------------------------------------


def split_points(
    values: Sequence[float], pvalue: float = PVALUE, permutations: int = PERMUTATIONS, seed: int = SEED
) -> list[int]:
    """E-divisive means' change points of ``values``: the indices where a new segment starts.

    Deterministic: numpy's global generator, which the library shuffles with, is seeded
    with ``seed`` for the call and given its previous state back afterwards.
    """
    if not 0 < pvalue < 1:
        raise ValueError(f"pvalue must be in (0, 1), not {pvalue!r}")
    if isinstance(permutations, bool) or not isinstance(permutations, int) or permutations < 1:
        raise ValueError(f"permutations must be a whole number >= 1, not {permutations!r}")
    series = np.asarray(values, dtype=np.float64)
    with _RNG_LOCK:
        state = np.random.get_state()
        np.random.seed(seed)
        try:
            found = e_divisive(series, pvalue=_library_level(pvalue, permutations), permutations=permutations)
        finally:
            np.random.set_state(state)
    return sorted(int(i) for i in found)


def _library_level(pvalue: float, permutations: int) -> float:
    """The level to hand the library for an exact permutation test at ``pvalue``.

    The library counts the shuffles at least as extreme as the split found (ties count
    against it, as they should) but divides by ``permutations + 1`` without counting the
    observed order itself, one shuffle too few. The exact p-value is (extreme + 1) /
    (permutations + 1); it is <= pvalue exactly when the library's is <= pvalue - 1 /
    (permutations + 1).
    """
    return pvalue - 1 / (permutations + 1)


def long_enough(points: Sequence[int], length: int, min_segment: int) -> list[int]:
    """The split points that leave at least ``min_segment`` nights on each side, in order."""
    kept: list[int] = []
    for point in sorted(points):
        if point - (kept[-1] if kept else 0) >= min_segment and length - point >= min_segment:
            kept.append(point)
    return kept


def detect_changes(
    campaign: str,
    instances: Iterable[Mapping[str, Any]],
    pvalue: float = PVALUE,
    permutations: int = PERMUTATIONS,
    seed: int = SEED,
    min_nights: int = MIN_NIGHTS,
    policies: Mapping[str, Policy] = DEFAULT_POLICIES,
) -> ChangeAnalysis:
    """The change points of every figure over ``campaign``'s stored instances (``ResultsDb.history()`` items)."""
    items = list(instances)
    series, skipped = nightly_series(items)
    results = tuple(
        _analyse(figure, workload, nights, policies[figure], pvalue, permutations, seed, min_nights)
        for (workload, figure), nights in series.items()
    )
    times = [float(i.get("finished_at") or 0) for i in items]
    return ChangeAnalysis(
        campaign=campaign,
        instances=len(items),
        first_at=min(times, default=None),
        last_at=max(times, default=None),
        skipped=tuple(skipped),
        series=results,
        pvalue=pvalue,
        permutations=permutations,
        seed=seed,
        min_nights=min_nights,
    )


def _analyse(
    figure: str,
    workload: str | None,
    nights: Sequence[NightValue],
    policy: Policy,
    pvalue: float,
    permutations: int,
    seed: int,
    min_nights: int,
) -> SeriesResult:
    if len(nights) < min_nights:
        return SeriesResult(figure, workload, len(nights), "too few nights")
    # Every series starts from the same seed: a figure's result does not depend on which
    # other figures were analysed before it.
    found = split_points([n.value for n in nights], pvalue, permutations, seed)
    bounds = [0, *long_enough(found, len(nights), MIN_SEGMENT), len(nights)]
    points = tuple(
        _change_point(figure, workload, nights, bounds[k - 1], bounds[k], bounds[k + 1], policy)
        for k in range(1, len(bounds) - 1)
    )
    status: Status = "change" if any(p.beyond_tolerance for p in points) else "no change"
    return SeriesResult(figure, workload, len(nights), status, points)


def _change_point(
    figure: str, workload: str | None, nights: Sequence[NightValue], start: int, at: int, end: int, policy: Policy
) -> ChangePoint:
    """The change at index ``at`` between the segments [start, at) and [at, end)."""
    info = BY_NAME[figure]
    before = statistics.median(n.value for n in nights[start:at])
    after = statistics.median(n.value for n in nights[at:end])
    difference = after - before
    change_pct = (after / before - 1) * 100 if before > 0 else None
    return ChangePoint(
        figure=figure,
        unit=info.unit,
        better=info.better,
        workload=workload,
        campaign_id=nights[at].campaign_id,
        at=nights[at].finished_at,
        release_before=nights[at - 1].release,
        release_after=nights[at].release,
        median_before=before,
        median_after=after,
        nights_before=at - start,
        nights_after=end - at,
        change_pct=change_pct,
        difference=difference,
        worse=difference < 0 if info.better == "higher" else difference > 0,
        beyond_tolerance=beyond_tolerance(before, after, policy),
        tolerance=policy.tolerance,
        abs_tolerance=policy.abs_tolerance,
    )


def beyond_tolerance(before: float, after: float, policy: Policy) -> bool:
    """The comparisons' rule: the ratio beyond the tolerance either way (a factor), and the
    difference at least the absolute floor; from a level of 0, any difference of the floor or more."""
    difference = after - before
    above_floor = policy.abs_tolerance is None or abs(difference) >= policy.abs_tolerance
    if before <= 0:
        return difference != 0 and above_floor
    factor = 1 + policy.tolerance
    ratio = after / before
    return (ratio > factor or ratio < 1 / factor) and above_floor


# -- text ---------------------------------------------------------------------------------


def _num(value: float) -> str:
    if abs(value) >= 100:
        return f"{value:.0f}"
    return f"{value:.1f}" if abs(value) >= 1 else f"{value:.3g}"


def _day(at: float | None) -> str:
    return "?" if at is None else time.strftime("%Y-%m-%d", time.gmtime(at))


def _grouped_names(results: Sequence[SeriesResult]) -> dict[tuple[str | None, int], list[str]]:
    """The figures of ``results`` per (workload, number of nights): one note for each."""
    names: dict[tuple[str | None, int], list[str]] = defaultdict(list)
    for result in results:
        names[(result.workload, result.nights)].append(result.figure)
    return names
