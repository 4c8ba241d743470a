"""Noise floor of the figures, and how often the comparison cries wolf on identical runs.

    .venv/bin/python bench/noise_floor.py (--run FILE [--repeats N] | --campaign ID [ID ...] | --fixture PATH)
                                          [--permutations 1000] [--json] [--save-fixture PATH]

Takes a series of runs of one kernel: either it runs a campaign file through the real CLI
(``swaplab run --json`` on a copy of the file with ``repeats`` overridden, results in a
temporary directory), or it reads stored campaigns from the results database, or a
fixture this script saved earlier. From the passing runs' node figures (result.json
``nodes[].figures[name].value``, the node's own samples) it reports per figure:

* n, mean, sd, coefficient of variation (sd / mean, %), min, max;
* the **false-alarm rate** of ``orchestrator.stats``: the runs are split at random
  into two disjoint groups of k (k = 3, 5 and n // 2) many times, each split is compared
  (A = one group, B = the other), and every "regression" or "improvement" is counted as a
  false alarm, since every run is the same kernel. For the verdict (the primary figure)
  and for each figure, with a 95 % Wilson interval over the splits.

The runs of one campaign would start side by side on the lab's four nodes (runs start as
soon as a node is free), which is neither what the noise floor is about nor fair to a
2-core host. ``--run`` therefore gives swaplab a one-node copy of the campaign's lab
(same name, NFS server, node settings): the runs go one at a time on that node.
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import os
import platform
import random
import re
import signal
import statistics
import subprocess
import sys
import tempfile
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from model.campaign import load_campaign
from model.figures import BY_NAME, FIGURE_NAMES, TIMINGS
from model.lab import load_lab
from orchestrator.stats import DEFAULT_PRIMARY, OUTCOMES, compare

REPO = Path(__file__).resolve().parent.parent
SWAPLAB = REPO / ".venv" / "bin" / "swaplab"
DEFAULT_GROUP_SIZES = (3, 5)  # n // 2 is added at run time
ALARMS = ("regression", "improvement")
Z95 = 1.959963984540054  # two-sided 95 % normal quantile, for the Wilson interval
CAMPAIGN_TIMEOUT_S = 4 * 3600
NODE_GROUP = ("all", "children", "nodes")


def log(message: str) -> None:
    """Progress on stderr; stdout carries only the figures."""
    print(f"[noise-floor] {message}", file=sys.stderr, flush=True)


# -- the series ----------------------------------------------------------------------------------
@dataclass
class Series:
    """The node runs of one kernel that passed: their figures, and where they came from."""

    source: str
    campaign_ids: list[str] = field(default_factory=list)
    runs: list[dict[str, Any]] = field(default_factory=list)  # {run_id, campaign_id, node, kernel, figures}
    context: dict[str, Any] = field(default_factory=dict)  # kernel and settings of the first run
    not_passing: int = 0

    def values(self, indices: Iterable[int]) -> dict[str, list[float | None]]:
        """Per figure, the values of the runs at ``indices`` (None where a run has none)."""
        chosen = [self.runs[i]["figures"] for i in indices]
        return {name: [run.get(name) for run in chosen] for name in FIGURE_NAMES}


def _number(value: Any) -> float | None:
    """A figure value as a float; None for missing, non-numeric or non-finite values."""
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        return None
    return float(value)


def add_record(series: Series, record: Mapping[str, Any]) -> None:
    """Add every passing node run of one campaign record (result.json) to ``series``."""
    cid = str(record.get("campaign_id", "?"))
    series.campaign_ids.append(cid)
    for run in record.get("runs") or []:
        if run.get("verdict") != "pass":
            # Only passing runs count in comparisons (docs/ARCHITECTURE.md, "Figures").
            series.not_passing += 1
            continue
        series.context = series.context or _context(run)
        for node in run.get("nodes") or []:
            figures = {name: _number((fig or {}).get("value")) for name, fig in (node.get("figures") or {}).items()}
            series.runs.append(
                {
                    "run_id": run.get("run_id"),
                    "campaign_id": cid,
                    "node": node.get("node"),
                    "kernel": (run.get("kernel_info") or {}).get("release"),
                    "figures": {name: figures.get(name) for name in FIGURE_NAMES},
                }
            )


def _context(run: Mapping[str, Any]) -> dict[str, Any]:
    """What the runs were: kernel and settings, as the record says."""
    info = run.get("kernel_info") or {}
    return {"kernel": info.get("release"), "kernel_version": info.get("version"), **(run.get("settings") or {})}


def from_database(campaign_ids: Sequence[str]) -> Series:
    """The passing runs of stored campaigns, from the results database."""
    from orchestrator.history.db import ResultsDb  # SQLAlchemy only when asked for

    series = Series(source=f"results database, campaign(s) {', '.join(campaign_ids)}")
    with ResultsDb() as db:
        for cid in campaign_ids:
            record = db.campaign(cid)
            if record is None:
                raise SystemExit(f"no campaign {cid!r} in the results database {db.where}")
            add_record(series, record)
    return series


def from_fixture(path: Path) -> Series:
    """A series saved earlier with ``--save-fixture``."""
    data = json.loads(path.read_text())
    series = Series(source=f"fixture {path}: {data.get('_source', '')}", context=data.get("_context") or {})
    for run in data["runs"]:
        figures = run.get("figures") or {}
        series.runs.append({**run, "figures": {name: _number(figures.get(name)) for name in FIGURE_NAMES}})
    series.campaign_ids = list(dict.fromkeys(str(run.get("campaign_id", "?")) for run in series.runs))
    return series


def from_campaign_file(path: Path, repeats: int | None, timing: str | None = None) -> Series:
    """Run the campaign (a copy: repeats and timing overridden, one node) through ``swaplab run``."""
    from orchestration import wait_for_lab  # bench/orchestration.py: the lab is shared with others

    # Kept afterwards (a few hundred KiB a run): the runs' evidence, should one not pass.
    work = Path(tempfile.mkdtemp(prefix="swaplab-noise-"))
    copy = campaign_copy(path, work, repeats, timing)
    wait_for_lab(900)
    record = run_swaplab(copy, work / "results", CAMPAIGN_TIMEOUT_S)
    how = f"repeats {repeats or 'as in the file'}, timing {timing or 'as in the file'}, one node at a time"
    series = Series(source=f"`swaplab run` of {path} ({how}): campaign {record.get('campaign_id')}")
    add_record(series, record)
    log(f"campaign {record.get('campaign_id')}: {record.get('verdict')}; results in {work / 'results'}")
    log(f"stored in the results database: analyse it again with --campaign {record.get('campaign_id')}")
    return series


# -- running a campaign copy (shared with bench/measurement_cost.py) ------------------------------------
def one_node_lab(inventory: Path, workdir: Path) -> Path:
    """A copy of ``inventory`` whose node pool is its first node only: runs then go one at a time.

    Same lab name, NFS server and node settings; only the other nodes are left out.
    """
    lab = load_lab(inventory)
    data = yaml.safe_load(inventory.read_text())
    hosts = data
    for key in (*NODE_GROUP, "hosts"):
        hosts = hosts[key]
    keep = lab.nodes[0].name
    for name in [name for name in hosts if name != keep]:
        del hosts[name]
    copy = workdir / f"{lab.name}-{keep}.yml"
    copy.write_text(f"# {inventory} with node {keep} only (written by bench/noise_floor.py)\n" + yaml.safe_dump(data))
    if [node.name for node in load_lab(copy).nodes] != [keep]:
        raise SystemExit(f"{inventory}: could not reduce the node pool to {keep}")
    return copy


def campaign_copy(path: Path, workdir: Path, repeats: int | None, timing: str | None = None) -> Path:
    """A copy of the campaign file in ``workdir``: ``repeats`` and ``timing`` set, ``lab`` a one-node copy.

    The text is edited rather than re-dumped, so the copy says what the file says (YAML
    float text like ``version: 4.10`` survives). Local kernel files would be relative to
    the original's directory: such campaigns are refused.
    """
    campaign = load_campaign(path)
    if any(kernel.local_paths() for kernel in campaign.spec.kernels):
        raise SystemExit(f"{path}: campaigns with local kernel files are not supported by this benchmark")
    lab = one_node_lab(Path(campaign.lab.inventory), workdir)
    text = _set_top_key(path.read_text(), "lab", json.dumps(str(lab)))  # a JSON string is YAML
    if repeats is not None:
        text = _set_top_key(text, "repeats", str(repeats))
    if timing is not None:
        text = _set_top_key(text, "timing", timing)
    copy = workdir / path.name
    copy.write_text(text)
    loaded = load_campaign(copy)  # a copy that says something else must not run
    if repeats is not None and loaded.spec.repeats != repeats:
        raise SystemExit(f"{path}: could not set repeats in a copy (a flow-style campaign?)")
    if timing is not None and loaded.spec.timing != timing:
        raise SystemExit(f"{path}: could not set timing in a copy (a flow-style campaign?)")
    return copy


def _set_top_key(text: str, key: str, value: str) -> str:
    """Replace (or append) a top-level ``key: value`` line of a block-style YAML file
    (``value`` is YAML text)."""
    line = f"{key}: {value}"
    pattern = re.compile(rf"^{key}:.*$", re.MULTILINE)
    if pattern.search(text):
        return pattern.sub(lambda _m: line, text, count=1)
    return text.rstrip("\n") + f"\n{line}\n"


def _exit_on_sigterm(_signum: int, _frame: object) -> None:
    raise SystemExit(143)


def run_swaplab(campaign_file: Path, results: Path, timeout_s: float) -> dict[str, Any]:
    """``swaplab run --json`` with its own services; its result.json (whatever the exit code)."""
    env = {k: v for k, v in os.environ.items() if k != "SWAPLAB_REDIS_URL"}  # it starts its own
    env["SWAPLAB_RESULTS"] = str(results)
    argv = [str(SWAPLAB), "run", "--json", str(campaign_file)]
    proc = subprocess.Popen(argv, cwd=REPO, env=env, stdout=subprocess.PIPE, text=True)
    # A benchmark stopped with SIGTERM stops its run too (below), not only itself.
    signal.signal(signal.SIGTERM, _exit_on_sigterm)
    try:
        out, _ = proc.communicate(timeout=timeout_s)
    except BaseException:
        proc.terminate()  # swaplab run treats SIGTERM like Ctrl-C: guests off, services stopped
        proc.communicate(timeout=120)
        raise
    try:
        record: dict[str, Any] = json.loads(out)
    except json.JSONDecodeError:
        raise SystemExit(f"{campaign_file}: swaplab run exited {proc.returncode} without result.json") from None
    return record


# -- statistics ------------------------------------------------------------------------------------
def describe(values: Sequence[float | None]) -> dict[str, float | int | None]:
    """n, mean, sd, coefficient of variation (%), min and max of the values that are numbers."""
    kept = [v for v in values if v is not None]
    if not kept:
        return {"n": 0, "mean": None, "sd": None, "cv_pct": None, "min": None, "max": None}
    mean = statistics.fmean(kept)
    sd = statistics.stdev(kept) if len(kept) > 1 else None
    # A figure that is 0 in every run (retransmissions) has no relative spread to speak of.
    cv = None if sd is None or mean == 0 else 100 * sd / abs(mean)
    return {"n": len(kept), "mean": mean, "sd": sd, "cv_pct": cv, "min": min(kept), "max": max(kept)}


def wilson(successes: int, trials: int, z: float = Z95) -> tuple[float, float]:
    """The Wilson score interval of a binomial proportion (sound at 0 and near it, unlike p ± z·se)."""
    if trials == 0:
        return (0.0, 1.0)
    p = successes / trials
    denominator = 1 + z * z / trials
    centre = (p + z * z / (2 * trials)) / denominator
    half = z * math.sqrt(p * (1 - p) / trials + z * z / (4 * trials * trials)) / denominator
    return max(0.0, centre - half), min(1.0, centre + half)


def group_sizes(n: int) -> list[int]:
    """k = 3, 5 and n // 2, those that two disjoint groups of n runs can have."""
    return sorted({k for k in (*DEFAULT_GROUP_SIZES, n // 2) if k >= 2 and 2 * k <= n})


def permutation_test(series: Series, k: int, permutations: int, seed: int) -> dict[str, Any]:
    """Split the runs into two disjoint random groups of ``k`` many times; count outcomes.

    Each split is compared with the comparison's own (exact, seedless) interval.
    """
    rng = random.Random(seed * 1_000_003 + k)
    verdicts: dict[str, int] = dict.fromkeys(OUTCOMES, 0)
    per_figure: dict[str, dict[str, int]] = {name: dict.fromkeys(OUTCOMES, 0) for name in FIGURE_NAMES}
    for _ in range(permutations):
        picked = rng.sample(range(len(series.runs)), 2 * k)
        result = compare(series.values(picked[:k]), series.values(picked[k:]), primary=DEFAULT_PRIMARY)
        verdicts[result.verdict] += 1
        for figure in result.figures:
            per_figure[figure.name][figure.outcome] += 1
    return {
        "k": k,
        "permutations": permutations,
        "verdict": _rates(verdicts, permutations),
        "figures": {name: _rates(counts, permutations) for name, counts in per_figure.items()},
    }


def _rates(counts: Mapping[str, int], trials: int) -> dict[str, Any]:
    """Outcome counts, and the false-alarm rate (regression or improvement) with its interval."""
    alarms = sum(counts[outcome] for outcome in ALARMS)
    low, high = wilson(alarms, trials)
    return {"counts": dict(counts), "alarms": alarms, "rate": alarms / trials if trials else None, "ci95": [low, high]}


# -- output ------------------------------------------------------------------------------------------
def analyse(series: Series, permutations: int, seed: int) -> dict[str, Any]:
    """The whole report: per-figure spread and false-alarm rates per group size."""
    n = len(series.runs)
    spread = {name: describe([run["figures"].get(name) for run in series.runs]) for name in FIGURE_NAMES}
    tests = []
    for k in group_sizes(n):
        log(f"{permutations} random splits into two groups of {k} ...")
        tests.append(permutation_test(series, k, permutations, seed))
    return {
        "source": series.source,
        "campaign_ids": series.campaign_ids,
        "context": series.context,
        "passing_runs": n,
        "runs_not_passing": series.not_passing,
        "primary": DEFAULT_PRIMARY,
        "seed": seed,
        "figures": spread,
        "false_alarms": tests,
    }


def _num(value: float | int | None, digits: int = 4) -> str:
    """A number in a table cell; '-' for none."""
    if value is None:
        return "-"
    return f"{value:.{digits}g}" if abs(value) < 1e5 else f"{value:.0f}"


def _rate(entry: Mapping[str, Any]) -> str:
    """A false-alarm rate with its interval, and how often the data did not suffice to decide."""
    low, high = entry["ci95"]
    text = f"{100 * entry['rate']:5.1f} % [{100 * low:4.1f}, {100 * high:4.1f}]"
    undecided = entry["counts"]["insufficient data"]
    return f"{text} ({undecided} insufficient)" if undecided else text


def render(report: Mapping[str, Any]) -> str:
    """The report as text tables."""
    source = report["source"] if len(report["source"]) <= 160 else report["source"][:157] + "..."
    lines = [
        f"{report['passing_runs']} passing node runs ({report['runs_not_passing']} runs not passing, left out) "
        f"from {source}",
        f"campaigns: {', '.join(report['campaign_ids'])}",
    ]
    if report["context"]:
        lines.append(f"kernel {report['context'].get('kernel')}, settings {json.dumps(_settings(report['context']))}")
    lines += [
        "",
        f"{'figure':<22} {'unit':<11} {'n':>3} {'mean':>10} {'sd':>10} {'CV %':>7} {'min':>10} {'max':>10}",
    ]
    for name, row in report["figures"].items():
        unit = BY_NAME[name].unit
        lines.append(
            f"{name:<22} {unit:<11} {row['n']:>3} {_num(row['mean']):>10} {_num(row['sd']):>10} "
            f"{_num(row['cv_pct'], 3):>7} {_num(row['min']):>10} {_num(row['max']):>10}"
        )
    lines += ["", *_render_alarms(report)]
    return "\n".join(lines)


def _render_alarms(report: Mapping[str, Any]) -> list[str]:
    """The false-alarm tables: the verdict per k, then every figure per k."""
    tests = report["false_alarms"]
    if not tests:
        return ["too few runs for two disjoint groups of 3: no false-alarm estimate"]
    permutations = tests[0]["permutations"]
    lines = [
        f"false alarms: {permutations} random splits into two disjoint groups of k runs, compared "
        f"(orchestrator.stats); a regression or improvement is a false alarm; rate [95 % Wilson CI]",
        f"{'k':>3}  {'verdict (' + report['primary'] + ')':<34} {'regr':>5} {'impr':>5} {'none':>5} {'insuff':>6}",
    ]
    for test in tests:
        counts = test["verdict"]["counts"]
        lines.append(
            f"{test['k']:>3}  {_rate(test['verdict']):<34} {counts['regression']:>5} {counts['improvement']:>5} "
            f"{counts['no change']:>5} {counts['insufficient data']:>6}"
        )
    header = f"{'figure':<22} " + " ".join(f"{'k = ' + str(t['k']):<40}" for t in tests)
    lines += ["", "per figure:", header.rstrip()]
    for name in FIGURE_NAMES:
        lines.append(f"{name:<22} " + " ".join(f"{_rate(t['figures'][name]):<40}" for t in tests).rstrip())
    return lines


def _settings(context: Mapping[str, Any]) -> dict[str, Any]:
    """The run settings of a context, without the kernel."""
    return {key: value for key, value in context.items() if key not in ("kernel", "kernel_version")}


def save_fixture(series: Series, path: Path) -> None:
    """The per-run figure values as JSON, for the comparison's unit tests."""
    context = series.context
    source = (
        f"Real figures of {len(series.runs)} passing node runs of one kernel ({context.get('kernel')}), "
        f"recorded by bench/noise_floor.py on {platform.node()} ({os.cpu_count()} cores, QEMU TCG) on "
        f"{datetime.date.today().isoformat()}; from {series.source}. Values are each node's own figures "
        f"(result.json nodes[].figures[name].value); null where a figure was not measured. Settings: "
        f"{json.dumps(_settings(context))}. Nothing edited."
    )
    keys = ("run_id", "campaign_id", "node", "kernel", "figures")
    data = {"_source": source, "_context": context, "runs": [{k: run.get(k) for k in keys} for run in series.runs]}
    path.write_text(json.dumps(data, indent=1) + "\n")
    log(f"saved {len(series.runs)} runs to {path}")


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    """The command line."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--run", type=Path, metavar="FILE", help="run this campaign file (one node at a time)")
    source.add_argument("--campaign", nargs="+", metavar="ID", help="stored campaign(s) from the results database")
    source.add_argument("--fixture", type=Path, metavar="PATH", help="a series saved with --save-fixture")
    parser.add_argument("--repeats", type=int, help="with --run: override the file's repeats")
    parser.add_argument("--timing", choices=TIMINGS, help="with --run: override the file's timing")
    parser.add_argument("--permutations", type=int, default=1000, help="random splits per group size (1000)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the random splits (0)")
    parser.add_argument("--json", action="store_true", help="print the figures as JSON")
    parser.add_argument("--save-fixture", type=Path, metavar="PATH", help="write the per-run figures to PATH")
    args = parser.parse_args(argv)
    if args.repeats is not None and (args.run is None or args.repeats < 1):
        parser.error("--repeats N (N >= 1) goes with --run")
    if args.permutations < 1:
        parser.error("--permutations must be at least 1")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    """Collect the series, save it if asked, print the figures."""
    args = parse_args(argv)
    if args.run is not None:
        series = from_campaign_file(args.run.resolve(), args.repeats, args.timing)
    elif args.campaign:
        series = from_database(args.campaign)
    else:
        series = from_fixture(args.fixture)
    if args.save_fixture is not None:
        save_fixture(series, args.save_fixture)
    report = analyse(series, args.permutations, args.seed)
    print(json.dumps(report, indent=2) if args.json else render(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
