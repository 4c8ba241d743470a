"""Restart recovery: how often a node swapping over NFSv4.1 comes back from a knfsd restart.

    .venv/bin/python bench/restart_recovery.py [--after-mib 150] [--repeats 6]
                                               [--campaign FILE] [--json]

When the NFS server restarts it forgets every client's state; a node swapping to it must
reclaim its open swap file in the server's grace period, and the requests that does are
allocations made while memory has run out. The benchmark runs the campaign (default
``bench/campaigns/restart.yaml``: a 192 MiB node on the lab-in-a-box swapping 288 MiB to
knfsd) with its one ``server-restart`` fault at ``--after-mib`` MiB swapped out, one run at
a time, and counts per outcome, with a 95 % Wilson interval:

- recovered: the run passed and swap-out came back after the restart (the recovery time is
  listed);
- kernel hang / other fail: the verdict's reason;
- slow swapoff: the run passed, but its teardown (swapoff reads every page back) took more
  than ``SLOW_TEARDOWN_S`` — a node still struggling after the workload ended.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from noise_floor import CAMPAIGN_TIMEOUT_S, REPO, campaign_copy, log, run_swaplab, wilson  # bench/noise_floor.py

from model.campaign import load_campaign

DEFAULT_CAMPAIGN = REPO / "bench" / "campaigns" / "restart.yaml"
SLOW_TEARDOWN_S = 60.0


def fault_copy(base: Path, after_mib: int, workdir: Path) -> Path:
    """The campaign with its restart at ``after_mib`` MiB swapped out and its lab by absolute path."""
    text = base.read_text()
    text, count = re.subn(r"after_swapped_mib: \d+", f"after_swapped_mib: {after_mib}", text, count=1)
    if count != 1:
        raise SystemExit(f"{base}: no 'after_swapped_mib:' of a fault to set")
    lab = Path(load_campaign(base).lab.inventory)
    text = re.sub(r"^lab:.*$", f"lab: {json.dumps(str(lab))}", text, count=1, flags=re.MULTILINE)
    copy = workdir / f"after-{after_mib}-{base.name}"
    copy.write_text(text)
    return copy


def outcome(node: Mapping[str, Any]) -> tuple[str, float | None]:
    """What one node did: its outcome's name and, when it recovered, the recovery time."""
    failure = node.get("failure") or {}
    faults = node.get("faults") or [{}]
    if node.get("verdict") != "pass":
        reason = str(failure.get("reason") or node.get("reasons") or "?")
        return ("kernel hang" if "hang" in reason else f"{node.get('verdict')}: {reason[:60]}"), None
    teardown = float(node.get("finished_at", 0)) - float(node.get("started_at", 0)) - sum(node["phases_s"].values())
    if teardown > SLOW_TEARDOWN_S:
        return "recovered, slow swapoff", faults[0].get("recovery_s")
    return "recovered", faults[0].get("recovery_s")


def summarise(record: Mapping[str, Any]) -> dict[str, Any]:
    outcomes: dict[str, int] = {}
    recovery: list[float] = []
    runs = record.get("runs") or []
    for run in runs:
        for node in run.get("nodes") or []:
            name, seconds = outcome(node)
            outcomes[name] = outcomes.get(name, 0) + 1
            if seconds is not None:
                recovery.append(seconds)
    total = sum(outcomes.values())
    return {
        "runs": total,
        "outcomes": {name: {"runs": n, "ci95": list(wilson(n, total))} for name, n in sorted(outcomes.items())},
        "recovery_s": sorted(recovery),
        "campaign_id": record.get("campaign_id"),
    }


def render(report: Mapping[str, Any]) -> str:
    lines = [f"restart recovery: {report['campaign']}, knfsd restarted after {report['after_mib']} MiB swapped out", ""]
    for name, entry in report["summary"]["outcomes"].items():
        low, high = entry["ci95"]
        lines.append(f"  {name:<28} {entry['runs']}/{report['summary']['runs']}  [{100 * low:.0f}, {100 * high:.0f}] %")
    lines.append(f"  recovery times (s): {report['summary']['recovery_s']}")
    lines.append(f"  campaign {report['summary']['campaign_id']}")
    return "\n".join(lines)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--after-mib", type=int, default=150, help="MiB swapped out when knfsd restarts")
    parser.add_argument("--repeats", type=int, default=6)
    parser.add_argument("--campaign", type=Path, default=DEFAULT_CAMPAIGN)
    parser.add_argument("--json", action="store_true")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if args.repeats < 1 or args.after_mib < 1:
        raise SystemExit("--repeats and --after-mib must be at least 1")
    work = Path(tempfile.mkdtemp(prefix="swaplab-restart-"))  # kept: the runs' evidence
    copy = campaign_copy(fault_copy(args.campaign, args.after_mib, work), work, args.repeats)
    log(f"{args.repeats} run(s), knfsd restarted after {args.after_mib} MiB swapped out; evidence in {work}")
    record = run_swaplab(copy, work / "results", CAMPAIGN_TIMEOUT_S)
    report = {"campaign": str(args.campaign), "after_mib": args.after_mib, "summary": summarise(record)}
    print(json.dumps(report, indent=2) if args.json else render(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
