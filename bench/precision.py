"""The ruler for comparisons: how noisy the figures are, how often a comparison cries wolf,
and how often it sees a real 10 % change — computed from stored real runs, no lab needed.

    .venv/bin/python bench/precision.py [--noise PATH] [--ab PATH] [--trials 1000] [--seed 0] [--json]

Inputs (both real runs of this machine, committed as fixtures):

* ``--noise``: a series of identical runs of one kernel, one at a time
  (``bench/noise_floor.py --save-fixture``; default ``tests/fixtures/figures/smoke-repeats.json``);
* ``--ab``: a comparison campaign's record whose ``base`` and ``same`` variants are the
  same kernel and settings as each other, run at another time than the noise series
  (default ``tests/fixtures/results/ab-result.json``).

What it prints, each figure computed with ``orchestrator.stats.compare`` exactly as a
campaign's comparison is judged (its defaults; these series have one node a run, so one
value per run):

* **noise**: per figure n, median, CV %, and its correlation with 1 / wall time (how much
  of the noise is host CPU taken from the guest);
* **interleaved false alarms**: identical runs split at random into two disjoint groups of
  k (k = 3, 4, 5, n // 2): the share of splits the primary figure calls a regression, any
  change, and in which any of the other figures "changes";
* **across-time false alarms**: k runs of the A/B campaign's identical variants against k
  runs of the noise series (taken at another time), k = 4: the same shares;
* **power**: a true 10 % slowdown — the candidate's values of the noise series made 10 %
  worse (swap-out MiB/s × 1 / 1.1, wall time × 1.1) — at k = 4, 5, 10, 20, 50 a side,
  each side drawn independently with replacement: the share called a regression.

Blocks of guest- and host-time runs taken hours apart have their own study
(``bench/blocks.py study``).

Rates carry 95 % Wilson intervals over the trials. Later work on the statistics or the
measurement is judged by these same numbers (bench/README.md keeps them per change).
"""

from __future__ import annotations

import argparse
import json
import math
import random
import statistics
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from noise_floor import Series, add_record, from_fixture, wilson

from model.figures import BY_NAME, FIGURE_NAMES
from orchestrator.stats import DEFAULT_PRIMARY, compare

REPO = Path(__file__).resolve().parent.parent
NOISE = REPO / "tests/fixtures/figures/smoke-repeats.json"
AB = REPO / "tests/fixtures/results/ab-result.json"
IDENTICAL_VARIANTS = ("base", "same")  # the A/B campaign's variants that change nothing
EFFECT = 0.10  # the true change the power is measured for
POWER_SIZES = (4, 5, 10, 20, 50)
POWER_FIGURES = (DEFAULT_PRIMARY, "workload_wall_s")

Values = dict[str, list[float | None]]


def log(message: str) -> None:
    print(f"[precision] {message}", file=sys.stderr, flush=True)


@dataclass(frozen=True)
class Rate:
    """How many of ``trials`` comparisons did something, with its 95 % Wilson interval."""

    hits: int
    trials: int

    def to_json(self) -> dict[str, Any]:
        low, high = wilson(self.hits, self.trials)
        return {"rate": self.hits / self.trials, "low": low, "high": high, "hits": self.hits, "trials": self.trials}

    def text(self) -> str:
        low, high = wilson(self.hits, self.trials)
        return f"{100 * self.hits / self.trials:5.1f} % [{100 * low:4.1f}-{100 * high:4.1f}]"


# -- inputs ------------------------------------------------------------------------------------------
def identical_runs(path: Path) -> Series:
    """The A/B record's runs of the variants that change nothing (one kernel, one setting)."""
    record = json.loads(path.read_text())
    kept = {**record, "runs": [run for run in record["runs"] if run.get("variant") in IDENTICAL_VARIANTS]}
    series = Series(source=f"{path.name}: variants {', '.join(IDENTICAL_VARIANTS)} of {record.get('campaign_id')}")
    add_record(series, kept)
    return series


# -- noise -------------------------------------------------------------------------------------------
def noise(series: Series) -> dict[str, dict[str, Any]]:
    """Per figure: n, median, CV % and its correlation with 1 / wall time."""
    walls = [run["figures"].get("workload_wall_s") for run in series.runs]
    out = {}
    for name in FIGURE_NAMES:
        pairs = [(run["figures"].get(name), wall) for run, wall in zip(series.runs, walls, strict=True)]
        values = [v for v, _ in pairs if v is not None]
        mean = statistics.fmean(values) if values else math.nan
        cv = 100 * statistics.stdev(values) / mean if len(values) > 1 and mean else None
        usable = [(v, 1 / w) for v, w in pairs if v is not None and w]
        corr = _correlation(usable) if name != "workload_wall_s" else None
        out[name] = {"n": len(values), "median": statistics.median(values) if values else None, "cv_pct": cv}
        out[name]["corr_inverse_wall"] = corr
    return out


def _correlation(pairs: list[tuple[float, float]]) -> float | None:
    if len(pairs) < 3:
        return None
    xs, ys = zip(*pairs, strict=True)
    if statistics.pstdev(xs) == 0 or statistics.pstdev(ys) == 0:
        return None
    return statistics.correlation(xs, ys)


# -- comparisons ---------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Tally:
    """What a batch of comparisons of identical kernels said."""

    regression: Rate
    any_change: Rate
    other_figure_changed: Rate

    def to_json(self) -> dict[str, Any]:
        return {
            "regression": self.regression.to_json(),
            "any_change": self.any_change.to_json(),
            "other_figure_changed": self.other_figure_changed.to_json(),
        }


def tally(
    draw: Callable[[random.Random], tuple[Values, Values]], trials: int, seed: int, primary: str = DEFAULT_PRIMARY
) -> Tally:
    """Compare ``trials`` pairs of sides ``draw`` makes; count what the comparison called."""
    rng = random.Random(seed)
    regressions = changes = others = 0
    for _ in range(trials):
        a, b = draw(rng)
        result = compare(a, b, primary=primary)
        regressions += result.verdict == "regression"
        changes += result.verdict in ("regression", "improvement")
        others += bool(result.others_changed)
    return Tally(Rate(regressions, trials), Rate(changes, trials), Rate(others, trials))


def split(series: Series, k: int) -> Callable[[random.Random], tuple[Values, Values]]:
    """Two disjoint groups of k runs of one series."""

    def draw(rng: random.Random) -> tuple[Values, Values]:
        chosen = rng.sample(range(len(series.runs)), 2 * k)
        return series.values(chosen[:k]), series.values(chosen[k:])

    return draw


def across(first: Series, second: Series, k: int) -> Callable[[random.Random], tuple[Values, Values]]:
    """k runs of one series against k runs of another, taken at another time (A is the
    earlier or the later at random: a drift in either direction counts)."""

    def draw(rng: random.Random) -> tuple[Values, Values]:
        a = first.values(rng.sample(range(len(first.runs)), k))
        b = second.values(rng.sample(range(len(second.runs)), k))
        return (a, b) if rng.random() < 0.5 else (b, a)

    return draw


def slowed(series: Series, k: int, figure: str) -> Callable[[random.Random], tuple[Values, Values]]:
    """A true 10 % slowdown of ``figure``: B's values made worse by the effect (a higher-is-
    better figure divided by 1.1, a lower-is-better one multiplied), each side drawn with
    replacement from the series."""
    worse = (1 / (1 + EFFECT)) if BY_NAME[figure].better == "higher" else (1 + EFFECT)

    def draw(rng: random.Random) -> tuple[Values, Values]:
        a = series.values(rng.choices(range(len(series.runs)), k=k))
        b = series.values(rng.choices(range(len(series.runs)), k=k))
        b[figure] = [None if v is None else v * worse for v in b[figure]]
        return a, b

    return draw


# -- the whole study -------------------------------------------------------------------------------------
def study(series: Series, other: Series, trials: int, seed: int) -> dict[str, Any]:
    n = len(series.runs)
    log(f"noise series: {n} node runs; identical runs at another time: {len(other.runs)}")
    interleaved = {}
    for k in (3, 4, 5, n // 2):
        log(f"interleaved, {k} a side ...")
        interleaved[str(k)] = tally(split(series, k), trials, seed).to_json()
    log("across time, 4 a side ...")
    drift = {str(k): tally(across(other, series, k), trials, seed).to_json() for k in (4,) if k <= len(other.runs)}
    power: dict[str, dict[str, Any]] = {}
    for figure in POWER_FIGURES:
        power[figure] = {}
        for k in POWER_SIZES:
            log(f"power, {figure}, {k} a side ...")
            # The slowed figure decides: its own power, not the default primary's false alarms.
            power[figure][str(k)] = tally(slowed(series, k, figure), trials, seed, figure).regression.to_json()
    return {
        "noise_source": series.source,
        "other_source": other.source,
        "trials": trials,
        "seed": seed,
        "effect": EFFECT,
        "noise": noise(series),
        "interleaved_false_alarms": interleaved,
        "across_time_false_alarms": drift,
        "power_true_10pct": power,
    }


def _rate(entry: dict[str, Any]) -> str:
    return Rate(entry["hits"], entry["trials"]).text()


def print_text(result: dict[str, Any]) -> None:
    print(f"noise series: {result['noise_source'][:160]}")
    print(f"identical runs at another time: {result['other_source']}")
    print(f"{result['trials']} trials per cell, seed {result['seed']}; rates with 95 % Wilson intervals\n")
    print(f"{'figure':<24} {'n':>3} {'median':>10} {'CV %':>6} {'corr 1/wall':>11}")
    for name, row in result["noise"].items():
        cv = f"{row['cv_pct']:6.1f}" if row["cv_pct"] is not None else "     -"
        corr = f"{row['corr_inverse_wall']:11.2f}" if row["corr_inverse_wall"] is not None else "          -"
        median = f"{row['median']:10.4g}" if row["median"] is not None else "         -"
        print(f"{name:<24} {row['n']:>3} {median} {cv} {corr}")
    for title, key in (("interleaved", "interleaved_false_alarms"), ("across time", "across_time_false_alarms")):
        print(f"\nfalse alarms, identical kernels, {title} (k a side):")
        print(f"{'k':>4}  {'regression':<24} {'any change':<24} {'another figure changed':<24}")
        for k, row in result[key].items():
            print(
                f"{k:>4}  {_rate(row['regression']):<24} {_rate(row['any_change']):<24} {_rate(row['other_figure_changed']):<24}"
            )
    print(f"\npower: a true {100 * result['effect']:.0f} % slowdown called a regression (k a side):")
    for figure, row in result["power_true_10pct"].items():
        cells = "  ".join(f"k={k}: {_rate(rate)}" for k, rate in row.items())
        print(f"  {figure:<18} {cells}")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--noise", type=Path, default=NOISE, help="a noise series (noise_floor.py --save-fixture)")
    parser.add_argument("--ab", type=Path, default=AB, help="an A/B record with identical variants base and same")
    parser.add_argument("--trials", type=int, default=1000, help="comparisons per cell")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", action="store_true", help="print the figures as JSON")
    args = parser.parse_args(argv)
    if args.trials < 1:
        parser.error("--trials must be at least 1")
    result = study(from_fixture(args.noise), identical_runs(args.ab), args.trials, args.seed)
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        print_text(result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
