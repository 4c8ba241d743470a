"""Did the candidate kernel (B) change a figure against the baseline (A)? The statistics.

Each side of a comparison is a handful of numbers per figure: **one per passing run**
(``model.figures``; a run of several nodes counts once, its nodes' median: the nodes of
one run share its boot, its server and its moment on the host). This module turns two
such handfuls into an outcome a lab engineer can act on, and says how sure it is. In plain
words:

**The change** is the Hodges-Lehmann estimate on logs: every B value divided by every A
value, and the median of those m x n ratios, reported in percent (-33.5 % is B at two
thirds of A). Like a median, one run disturbed by something else on the host moves it
hardly at all; unlike the ratio of two medians of three, it uses every pair.

**The interval.** "95 % CI -41.0 .. -25.2 %" means: changes from -41 % to -25 % are all
compatible with what was measured. It is the Mann-Whitney test turned around: of the m x n
pairwise ratios sorted, k are cut from each end, k from the exact distribution of the
rank statistic when A and B are alike (a normal approximation beyond 2,500 pairs). It
assumes no bell curve and covers the true change in at least 95 % of experiments at any
number of runs - where a bootstrap interval of three values a side excluded "no change"
twice as often as it said. Its price is honesty about small numbers: with three runs a
side no 95 % interval exists (every B below every A happens by chance once in 20 orders,
5 % each way), so three against three is "insufficient data, at least 4 per side"; four a
side can call a change only when the sides do not overlap at all; five or more is what
makes a small change visible. No random numbers: the same values give the same answer.

**The outcome** of a figure is "regression" or "improvement" only when *both* hold: the
interval excludes no change, *and* the estimate is beyond **half the figure's tolerance**.
The tolerance is the smallest change that matters: a change of the whole tolerance lands
beyond half of it nearly always and is seen with the power bench/README states at the
recommended repeats, while a change of a few percent that no kernel developer would spend
an evening on is never called, however certain. Which of the two outcomes depends on the
figure's direction (``better`` in ``model.figures``: lower wall time is better, lower
swap throughput is worse). Otherwise the outcome is "no change", and every answer says
the smallest change its runs would have seen 4 times in 5 ("could see 6.7 %"), so "no
change" is never read as "no change bigger than 1 %".

A tolerance ``t`` is a factor, the same either way: half of it is a change beyond
sqrt(1 + t) or below 1 / sqrt(1 + t) (4.9 % for a 10 % tolerance). A 100 % tolerance is
"doubled or halved" (a linear -100 % could never be reached).

**Zeros.** Retransmissions and throttling are often exactly 0; a ratio to 0 means
nothing. When either side has a 0, the change is the Hodges-Lehmann *difference* B - A in
the figure's unit with the same interval, and the outcome needs it at least the figure's
absolute floor (``abs_tolerance``: a change of the floor itself counts) and its interval
to exclude 0. The floor also holds for
ratios: a change smaller than the floor in absolute terms (a difference of the medians) is
never a change. A figure without a floor has a floor of 0.

**Insufficient data.** Below a figure's minimum number of values per side
(``min_repeats``, at least 3, after None and NaN values are dropped - a figure not
measured in a run is not a 0), or too few for a 95 % interval, the outcome is
"insufficient data", never "no change": too few runs cannot show that nothing changed.
It carries no interval and no p-value. Add repeats.

**One figure decides.** A comparison looks at nine figures at once; at 95 % each, one
figure "changes" in about one comparison of identical kernels in five. So the verdict of
a comparison is the outcome of one **primary** figure chosen before looking (swap-out
throughput by default: what swap over NFS is for). The other figures are reported with
their rank-test p-values and those p-values adjusted for the number of figures looked at
(Holm's method), and a secondary figure's change stands only when its adjusted p-value is
below 5 % too; one undone by the adjustment says so. They never decide the verdict.

**Rank test.** The Mann-Whitney U test (two-sided, ``scipy.stats``: exact without ties)
asks whether B's values tend to lie above or below A's. Its p-value is what Holm's
adjustment works on; for the primary figure it is reported beside the interval, which it
agrees with (both are the same test).

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
allocstall_per_s         lower   300 %  -                   3    spread 40 % on guest time: 5 runs see a fourfold change
direct_throttle_per_s    lower   100 %  0.2 1/s             3    1 to 4 events a run (spread 60 %): only doubling counts
majfault_per_s           lower   15 %   -                   3    spread 4 %, but tracks swap-in and readahead
nfs_retrans_per_call     lower   100 %  0.001 ratio         3    0 in every run of ~19,000 calls: under 1 in 1,000 is a blip
tcp_retrans_per_s        lower   100 %  1 segments/s        3    0 in every run of ~18,000 segments/s: a few a second is a blip
=======================  ======  =====  ==================  ===  ========================================================

``min_repeats`` is 3 everywhere, the floor a campaign may not go below (two values a side
cried wolf in 30 % of identical comparisons); a comparison needs 4 a side for a 95 %
interval, and 5 are recommended (``RECOMMENDED_REPEATS``). ``defaults_table()`` prints this table from the code (a test keeps them
equal).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from statistics import NormalDist
from types import MappingProxyType
from typing import Any, Literal, TypeGuard

import numpy as np
from numpy.typing import NDArray

from model.figures import BY_NAME, FIGURE_NAMES, Better, Figure

Outcome = Literal["regression", "improvement", "no change", "insufficient data"]
Scale = Literal["ratio", "difference"]
OUTCOMES: tuple[Outcome, ...] = ("regression", "improvement", "no change", "insufficient data")

DEFAULT_PRIMARY = "swap_out_mibps"
DEFAULT_CONFIDENCE = 0.95
DEFAULT_MIN_REPEATS = 3
RECOMMENDED_REPEATS = 5
# Up to this many pairs the interval's cut comes from U's exact distribution (a few ms).
EXACT_PAIRS_MAX = 2500
Z_POWER = NormalDist().inv_cdf(0.8)  # "detectable": seen 4 times in 5
# How far the level of identical runs moved between blocks taken hours apart on this
# machine, per timing mode (bench/blocks.py study; bench/README.md): a comparison of sides
# that were not interleaved (another campaign, another night) widens its interval by it.
# Host time moved 27 %. Guest time moved at most 4 %, below half the 10 % tolerance the
# rule already demands: no allowance (one of 5 % cut across-time power from 100 to 13 %).
ACROSS_TIME_DRIFT: Mapping[str, float] = MappingProxyType({"host": 0.27, "guest-icount5": 0.0})


def across_time_drift(timing: str) -> float:
    """The drift allowance of a timing mode; an unknown one gets host time's, the larger."""
    return ACROSS_TIME_DRIFT.get(timing, ACROSS_TIME_DRIFT["host"])


# Bounds of a campaign's override: a tolerance is a fraction (0.1 is 10 %); beyond 10
# (an 11-fold change) it would switch the figure off while pretending to compare it.
MAX_TOLERANCE = 10.0
MIN_REPEATS_FLOOR = 3  # two values: their median is their mean, and a 30 % false-alarm rate
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
        "allocstall_per_s": Policy(3.0, reason="spread 40 % on guest time: 5 runs see a fourfold change"),
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
    # The smallest change these runs would see 4 times in 5 (percent for ratios, else the
    # figure's unit): "no change" never reads as "no change bigger than 1 %".
    detectable: float | None = None
    # A secondary figure's outcome before Holm's adjustment undid it (else None).
    unadjusted: Outcome | None = None
    # The allowance for drift between sides run at different times its interval carries.
    drift: float = 0.0

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
            need = fewest_per_side(self.confidence, self.policy.min_repeats)
            return f"{medians} ({self.n_a} vs {self.n_b} values, at least {need} per side needed): insufficient data"
        level = f"{self.confidence * 100:g} % CI"
        if self.scale == "ratio" and self.change_pct is not None and (pct := self.ci_pct()) is not None:
            what = f"{self.change_pct:+.1f} %, {level} {_pct(pct[0])} .. {_pct(pct[1])} %"
            could = f"could see {self.detectable:.1f} %" if self.detectable is not None else ""
        else:
            unit = self.unit
            what = f"{_signed(self.difference)} {unit}, {level} {_signed(self.ci_low)} .. {_signed(self.ci_high)} {unit}"
            could = f"could see {self.detectable:.3g} {unit}" if self.detectable is not None else ""
        held = f" (a {self.unadjusted} before Holm's adjustment, p {self.p_holm:.2g})" if self.unadjusted else ""
        drift = f"; ±{self.drift * 100:g} % for drift" if self.drift else ""
        return f"{medians} ({what}{drift}; {could}): {self.outcome}{held}"

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
            "detectable": _finite(self.detectable),
            "unadjusted": self.unadjusted,
            "drift": self.drift,
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


def _check_confidence(confidence: float) -> None:
    if not (_is_number(confidence) and 0 < confidence < 1):
        raise ValueError(f"confidence must be a number in (0, 1), not {confidence!r}")


def _figure(name: str) -> Figure:
    figure = BY_NAME.get(name)
    if figure is None:
        raise ValueError(f"unknown figure {name!r} (known: {', '.join(FIGURE_NAMES)})")
    return figure


# -- the shift and its interval -----------------------------------------------------------
@functools.lru_cache(maxsize=64)
def rank_null(m: int, n: int) -> NDArray[np.float64]:
    """P(U = u) for u = 0 .. m*n when A and B (m and n values) are alike and untied.

    U counts the pairs (a, b) with b above a. Of the C(m + n, m) equally likely orders of
    the values, the number with U = u is the coefficient of q^u in the Gaussian binomial
    [m + n choose m]_q = prod over i = 1..m of (1 - q^(n+i)) / (1 - q^i), built up factor
    by factor in exact integers (each step is again a polynomial).
    """
    counts = [1] + [0] * (m * n)
    for i in range(1, m + 1):
        for j in range(m * n, n + i - 1, -1):  # times (1 - q^(n+i))
            counts[j] -= counts[j - n - i]
        for j in range(i, m * n + 1):  # divided by (1 - q^i): r[j] = p[j] + r[j - i]
            counts[j] += counts[j - i]
    total = math.comb(m + n, m)
    null = np.array([count / total for count in counts], dtype=np.float64)
    null.flags.writeable = False  # cached: shared by every caller
    return null


def cut_from_each_end(m: int, n: int, confidence: float) -> int:
    """How many of the m*n pairwise differences the interval leaves out at each end.

    The interval [d(k), d(m*n - k + 1)] of the sorted differences covers the true shift
    with probability 1 - 2 * P(U <= k - 1) >= ``confidence`` (the Mann-Whitney test
    inverted). 0: no interval at that level exists with so few values (3 against 3).
    """
    tail = (1 - confidence) / 2
    if m * n <= EXACT_PAIRS_MAX:
        cumulative = np.cumsum(rank_null(m, n))
        return int(np.searchsorted(cumulative, tail * (1 + 1e-9), side="right"))
    centre, sd = m * n / 2, math.sqrt(m * n * (m + n + 1) / 12)  # U's normal approximation
    return max(0, math.floor(centre + NormalDist().inv_cdf(tail) * sd + 0.5))


def fewest_per_side(confidence: float, min_repeats: int = MIN_REPEATS_FLOOR) -> int:
    """The fewest values a side (both sides alike) with which a change can be called at ``confidence``."""
    n = min_repeats
    while cut_from_each_end(n, n, confidence) == 0:
        n += 1
    return n


@dataclass(frozen=True)
class Shift:
    """B against A on one scale (logs for ratios): Hodges-Lehmann estimate and its interval."""

    estimate: float
    low: float  # -inf / +inf: no interval at the confidence with so few values
    high: float

    @property
    def half_width(self) -> float:
        return (self.high - self.low) / 2

    def excludes_zero(self) -> bool:
        return self.low > 0 or self.high < 0


def shift(xa: NDArray[np.float64], xb: NDArray[np.float64], confidence: float) -> Shift:
    """The Hodges-Lehmann shift B - A (median of every pairwise difference) and the
    distribution-free interval from the Mann-Whitney test inverted: exact coverage at any n,
    no bell curve assumed, one wild run moves it by one pair in m*n."""
    differences = np.sort(np.subtract.outer(xb, xa).ravel())
    k = cut_from_each_end(xa.size, xb.size, confidence)
    estimate = float(np.median(differences))
    if k == 0:
        return Shift(estimate, -math.inf, math.inf)
    return Shift(estimate, float(differences[k - 1]), float(differences[differences.size - k]))


def detectable(found: Shift, threshold: float, confidence: float) -> float:
    """The smallest shift these runs would call a change 4 times in 5 (approximately: the
    estimate beyond ``threshold`` and the interval clear of 0), on the shift's own scale."""
    if not math.isfinite(found.half_width):
        return math.inf
    # The estimate's standard error, as the interval's width says it.
    spread = found.half_width / NormalDist().inv_cdf(1 - (1 - confidence) / 2)
    return max(found.half_width, threshold) + Z_POWER * spread


def compare_figure(
    name: str,
    a: Sequence[float | None],
    b: Sequence[float | None],
    policy: Policy | None = None,
    confidence: float = DEFAULT_CONFIDENCE,
    drift: float = 0.0,
) -> FigureComparison:
    """Compare one figure's baseline values ``a`` with the candidate's ``b``.

    ``drift``: how far (a fraction) the level of identical runs may move between the times
    the two sides ran, when they were not interleaved; a ratio's interval is widened by it
    either way, so a drift no larger is never called a change.

    None and NaN values are dropped first. Fewer than ``policy.min_repeats`` values on
    either side, or too few for an interval at ``confidence``: "insufficient data".
    Otherwise the Hodges-Lehmann change B / A (on logs) with its Mann-Whitney interval, or,
    when a side has a value of 0, the change B - A; the outcome by the module's rule.
    """
    figure = _figure(name)
    policy = policy or DEFAULT_POLICIES[name]
    _check_confidence(confidence)
    xa, xb = finite_values(a), finite_values(b)
    result = FigureComparison(
        name=name,
        unit=figure.unit,
        better=figure.better,
        policy=policy,
        confidence=confidence,
        n_a=int(xa.size),
        n_b=int(xb.size),
        median_a=float(np.median(xa)) if xa.size else None,
        median_b=float(np.median(xb)) if xb.size else None,
        outcome="insufficient data",
    )
    if min(xa.size, xb.size) < policy.min_repeats or cut_from_each_end(xa.size, xb.size, confidence) == 0:
        return result
    result = replace(result, p_value=_rank_test(xa, xb))
    if xa.min() > 0 and xb.min() > 0:
        found = shift(np.log(xa), np.log(xb), confidence)
        allowance = math.log1p(drift)
        widened = Shift(found.estimate, found.low - allowance, found.high + allowance)
        return _by_ratio(replace(result, drift=drift), figure, widened)
    return _by_difference(result, figure, shift(xa, xb, confidence))


def _rank_test(xa: NDArray[np.float64], xb: NDArray[np.float64]) -> float | None:
    """Mann-Whitney U two-sided p-value (exact without ties); None below RANK_TEST_MIN values a side."""
    if min(xa.size, xb.size) < RANK_TEST_MIN:
        return None
    # scipy.stats takes most of a second to import: only a comparison pays for it.
    from scipy.stats import mannwhitneyu  # type: ignore[import-untyped]  # scipy ships no type hints

    p_value = float(mannwhitneyu(xa, xb, alternative="two-sided").pvalue)
    return p_value if math.isfinite(p_value) else None


def _by_ratio(result: FigureComparison, figure: Figure, found: Shift) -> FigureComparison:
    """The outcome on logs: a change when the interval excludes none and the estimate is
    beyond half the tolerance (so a change of the whole tolerance is seen, not a coin toss)."""
    assert result.median_a is not None and result.median_b is not None
    threshold = math.log1p(result.policy.tolerance) / 2
    difference = result.median_b - result.median_a
    beyond = abs(found.estimate) > threshold and _above_floor(difference, result.policy)
    changed = beyond and found.excludes_zero()
    ratio = math.exp(found.estimate)
    return replace(
        result,
        scale="ratio",
        ratio=ratio,
        difference=difference,
        change_pct=(ratio - 1) * 100,
        ci_low=math.exp(found.low),
        ci_high=math.exp(found.high),
        detectable=math.expm1(detectable(found, threshold, result.confidence)) * 100,
        outcome=_outcome(figure, worse=_is_worse(figure, found.estimate)) if changed else "no change",
    )


def _by_difference(result: FigureComparison, figure: Figure, found: Shift) -> FigureComparison:
    """The outcome in the figure's unit (a side has a 0): beyond the absolute floor, interval clear of 0."""
    beyond = found.estimate != 0 and _above_floor(found.estimate, result.policy)
    changed = beyond and found.excludes_zero()
    return replace(
        result,
        scale="difference",
        difference=found.estimate,
        ci_low=found.low,
        ci_high=found.high,
        detectable=detectable(found, result.policy.abs_tolerance or 0.0, result.confidence),
        outcome=_outcome(figure, worse=_is_worse(figure, found.estimate)) if changed else "no change",
    )


def _above_floor(difference: float, policy: Policy) -> bool:
    return policy.abs_tolerance is None or abs(difference) >= policy.abs_tolerance


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
    confidence: float
    drift: float = 0.0

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
                f"the verdict is {self.primary}'s outcome alone: a change when its interval excludes "
                "none and its estimate is beyond half its tolerance; another figure's change stands "
                "only when its Holm-adjusted p-value does too, and never changes the verdict"
            ),
            "method": {
                "statistic": "Hodges-Lehmann change B/A on logs (B-A when a side has a 0), one value per run",
                "interval": "Mann-Whitney inversion (exact)",
                "confidence": self.confidence,
                "drift": self.drift,
                "rank_test": "Mann-Whitney U, two-sided",
            },
            "figures": [result.to_json() for result in self.figures],
        }


def compare(
    a_figures: Mapping[str, Sequence[float | None]],
    b_figures: Mapping[str, Sequence[float | None]],
    primary: str = DEFAULT_PRIMARY,
    policies: Mapping[str, Policy | Mapping[str, object]] | None = None,
    confidence: float = DEFAULT_CONFIDENCE,
    drift: float = 0.0,
) -> Comparison:
    """Compare every figure of baseline A with candidate B (values per figure name: one per run).

    Every figure of ``model.figures`` is compared (one missing from a side has no values:
    insufficient data); ``policies`` are a campaign's overrides (``resolve_policies``).
    The verdict is ``primary``'s outcome alone. The other figures' p-values are
    Holm-adjusted among themselves, and a change of one of them stands only when its
    adjusted p-value is below 1 - ``confidence``: nine figures at 95 % each would show
    some "change" between identical kernels in one comparison in five.
    """
    _figure(primary)
    unknown = sorted((set(a_figures) | set(b_figures)) - set(BY_NAME))
    if unknown:
        raise ValueError(f"unknown figure(s) {', '.join(unknown)} (known: {', '.join(FIGURE_NAMES)})")
    resolved = resolve_policies(policies)
    results = [
        compare_figure(name, a_figures.get(name, ()), b_figures.get(name, ()), resolved[name], confidence, drift)
        for name in FIGURE_NAMES
    ]
    others = {r.name: r.p_value for r in results if r.name != primary and r.p_value is not None}
    adjusted = holm_adjust(others)
    with_holm = tuple(_held(replace(r, p_holm=adjusted.get(r.name)), 1 - confidence) for r in results)
    return Comparison(primary, with_holm, confidence, drift)


def _held(result: FigureComparison, alpha: float) -> FigureComparison:
    """A secondary figure's change, undone when it does not survive Holm's adjustment."""
    if not result.changed or result.p_holm is None or result.p_holm < alpha:
        return result
    return replace(result, outcome="no change", unadjusted=result.outcome)


def side_values(runs: Iterable[Mapping[str, float | None]]) -> dict[str, list[float | None]]:
    """Per-run figure dicts (one per passing run) as values per figure name."""
    values: dict[str, list[float | None]] = {}
    for run in runs:
        for name, value in run.items():
            values.setdefault(name, []).append(value)
    return values
