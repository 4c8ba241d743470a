"""Blocks of identical runs taken at different times: gathered into one fixture, and what
comparisons make of them (false alarms across time, power, lab time).

    .venv/bin/python bench/blocks.py gather --out PATH BLOCK,TIMING,STARTED,ENDED,RESULTS_DIR [...]
    .venv/bin/python bench/blocks.py study [--fixture PATH] [--trials 2000] [--json]

A block is one ``bench/noise_floor.py --run ... --timing T --repeats N`` campaign: N runs
of one kernel, one at a time, on one node. Blocks an hour or more apart are what the
across-time false alarms of bench/precision.py (``--blocks``) are measured on: identical
kernels compared across a drifting host, as a nightly comparison or ``swaplab compare``
does.

Each run's figures are computed again from its raw files (``samples.jsonl`` and
``node-result.json`` below RESULTS_DIR/<campaign>/<run>/<node>) with ``model.figures``, as
a worker computes them now. A guest-time run recorded before the worker kept when it saw
the workload start and end is placed on the node's own clock instead (its samples' and
its start's stamps, the same clock): the two rules bound the same ticks but for the idle
second at each end, where no counter moves.

The fixture records the machine (host name, cores, CPU model, kernel) and each block's
start and end (UTC), beside the runs.
"""

from __future__ import annotations

import argparse
import datetime
import itertools
import json
import os
import platform
import random
import statistics
import sys
from collections import Counter
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from noise_floor import describe, wilson

from model.figures import BY_NAME, Record, figures_over, window_between
from model.runspec import WorkloadOutcome
from orchestrator.stats import DEFAULT_POLICIES, RECOMMENDED_REPEATS, Policy, across_time_drift, compare, side_values

GUEST_PREFIX = "guest"


def log(message: str) -> None:
    print(f"[blocks] {message}", file=sys.stderr, flush=True)


def _samples(folder: Path) -> list[Record]:
    return [json.loads(line) for line in (folder / "samples.jsonl").read_text().splitlines() if line.strip()]


def _node_clock_window(samples: list[Record], work: WorkloadOutcome) -> tuple[float, float] | None:
    """The workload's bounds as host receive times of the ticks its node clock places
    around it (older guest-time runs: no receive times of its lines were kept)."""
    if work.started_node_ns is None or work.elapsed_s is None:
        return None
    start_ns, end_ns = work.started_node_ns, work.started_node_ns + work.elapsed_s * 1e9
    before = [s for s in samples if s.get("node_time_ns", 0) <= start_ns]
    after = [s for s in samples if s.get("node_time_ns", 0) >= end_ns]
    if not before or not after:
        return None
    return float(before[-1]["host_time_ns"]) / 1e9, float(after[0]["host_time_ns"]) / 1e9


def run_figures(folder: Path, guest: bool) -> dict[str, float | None]:
    """One node run's figures from its raw files, by the worker's rule."""
    result = json.loads((folder / "node-result.json").read_text())
    work = WorkloadOutcome.model_validate(result["workload"])
    samples = _samples(folder)
    ran = work.host_window_s(guest_clock=guest)
    if ran is None and guest:
        ran = _node_clock_window(samples, work)
    window = window_between(samples, *ran) if ran is not None else None
    return figures_over(window, work.elapsed_s)


def _clean(folder: Path) -> bool:
    """The node's own evidence: the workload finished, every page read back intact."""
    result = json.loads((folder / "node-result.json").read_text())
    work = result.get("workload") or {}
    return (
        bool(work.get("done"))
        and work.get("bad_pages") == 0
        and work.get("exit_status") == 0
        and not result.get("failure")
    )


def block_runs(results: Path, guest: bool) -> tuple[str, list[dict[str, Any]]]:
    """The runs of the one campaign below ``results`` that passed, and those whose node
    evidence is clean but whose judgement failed for another reason (Prometheus gone,
    say): their figures are the node's own samples, kept with the verdict and why."""
    [campaign] = [d for d in results.iterdir() if (d / "result.json").is_file()]
    record = json.loads((campaign / "result.json").read_text())
    runs = []
    for run in record["runs"]:
        folders = [campaign / run["run_id"] / node["node"] for node in run["nodes"]]
        judged = run.get("verdict")
        if judged != "pass" and not (folders and all(map(_clean, folders))):
            log(f"{campaign.name} {run['run_id']}: {judged}, left out")
            continue
        for node, folder in zip(run["nodes"], folders, strict=True):
            entry = {
                "run_id": run["run_id"],
                "node": node["node"],
                "started_at": run.get("started_at"),
                "finished_at": run.get("finished_at"),
                "figures": run_figures(folder, guest),
            }
            if judged != "pass":
                reasons = node.get("reasons") or run.get("reasons") or ["?"]
                entry |= {"verdict": judged, "note": f"node evidence clean; judged {judged}: {reasons[0]}"}
            runs.append(entry)
    return campaign.name, runs


def _machine() -> dict[str, Any]:
    model = next(
        (
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if line.startswith("model name")
        ),
        "?",
    )
    return {"host": platform.node(), "cores": os.cpu_count(), "cpu": model, "kernel": platform.release()}


# -- what comparisons make of them ------------------------------------------------------------------
FIXTURE = Path(__file__).resolve().parent.parent / "tests/fixtures/figures/blocks.json"
PRIMARY = "swap_out_mibps"
EFFECT = 0.10
SIZES = (4, 5, 6, 7)
Side = list[dict[str, float | None]]


def load(path: Path) -> dict[str, Any]:
    data: dict[str, Any] = json.loads(path.read_text())
    return data


def by_timing(data: Mapping[str, Any]) -> dict[str, list[dict[str, Any]]]:
    """The blocks of each timing mode, in block order."""
    out: dict[str, list[dict[str, Any]]] = {}
    for block in sorted(data["blocks"], key=lambda b: b["block"]):
        out.setdefault(block["timing"], []).append(block)
    return out


def figures(block: Mapping[str, Any]) -> Side:
    return [run["figures"] for run in block["runs"]]


def verdict(a: Side, b: Side, drift: float = 0.0) -> str:
    """The comparison's verdict of B against A, as a campaign's is judged (one value per run)."""
    return compare(side_values(a), side_values(b), primary=PRIMARY, drift=drift).verdict


def slower(side: Side) -> Side:
    """A true 10 % slowdown of the primary figure (higher is better: divided by 1.1)."""
    return [{**run, PRIMARY: None if (v := run.get(PRIMARY)) is None else v / (1 + EFFECT)} for run in side]


def across_time(blocks: Sequence[Mapping[str, Any]], k: int, effect: bool, drift: float = 0.0) -> Counter[str]:
    """Every choice of k runs of one block against k runs of a later or earlier one, the
    interval widened by ``drift`` (what swaplab compare and last-pass do; 0: as if the
    sides had been interleaved)."""
    outcomes: Counter[str] = Counter()
    for first, second in itertools.permutations(blocks, 2):
        for a in itertools.combinations(figures(first), k):
            for b in itertools.combinations(figures(second), k):
                outcomes[verdict(list(a), slower(list(b)) if effect else list(b), drift)] += 1
    return outcomes


def interleaved(runs: Side, k: int, effect: bool, trials: int, rng: random.Random) -> Counter[str]:
    """k against k of the pooled runs, drawn without replacement (random order over every
    block's time: the randomised design an interleaved campaign approximates)."""
    outcomes: Counter[str] = Counter()
    for _ in range(trials):
        picked = rng.sample(runs, 2 * k)
        a, b = picked[:k], picked[k:]
        outcomes[verdict(a, slower(b) if effect else b)] += 1
    return outcomes


def at_tolerance(side: Side, name: str, policy: Policy) -> Side:
    """``side`` with ``name`` worse by exactly its tolerance: by the factor (1 + tolerance),
    or, for an event figure whose runs are mostly 0, by its absolute floor added."""
    better = BY_NAME[name].better
    values = [v for run in side if (v := run.get(name)) is not None]
    event = policy.abs_tolerance is not None and statistics.median(values or [0.0]) == 0

    floor = policy.abs_tolerance or 0.0

    def worse(value: float) -> float:
        if event:
            return value + floor if better == "lower" else value - floor
        return value * (1 + policy.tolerance) if better == "lower" else value / (1 + policy.tolerance)

    return [{**run, name: None if (v := run.get(name)) is None else worse(v)} for run in side]


def tolerance_power(runs: Side, name: str, k: int, trials: int, rng: random.Random) -> Counter[str]:
    """k against k pooled runs with B worse by ``name``'s tolerance, ``name`` the primary figure."""
    policy = DEFAULT_POLICIES[name]
    outcomes: Counter[str] = Counter()
    for _ in range(trials):
        picked = rng.sample(runs, 2 * k)
        a, b = picked[:k], at_tolerance(picked[k:], name, policy)
        outcomes[compare(side_values(a), side_values(b), primary=name).verdict] += 1
    return outcomes


def run_minutes(blocks: Sequence[Mapping[str, Any]]) -> float:
    """Lab minutes a run costs, boot and setup included: the blocks' wall time per run."""
    total = sum(_seconds(b["ended"]) - _seconds(b["started"]) for b in blocks)
    return total / 60 / sum(len(b["runs"]) for b in blocks)


def _seconds(stamp: str) -> float:
    return datetime.datetime.fromisoformat(stamp.replace("Z", "+00:00")).timestamp()


def cv_pct(values: Sequence[float | None]) -> float | None:
    """The coefficient of variation in percent, as noise_floor.py describes a series."""
    cv: float | None = describe(values)["cv_pct"]
    return cv


def study(data: Mapping[str, Any], trials: int, seed: int) -> dict[str, Any]:
    out: dict[str, Any] = {"machine": data.get("_machine"), "primary": PRIMARY, "effect": EFFECT, "modes": {}}
    for timing, blocks in by_timing(data).items():
        pooled = [run for block in blocks for run in figures(block)]
        minutes = run_minutes(blocks)
        mode: dict[str, Any] = {
            "blocks": [
                {"block": b["block"], "started": b["started"], "runs": len(b["runs"])}
                | {
                    "median": statistics.median(v for r in figures(b) if (v := r[PRIMARY]) is not None),
                    "cv_pct": cv_pct([r[PRIMARY] for r in figures(b)]),
                }
                for b in blocks
            ],
            "pooled_cv_pct": cv_pct([r.get(PRIMARY) for r in pooled]),
            "run_minutes": minutes,
            "sizes": {},
        }
        rng = random.Random(seed)
        for k in SIZES:
            row: dict[str, Any] = {"lab_minutes": 2 * k * minutes}
            if 2 * k <= len(pooled):
                row["interleaved_false"] = dict(interleaved(pooled, k, False, trials, rng))
                row["interleaved_power"] = dict(interleaved(pooled, k, True, trials, rng))
            if len(blocks) > 1 and all(len(b["runs"]) >= k for b in blocks):
                drift = across_time_drift(timing)
                row["drift"] = drift
                row["across_raw_false"] = dict(across_time(blocks, k, False))
                row["across_raw_power"] = dict(across_time(blocks, k, True))
                row["across_false"] = dict(across_time(blocks, k, False, drift))
                row["across_power"] = dict(across_time(blocks, k, True, drift))
            mode["sizes"][str(k)] = row
            log(f"{timing}, {k} a side: done")
        mode["tolerance_power"] = {
            name: dict(tolerance_power(pooled, name, RECOMMENDED_REPEATS, trials, rng)) for name in DEFAULT_POLICIES
        }
        out["modes"][timing] = mode
    return out


def _share(counts: Mapping[str, int], *outcomes: str) -> str:
    total = sum(counts.values())
    hits = sum(counts.get(o, 0) for o in outcomes)
    low, high = wilson(hits, total)
    return f"{100 * hits / total:5.1f} % [{100 * low:4.1f}-{100 * high:4.1f}] of {total}"


def print_text(result: Mapping[str, Any]) -> None:
    machine = result.get("machine") or {}
    print(
        f"machine: {machine.get('host')} ({machine.get('cores')} cores, {machine.get('cpu')}, kernel {machine.get('kernel')})"
    )
    print(f"primary figure {result['primary']}; power for a true {100 * result['effect']:.0f} % slowdown\n")
    for timing, mode in result["modes"].items():
        print(
            f"== timing {timing}: {mode['run_minutes']:.1f} lab minutes a run, pooled CV {mode['pooled_cv_pct']:.1f} %"
        )
        for block in mode["blocks"]:
            print(
                f"   block {block['block']} at {block['started']}: {block['runs']} runs, median {block['median']:.4g}, CV {block['cv_pct']:.1f} %"
            )
        for k, row in mode["sizes"].items():
            print(f"   {k} a side ({row['lab_minutes']:.0f} lab minutes):")
            allowance = f"across, ±{100 * row.get('drift', 0):g} %"
            for key, label in (("interleaved", "interleaved"), ("across_raw", "across, raw"), ("across", allowance)):
                if f"{key}_false" in row:
                    alarms = _share(row[f"{key}_false"], "regression", "improvement")
                    power = _share(row[f"{key}_power"], "regression")
                    print(f"     {label:<15} false alarms {alarms}   power {power}")
        print(f"   a change of each figure's tolerance, {RECOMMENDED_REPEATS} a side, interleaved:")
        for name, counts in mode["tolerance_power"].items():
            print(f"     {name:<22} power {_share(counts, 'regression')}")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    commands = parser.add_subparsers(dest="command", required=True)
    gather = commands.add_parser("gather", help="gather blocks' runs into a fixture")
    gather.add_argument("--out", type=Path, required=True)
    gather.add_argument("--note", default="", help="what else to say about the blocks")
    gather.add_argument("blocks", nargs="+", metavar="BLOCK,TIMING,STARTED,ENDED,RESULTS_DIR")
    analyse = commands.add_parser("study", help="false alarms and power on a blocks fixture")
    analyse.add_argument("--fixture", type=Path, default=FIXTURE)
    analyse.add_argument("--trials", type=int, default=2000, help="random draws per interleaved cell")
    analyse.add_argument("--seed", type=int, default=0)
    analyse.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    if args.command == "study":
        result = study(load(args.fixture), args.trials, args.seed)
        if args.json:
            print(json.dumps(result, indent=2))
        else:
            print_text(result)
        return 0
    return gather_blocks(args.out, args.note, args.blocks)


def gather_blocks(path: Path, note: str, specs: Sequence[str]) -> int:
    out: dict[str, Any] = {
        "_source": (
            "Blocks of identical runs of one kernel (bench/campaigns/noise.yaml, one node, one run at a "
            "time), taken at different times on one machine by bench/noise_floor.py --run; figures "
            f"recomputed from each run's raw files by bench/blocks.py. {note}"
        ).strip(),
        "_machine": _machine(),
        "blocks": [],
    }
    for spec in specs:
        block, timing, started, ended, results = spec.split(",", 4)
        campaign, runs = block_runs(Path(results), timing.startswith(GUEST_PREFIX))
        out["blocks"].append(
            {"block": int(block), "timing": timing, "started": started, "ended": ended, "campaign_id": campaign}
            | {"runs": runs}
        )
        log(f"block {block} {timing}: {len(runs)} runs from {campaign}")
    path.write_text(json.dumps(out, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
