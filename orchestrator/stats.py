"""Did the candidate kernel (B) change a figure against the baseline (A)? The statistics.

Each side of a comparison is a handful of numbers per figure: one per passing run × node
(``model.figures``; only passing runs count). This module turns two such handfuls into an
outcome a lab engineer can act on, and says how sure it is. In plain words:

**Median, not mean.** One run disturbed by something else on the host (a slow disk, a
scan, a neighbour) moves the mean of five runs a lot and their median hardly at all. The
change of a figure is the ratio of the two medians, B / A, reported in percent
(-33.5 % is B at two thirds of A).

**The interval.** "95 % CI -41.0 .. -25.2 %" means: given how much the runs of each side
scatter, changes from -41 % to -25 % are all compatible with what was measured; a
change outside that range would rarely have produced these numbers. When the interval
includes 0 % (a ratio of 1), the data cannot tell the change from the noise, however large
the middle value looks. The interval is a **bootstrap** interval: each side's values are
resampled with replacement 2,000 times, the ratio of the resampled medians computed each
time, and the middle 95 % of those ratios kept. It assumes no bell curve (run times and
stall counts are skewed and have outliers) and works for medians, which have no simple
formula. The random generator is seeded: the same values give the same interval, every
time, on every machine. With three values per side the interval excludes "no change" only
when every B value lies beyond every A value (the median of three resampled values is one
of them): three is the least that can say anything, and what it says is conservative.

**The outcome** of a figure is "regression" or "improvement" only when *both* hold: the
change is beyond the figure's tolerance (a change of a few percent is not worth a kernel
developer's evening even when it is real), *and* the interval excludes no change (a large
change the data cannot separate from noise is not reported as one). Which of the two
depends on the figure's direction (``better`` in ``model.figures``: lower wall time is
better, lower swap throughput is worse). Otherwise the outcome is "no change", with the
interval shown so the reader sees how small a change the runs could have detected.

A tolerance ``t`` is a factor, the same either way: the change is beyond it when
B / A > 1 + t or B / A < 1 / (1 + t). A 10 % tolerance is +10 % or -9.1 %; a 100 %
tolerance is "doubled or halved" (a linear -100 % could never be reached).

**Zero baselines.** Retransmissions and throttling are often exactly 0 on the baseline;
a ratio to 0 means nothing. When A's median is 0 the change is the *difference* B - A in
the figure's unit, its interval a bootstrap interval of the difference of medians, and
the outcome needs the difference beyond the figure's absolute floor (``abs_tolerance``)
and its interval to exclude 0. The floor also holds for ratios: a change smaller than the
floor in absolute terms is never significant (doubling 1 retransmission is 2). A figure
without a floor has a floor of 0 for a zero baseline.

**Insufficient data.** Below a figure's minimum number of values per side
(``min_repeats``, after None and NaN values are dropped — a figure not measured in a run
is not a 0), the outcome is "insufficient data", never "no change": too few runs cannot
show that nothing changed, only that nothing could be seen. It carries no interval and no
p-value. Add repeats.

**One figure decides.** A comparison looks at nine figures at once; at 95 % each, one
could cry wolf in up to a third of comparisons of identical kernels. So the verdict of a
comparison is the outcome of one **primary** figure chosen before looking (swap-out
throughput by default: what swap over NFS is for). The other figures are reported with
their outcomes, their rank-test p-values and those p-values adjusted for the number of
figures looked at (Holm's method) — to read, never to decide the verdict.

**Rank test.** Beside the interval, a Mann-Whitney U test (two-sided, ``scipy.stats``)
asks whether B's values tend to lie above or below A's, with no assumption about their
distribution, when both sides have at least 3 values. Its p-value is reported, not used
for the outcome, so the outcome and its interval never contradict each other. With 3 vs 3
values its smallest possible p is 0.1, with 4 vs 4 0.029: five or more repeats per side
are what makes a small change visible.

Defaults per figure (a campaign may override ``tolerance`` and ``min_repeats``; the
spread is the coefficient of variation over six repeats of the smoke campaign on the
local QEMU lab, tests/fixtures/figures/recorded.json):

=======================  ======  =====  ==================  ===  ========================================================
figure                   better  tol.   abs. floor          min  why
=======================  ======  =====  ==================  ===  ========================================================
swap_out_mibps           higher  10 %   -                   3    spread 5 %: twice the run-to-run noise
swap_in_mibps            higher  10 %   -                   3    spread 4.5 %: as swap-out, the same mechanism
workload_wall_s          lower   10 %   -                   3    spread 5 %: follows swap throughput
psi_full_share           lower   20 %   -                   3    spread 4 %, but PSI accounting varies with scheduling
allocstall_per_s         lower   25 %   -                   3    spread 10 %: reclaim timing decides who stalls
direct_throttle_per_s    lower   100 %  0.2 1/s             3    1 to 4 events a run (spread 60 %): only doubling counts
majfault_per_s           lower   15 %   -                   3    spread 4 %, but tracks swap-in and readahead
nfs_retrans_per_call     lower   100 %  0.001 ratio         3    0 in every run of ~19,000 calls: under 1 in 1,000 is a blip
tcp_retrans_per_s        lower   100 %  1 segments/s        3    0 in every run of ~18,000 segments/s: a few a second is a blip
=======================  ======  =====  ==================  ===  ========================================================

``min_repeats`` is 3 everywhere: the fewest values whose median ignores one wild run (the
median of two is their mean), and the fewest with which the interval can exclude no
change at all. ``defaults_table()`` prints this table from the code (a test keeps them
equal).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from types import MappingProxyType
from typing import Any, Literal, TypeGuard

import numpy as np
from numpy.typing import NDArray

from model.figures import BY_NAME, FIGURE_NAMES, Better, Figure

Outcome = Literal["regression", "improvement", "no change", "insufficient data"]
Scale = Literal["ratio", "difference"]
OUTCOMES: tuple[Outcome, ...] = ("regression", "improvement", "no change", "insufficient data")

DEFAULT_PRIMARY = "swap_out_mibps"
DEFAULT_RESAMPLES = 2000
DEFAULT_CONFIDENCE = 0.95
DEFAULT_MIN_REPEATS = 3
# Bounds of a campaign's override: a tolerance is a fraction (0.1 is 10 %); beyond 10
# (an 11-fold change) it would switch the figure off while pretending to compare it.
MAX_TOLERANCE = 10.0
MIN_REPEATS_FLOOR = 2  # one value per side has no spread: no interval at all
MIN_RESAMPLES = 100
# The rank test needs this many values per side (below it no p-value can be small).
RANK_TEST_MIN = 3
OVERRIDABLE = ("tolerance", "min_repeats")


# -- policies -----------------------------------------------------------------------------
def _is_number(value: object) -> TypeGuard[float]:
    # bool is an int to Python, never a tolerance to a user.
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def _check_tolerance(value: object, where: str) -> float:
    if not (_is_number(value) and 0 < value <= MAX_TOLERANCE):
        raise ValueError(f"{where} must be a number in (0, {MAX_TOLERANCE:g}] (a fraction: 0.1 is 10 %), not {value!r}")
    return float(value)


def _check_min_repeats(value: object, where: str) -> int:
    if not (isinstance(value, int) and not isinstance(value, bool) and value >= MIN_REPEATS_FLOOR):
        raise ValueError(f"{where} must be a whole number >= {MIN_REPEATS_FLOOR}, not {value!r}")
    return value


@dataclass(frozen=True)
class Policy:
    """How one figure is judged: its tolerance, absolute floor and minimum sample."""

    tolerance: float  # relative change (a factor either way) below which nothing is a change
    min_repeats: int = DEFAULT_MIN_REPEATS  # values per side below which: insufficient data
    abs_tolerance: float | None = None  # in the figure's unit: a smaller change never counts
    reason: str = ""  # one line: why these numbers

    def __post_init__(self) -> None:
        _check_tolerance(self.tolerance, "tolerance")
        _check_min_repeats(self.min_repeats, "min_repeats")
        if self.abs_tolerance is not None and not (_is_number(self.abs_tolerance) and self.abs_tolerance >= 0):
            raise ValueError(f"abs_tolerance must be a finite number >= 0, not {self.abs_tolerance!r}")


DEFAULT_POLICIES: Mapping[str, Policy] = MappingProxyType(
    {
        "swap_out_mibps": Policy(0.10, reason="spread 5 %: twice the run-to-run noise"),
        "swap_in_mibps": Policy(0.10, reason="spread 4.5 %: as swap-out, the same mechanism"),
        "workload_wall_s": Policy(0.10, reason="spread 5 %: follows swap throughput"),
        "psi_full_share": Policy(0.20, reason="spread 4 %, but PSI accounting varies with scheduling"),
        "allocstall_per_s": Policy(0.25, reason="spread 10 %: reclaim timing decides who stalls"),
        "direct_throttle_per_s": Policy(
            1.0, abs_tolerance=0.2, reason="1 to 4 events a run (spread 60 %): only doubling counts"
        ),
        "majfault_per_s": Policy(0.15, reason="spread 4 %, but tracks swap-in and readahead"),
        "nfs_retrans_per_call": Policy(
            1.0, abs_tolerance=0.001, reason="0 in every run of ~19,000 calls: under 1 in 1,000 is a blip"
        ),
        "tcp_retrans_per_s": Policy(
            1.0, abs_tolerance=1.0, reason="0 in every run of ~18,000 segments/s: a few a second is a blip"
        ),
    }
)


def _overridden(name: str, base: Policy, override: object) -> Policy:
    """``base`` with a campaign's ``{tolerance, min_repeats}`` applied, every field checked."""
    if not isinstance(override, Mapping):
        raise ValueError(f"comparison policy {name}: expected a mapping of {', '.join(OVERRIDABLE)}, not {override!r}")
    unknown = sorted(str(key) for key in override if key not in OVERRIDABLE)
    if unknown:
        raise ValueError(
            f"comparison policy {name}: unknown setting(s) {', '.join(unknown)} (known: {', '.join(OVERRIDABLE)})"
        )
    tolerance = _check_tolerance(override.get("tolerance", base.tolerance), f"comparison policy {name}: tolerance")
    min_repeats = _check_min_repeats(
        override.get("min_repeats", base.min_repeats), f"comparison policy {name}: min_repeats"
    )
    return replace(base, tolerance=tolerance, min_repeats=min_repeats, reason=f"set by the campaign ({base.reason})")


def resolve_policies(overrides: Mapping[str, Policy | Mapping[str, object]] | None = None) -> dict[str, Policy]:
    """Every figure's policy: the defaults with a campaign's overrides applied.

    ``overrides`` maps a figure name to ``{"tolerance": 0.2, "min_repeats": 5}`` (either
    key optional) or to a whole ``Policy``. Unknown figure names, unknown settings, a
    tolerance outside (0, 10] and a min_repeats below 2 are refused with a ValueError.
    """
    policies = dict(DEFAULT_POLICIES)
    for name, override in (overrides or {}).items():
        if name not in BY_NAME:
            raise ValueError(f"comparison policy for unknown figure {name!r} (known: {', '.join(FIGURE_NAMES)})")
        policies[name] = override if isinstance(override, Policy) else _overridden(name, policies[name], override)
    return policies


def defaults_table() -> list[str]:
    """The rows of the defaults table in this module's docstring, from the code."""
    rows = []
    for name in FIGURE_NAMES:
        policy, figure = DEFAULT_POLICIES[name], BY_NAME[name]
        floor = "-" if policy.abs_tolerance is None else f"{policy.abs_tolerance:g} {figure.unit}"
        tolerance = f"{policy.tolerance * 100:g} %"
        rows.append(
            f"{name:<23}  {figure.better:<6}  {tolerance:<5}  {floor:<18}  {policy.min_repeats:<3}  {policy.reason}"
        )
    return rows


# -- one figure ---------------------------------------------------------------------------
@dataclass(frozen=True)
class FigureComparison:
    """One figure of A against B: medians, change, interval, rank test and outcome.

    ``scale`` says what the interval is of: the ratio B / A (``ci_low``/``ci_high`` are
    ratios, 1 is no change) or, when A's median is 0, the difference B - A in the figure's
    unit (0 is no change; ``ratio`` and ``change_pct`` are then None). ``ci_high`` may be
    infinite when A's resampled median can be 0. ``p_holm`` is set by ``compare()`` for the
    figures that do not decide the verdict.
    """

    name: str
    unit: str
    better: Better
    policy: Policy
    confidence: float
    n_a: int
    n_b: int
    median_a: float | None
    median_b: float | None
    outcome: Outcome
    scale: Scale = "ratio"
    ratio: float | None = None
    difference: float | None = None
    change_pct: float | None = None
    ci_low: float | None = None
    ci_high: float | None = None
    p_value: float | None = None
    p_holm: float | None = None

    @property
    def changed(self) -> bool:
        """Whether the outcome is a regression or an improvement."""
        return self.outcome in ("regression", "improvement")

    def ci_pct(self) -> tuple[float, float] | None:
        """The ratio's interval as changes in percent (None for differences or no interval)."""
        if self.scale != "ratio" or self.ci_low is None or self.ci_high is None:
            return None
        return (self.ci_low - 1) * 100, (self.ci_high - 1) * 100

    def summary(self) -> str:
        """One line: figure, both medians with unit, change and interval, outcome."""
        medians = f"{self.name}: {_num(self.median_a)} -> {_num(self.median_b)} {self.unit}"
        if self.outcome == "insufficient data":
            need = self.policy.min_repeats
            return f"{medians} ({self.n_a} vs {self.n_b} values, at least {need} per side needed): insufficient data"
        level = f"{self.confidence * 100:g} % CI"
        if self.scale == "ratio" and self.change_pct is not None and (pct := self.ci_pct()) is not None:
            return f"{medians} ({self.change_pct:+.1f} %, {level} {_pct(pct[0])} .. {_pct(pct[1])} %): {self.outcome}"
        unit = self.unit
        interval = f"{_signed(self.ci_low)} .. {_signed(self.ci_high)} {unit}"
        return f"{medians} ({_signed(self.difference)} {unit}, {level} {interval}): {self.outcome}"

    def to_json(self) -> dict[str, Any]:
        """A JSON-safe dict (infinite or undefined numbers are null)."""
        return {
            "figure": self.name,
            "unit": self.unit,
            "better": self.better,
            "n_a": self.n_a,
            "n_b": self.n_b,
            "median_a": _finite(self.median_a),
            "median_b": _finite(self.median_b),
            "scale": self.scale,
            "ratio": _finite(self.ratio),
            "difference": _finite(self.difference),
            "change_pct": _finite(self.change_pct),
            "confidence": self.confidence,
            "ci_low": _finite(self.ci_low),
            "ci_high": _finite(self.ci_high),
            "p_value": _finite(self.p_value),
            "p_holm": _finite(self.p_holm),
            "tolerance": self.policy.tolerance,
            "abs_tolerance": self.policy.abs_tolerance,
            "min_repeats": self.policy.min_repeats,
            "outcome": self.outcome,
            "summary": self.summary(),
        }


def _finite(value: float | None) -> float | None:
    return value if value is not None and math.isfinite(value) else None


def _num(value: float | None) -> str:
    if value is None:
        return "n/a"
    return f"{value:.0f}" if abs(value) >= 100 else f"{value:.3g}"


def _pct(value: float) -> str:
    return f"{value:+.1f}" if math.isfinite(value) else "+inf"


def _signed(value: float | None) -> str:
    if value is None:
        return "n/a"
    return f"{value:+.3g}" if math.isfinite(value) else ("+inf" if value > 0 else "-inf")


def finite_values(values: Iterable[float | None]) -> NDArray[np.float64]:
    """The values that are numbers: None (not measured) and NaN are dropped, never read as 0."""
    kept = [float(value) for value in values if value is not None and math.isfinite(float(value))]
    return np.asarray(kept, dtype=np.float64)


def _check_settings(resamples: int, confidence: float) -> None:
    if isinstance(resamples, bool) or not isinstance(resamples, int) or resamples < MIN_RESAMPLES:
        raise ValueError(f"resamples must be a whole number >= {MIN_RESAMPLES}, not {resamples!r}")
    if not (_is_number(confidence) and 0 < confidence < 1):
        raise ValueError(f"confidence must be a number in (0, 1), not {confidence!r}")


def _figure(name: str) -> Figure:
    figure = BY_NAME.get(name)
    if figure is None:
        raise ValueError(f"unknown figure {name!r} (known: {', '.join(FIGURE_NAMES)})")
    return figure


def compare_figure(
    name: str,
    a: Sequence[float | None],
    b: Sequence[float | None],
    policy: Policy | None = None,
    seed: int = 0,
    resamples: int = DEFAULT_RESAMPLES,
    confidence: float = DEFAULT_CONFIDENCE,
) -> FigureComparison:
    """Compare one figure's baseline values ``a`` with the candidate's ``b``.

    None and NaN values are dropped first. Fewer than ``policy.min_repeats`` values on
    either side: "insufficient data". Otherwise the ratio of medians B / A (or, when A's
    median is 0, the difference B - A) with a seeded bootstrap interval, a Mann-Whitney U
    p-value, and the outcome by the rule in the module docstring.
    """
    figure = _figure(name)
    policy = policy or DEFAULT_POLICIES[name]
    _check_settings(resamples, confidence)
    xa, xb = finite_values(a), finite_values(b)
    median_a = float(np.median(xa)) if xa.size else None
    median_b = float(np.median(xb)) if xb.size else None
    result = FigureComparison(
        name=name,
        unit=figure.unit,
        better=figure.better,
        policy=policy,
        confidence=confidence,
        n_a=int(xa.size),
        n_b=int(xb.size),
        median_a=median_a,
        median_b=median_b,
        outcome="insufficient data",
    )
    if median_a is None or median_b is None or min(xa.size, xb.size) < policy.min_repeats:
        return result
    rng = np.random.default_rng(seed)
    # A first, then B: the same seed and sizes always draw the same resamples.
    boot_a, boot_b = _bootstrap_medians(rng, xa, resamples), _bootstrap_medians(rng, xb, resamples)
    p_value = _rank_test(xa, xb)
    if median_a > 0:
        return _by_ratio(result, figure, median_a, median_b, boot_a, boot_b, p_value)
    return _by_difference(result, figure, median_a, median_b, boot_a, boot_b, p_value)


def _bootstrap_medians(rng: np.random.Generator, values: NDArray[np.float64], resamples: int) -> NDArray[np.float64]:
    """The medians of ``resamples`` resamples of ``values`` with replacement, vectorised."""
    picks = rng.integers(0, values.size, size=(resamples, values.size))
    return np.asarray(np.median(values[picks], axis=1), dtype=np.float64)


def _interval(replicates: NDArray[np.float64], confidence: float) -> tuple[float, float]:
    """The percentile interval; order statistics, so infinite replicates stay well defined."""
    tail = (1 - confidence) / 2
    low, high = np.quantile(replicates, [tail, 1 - tail], method="inverted_cdf")
    return float(low), float(high)


def _rank_test(xa: NDArray[np.float64], xb: NDArray[np.float64]) -> float | None:
    """Mann-Whitney U two-sided p-value; None below RANK_TEST_MIN values a side."""
    if min(xa.size, xb.size) < RANK_TEST_MIN:
        return None
    # scipy.stats takes most of a second to import: only a comparison pays for it.
    from scipy.stats import mannwhitneyu  # type: ignore[import-untyped]  # scipy ships no type hints

    p_value = float(mannwhitneyu(xa, xb, alternative="two-sided").pvalue)
    return p_value if math.isfinite(p_value) else None


def _by_ratio(
    result: FigureComparison,
    figure: Figure,
    median_a: float,
    median_b: float,
    boot_a: NDArray[np.float64],
    boot_b: NDArray[np.float64],
    p_value: float | None,
) -> FigureComparison:
    with np.errstate(divide="ignore", invalid="ignore"):
        ratios = boot_b / boot_a
    # A resample whose A median is 0: B above it is an unbounded ratio; both 0 is no change.
    ratios = np.where(boot_a == 0, np.where(boot_b == 0, 1.0, np.inf), ratios)
    low, high = _interval(ratios, result.confidence)
    ratio, difference = median_b / median_a, median_b - median_a
    factor = 1 + result.policy.tolerance
    beyond = (ratio > factor or ratio < 1 / factor) and _above_floor(difference, result.policy)
    excludes = high < 1 if ratio < 1 else low > 1
    outcome = _outcome(figure, worse=_is_worse(figure, ratio - 1)) if beyond and excludes else "no change"
    return replace(
        result,
        scale="ratio",
        ratio=ratio,
        difference=difference,
        change_pct=(ratio - 1) * 100,
        ci_low=low,
        ci_high=high,
        p_value=p_value,
        outcome=outcome,
    )


def _by_difference(
    result: FigureComparison,
    figure: Figure,
    median_a: float,
    median_b: float,
    boot_a: NDArray[np.float64],
    boot_b: NDArray[np.float64],
    p_value: float | None,
) -> FigureComparison:
    low, high = _interval(boot_b - boot_a, result.confidence)
    difference = median_b - median_a
    beyond = difference != 0 and _above_floor(difference, result.policy)
    excludes = high < 0 if difference < 0 else low > 0
    outcome = _outcome(figure, worse=_is_worse(figure, difference)) if beyond and excludes else "no change"
    return replace(
        result, scale="difference", difference=difference, ci_low=low, ci_high=high, p_value=p_value, outcome=outcome
    )


def _above_floor(difference: float, policy: Policy) -> bool:
    return policy.abs_tolerance is None or abs(difference) > policy.abs_tolerance


def _is_worse(figure: Figure, change: float) -> bool:
    """Whether a change of this sign (B above A: positive) is for the worse."""
    return change < 0 if figure.better == "higher" else change > 0


def _outcome(figure: Figure, worse: bool) -> Outcome:
    return "regression" if worse else "improvement"


# -- every figure -------------------------------------------------------------------------
def holm_adjust(p_values: Mapping[str, float]) -> dict[str, float]:
    """Holm's step-down adjustment: p-values that hold for the whole family at once.

    Sorted ascending, the k-th smallest of m is multiplied by m - k + 1, kept at least as
    large as the one before it, and capped at 1.
    """
    ordered = sorted(p_values.items(), key=lambda item: item[1])
    adjusted: dict[str, float] = {}
    running = 0.0
    for rank, (name, p_value) in enumerate(ordered):
        running = max(running, min(1.0, (len(ordered) - rank) * p_value))
        adjusted[name] = running
    return adjusted


@dataclass(frozen=True)
class Comparison:
    """Every figure of A against B; the verdict is the primary figure's outcome alone."""

    primary: str
    figures: tuple[FigureComparison, ...]
    seed: int
    resamples: int
    confidence: float

    def figure(self, name: str) -> FigureComparison:
        """One figure's comparison."""
        for result in self.figures:
            if result.name == name:
                return result
        raise KeyError(name)

    @property
    def verdict(self) -> Outcome:
        """The primary figure's outcome: regression, improvement, no change or insufficient data."""
        return self.figure(self.primary).outcome

    @property
    def regressed(self) -> bool:
        """Whether the primary figure regressed (the campaign fails with exit 3)."""
        return self.verdict == "regression"

    @property
    def others_changed(self) -> tuple[FigureComparison, ...]:
        """Non-primary figures whose outcome is a change: reported, never the verdict."""
        return tuple(f for f in self.figures if f.name != self.primary and f.changed)

    def summary(self) -> str:
        """One line: the verdict and the primary figure's summary."""
        return f"{self.verdict} (decided by {self.primary}): {self.figure(self.primary).summary()}"

    def to_json(self) -> dict[str, Any]:
        """A JSON-safe dict: verdict, how it was reached, every figure."""
        return {
            "primary": self.primary,
            "verdict": self.verdict,
            "regressed": self.regressed,
            "rule": (
                f"the verdict is {self.primary}'s outcome alone; other figures are reported with "
                "Holm-adjusted p-values and do not change it"
            ),
            "method": {
                "statistic": "ratio of medians B/A (difference B-A when A's median is 0)",
                "interval": "bootstrap percentile",
                "resamples": self.resamples,
                "confidence": self.confidence,
                "seed": self.seed,
                "rank_test": "Mann-Whitney U, two-sided",
            },
            "figures": [result.to_json() for result in self.figures],
        }


def compare(
    a_figures: Mapping[str, Sequence[float | None]],
    b_figures: Mapping[str, Sequence[float | None]],
    primary: str = DEFAULT_PRIMARY,
    policies: Mapping[str, Policy | Mapping[str, object]] | None = None,
    seed: int = 0,
    resamples: int = DEFAULT_RESAMPLES,
    confidence: float = DEFAULT_CONFIDENCE,
) -> Comparison:
    """Compare every figure of baseline A with candidate B (values per figure name).

    Every figure of ``model.figures`` is compared (one missing from a side has no values:
    insufficient data); ``policies`` are a campaign's overrides (``resolve_policies``).
    The verdict is ``primary``'s outcome alone; the other figures' p-values are
    Holm-adjusted among themselves, for the report only.
    """
    _figure(primary)
    unknown = sorted((set(a_figures) | set(b_figures)) - set(BY_NAME))
    if unknown:
        raise ValueError(f"unknown figure(s) {', '.join(unknown)} (known: {', '.join(FIGURE_NAMES)})")
    resolved = resolve_policies(policies)
    results = [
        compare_figure(
            name, a_figures.get(name, ()), b_figures.get(name, ()), resolved[name], seed, resamples, confidence
        )
        for name in FIGURE_NAMES
    ]
    others = {r.name: r.p_value for r in results if r.name != primary and r.p_value is not None}
    adjusted = holm_adjust(others)
    with_holm = tuple(replace(r, p_holm=adjusted.get(r.name)) for r in results)
    return Comparison(primary, with_holm, seed, resamples, confidence)


def side_values(runs: Iterable[Mapping[str, float | None]]) -> dict[str, list[float | None]]:
    """Per-run figure dicts (one per passing run × node) as values per figure name."""
    values: dict[str, list[float | None]] = {}
    for run in runs:
        for name, value in run.items():
            values.setdefault(name, []).append(value)
    return values
