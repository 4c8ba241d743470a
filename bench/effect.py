"""A known small effect, measured by hand and by swaplab from the same real runs.

    .venv/bin/python bench/effect.py [--campaign bench/campaigns/effect.yaml] [--json]
    .venv/bin/python bench/effect.py --result PATH/result.json [--json]

Runs the campaign (``swaplab run --json``: the embedded lab, one run at a time,
counterbalanced) unless given the result.json of one that ran. Then, for each variant
against the baseline variant, it prints:

* **by hand**: each run's swap-in rate computed from its raw files only (``samples.jsonl``,
  ``node-result.json``): pages swapped in between the last sample at or before the worker
  saw the workload start and the first at or after it saw it end, over the workload's own
  elapsed seconds on the node's clock; per side the median and the coefficient of
  variation; the change as the median of every pairwise log ratio (Hodges-Lehmann);
* **swaplab**: the comparison of the campaign's primary figure as result.json has it
  (change, interval, verdict, the smallest change it could have seen).

The two changes must agree: they are one quantity computed twice. The effect is "known"
when it is 10-20 %, the size the comparisons exist to see.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import subprocess
import sys
from pathlib import Path
from typing import Any

from model.figures import MIB, PAGE_SIZE

REPO = Path(__file__).resolve().parents[1]
SWAPLAB = Path(sys.executable).with_name("swaplab")


def log(message: str) -> None:
    print(f"[effect] {message}", file=sys.stderr, flush=True)


def run_campaign(campaign: Path) -> dict[str, Any]:
    """``swaplab run --json`` of ``campaign``; its progress goes to our stderr."""
    log(f"running {campaign} (one run at a time; see its progress below)")
    proc = subprocess.run([str(SWAPLAB), "run", "--json", str(campaign)], stdout=subprocess.PIPE, text=True)
    if not proc.stdout.strip():
        raise SystemExit(f"swaplab run printed no result (exit {proc.returncode})")
    return dict(json.loads(proc.stdout))


def swap_in_by_hand(folder: Path) -> float:
    """MiB/s swapped in by one node's workload, from its raw files."""
    samples = [json.loads(line) for line in (folder / "samples.jsonl").read_text().splitlines() if line.strip()]
    work = json.loads((folder / "node-result.json").read_text())["workload"]
    start = work.get("started_seen_host_ns") or work["started_host_ns"]
    end = work.get("done_seen_host_ns") or start + work["elapsed_s"] * 1e9
    first = [s for s in samples if s["host_time_ns"] <= start][-1]
    last = next(s for s in samples if s["host_time_ns"] >= end)
    return float((last["pswpin"] - first["pswpin"]) * PAGE_SIZE / MIB / work["elapsed_s"])


def side_rates(result: dict[str, Any], variant: str) -> list[float]:
    """One value per passing run of ``variant``: the median of its nodes' by-hand rates."""
    where = Path(result["result_dir"])
    return [
        statistics.median(swap_in_by_hand(where / run["run_id"] / node["node"]) for node in run["nodes"])
        for run in result["runs"]
        if run["variant"] == variant and run["verdict"] == "pass"
    ]


def cv(values: list[float]) -> float:
    return statistics.stdev(values) / statistics.fmean(values) if len(values) > 1 else math.nan


def study(result: dict[str, Any]) -> list[dict[str, Any]]:
    """Per comparison in ``result``: the by-hand figures beside swaplab's."""
    out = []
    for entry in result.get("comparisons") or []:
        base, cand = side_rates(result, entry["baseline"]), side_rates(result, entry["candidate"])
        change = math.exp(statistics.median(math.log(c / b) for b in base for c in cand)) - 1 if base and cand else None
        [figure] = [f for f in entry["figures"] if f["figure"] == entry["primary"]]
        out.append(
            {
                "comparison": f"{entry['candidate']} vs {entry['baseline']}",
                "runs": [len(base), len(cand)],
                "by_hand": {
                    "baseline_median_mibps": statistics.median(base) if base else None,
                    "candidate_median_mibps": statistics.median(cand) if cand else None,
                    "baseline_cv": cv(base),
                    "candidate_cv": cv(cand),
                    "change_pct": None if change is None else 100 * change,
                },
                "swaplab": {
                    key: figure.get(key)
                    for key in ("figure", "change_pct", "ci_low", "ci_high", "outcome", "detectable", "summary")
                },
                "verdict": entry["verdict"],
            }
        )
    return out


def _print(rows: list[dict[str, Any]], result: dict[str, Any]) -> None:
    print(f"campaign {result['campaign_id']}: {len(result['runs'])} runs, verdict {result['verdict']}")
    for row in rows:
        hand = row["by_hand"]
        print(f"\n{row['comparison']} ({row['runs'][0]} vs {row['runs'][1]} runs)")
        print(
            f"  by hand:  swap-in {hand['baseline_median_mibps']:.3f} -> {hand['candidate_median_mibps']:.3f} MiB/s, "
            f"change {hand['change_pct']:+.1f} %, CV {100 * hand['baseline_cv']:.1f} % / {100 * hand['candidate_cv']:.1f} %"
        )
        print(f"  swaplab:  {row['swaplab']['summary']}")
        print(f"  verdict:  {row['verdict']}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--campaign", type=Path, default=REPO / "bench" / "campaigns" / "effect.yaml")
    parser.add_argument("--result", type=Path, help="the result.json of a campaign that ran (no new runs)")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    result = json.loads(args.result.read_text()) if args.result else run_campaign(args.campaign)
    rows = study(result)
    if args.json:
        print(json.dumps({"campaign_id": result["campaign_id"], "comparisons": rows}, indent=2))
    else:
        _print(rows, result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
