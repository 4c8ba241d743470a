"""Orchestration overhead on the embedded lab: what a campaign costs beyond booting the
nodes and running the workload.

    .venv/bin/python bench/orchestration.py [--runs N] [--json]

Runs ``swaplab run --json`` on campaigns/smoke.yaml (1 node) and campaigns/pair.yaml (2
nodes), N times each, with SWAPLAB_REDIS_URL unset so that ``swaplab run`` starts and stops
its own redis-server and Celery worker, and reports per campaign:

* overhead = campaign ``wall_s`` − the slowest node's (boot + workload) seconds;
* lab preparation of that node (kernel + image + nfs + mount + clock + collect), shown
  apart, and the rest = overhead − preparation: scheduling, Celery, barrier, reporting;
* the 2-node start skew (``start_skew_ms``) and every node's clock offset and uncertainty.

The lab's fixed ports (NFS 12049, guest SSH 17221-17224, Prometheus 19090) are shared with
anyone else running a campaign on this host: the benchmark waits until they are free.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import socket
import statistics
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
SWAPLAB = REPO / ".venv" / "bin" / "swaplab"
CAMPAIGNS = ["campaigns/smoke.yaml", "campaigns/pair.yaml"]
NFS_PORT = 12049
RUN_PORTS = [19090, 17221, 17222, 17223, 17224]  # the embedded Prometheus, guest SSH forwards
PREP_PHASES = ["kernel", "image", "nfs", "mount", "clock", "collect"]
CAMPAIGN_TIMEOUT_S = 1200


def log(message: str) -> None:
    """Progress on stderr; stdout carries only the figures."""
    print(f"[orchestration] {message}", file=sys.stderr, flush=True)


def port_in_use(port: int) -> bool:
    with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=0.5):
        return True
    return False


def our_nfs_serving() -> bool:
    """Is the lab's NFS server (ours, from this cache dir) serving? Then 12049 is not 'busy'."""
    out = subprocess.run([str(SWAPLAB), "nfs", "status", "--json"], cwd=REPO, capture_output=True, text=True)
    with contextlib.suppress(json.JSONDecodeError):
        return bool(json.loads(out.stdout).get("serving"))
    return False


def lab_guests() -> int:
    """QEMU guests of the local lab running on this host (whoever started them)."""
    count = 0
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        with contextlib.suppress(OSError):
            argv = cmdline.read_bytes().split(b"\0")
            count += any(b"qemu-system" in arg for arg in argv[:1]) and b"-name" in argv
    return count


def busy_lab() -> list[str]:
    """What someone else holds of the lab: their campaign would collide with ours."""
    busy = [str(port) for port in RUN_PORTS if port_in_use(port)]
    if port_in_use(NFS_PORT) and not our_nfs_serving():
        busy.append(str(NFS_PORT))
    if guests := lab_guests():
        busy.append(f"{guests} qemu guest(s)")
    if e2e_running():
        busy.append("an e2e test session")  # it boots guests between its own quiet spells
    return busy


def e2e_running() -> bool:
    """A pytest session over tests/e2e on this host (another engineer's) will want the lab."""
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        with contextlib.suppress(OSError):
            argv = [arg.decode(errors="replace") for arg in cmdline.read_bytes().split(b"\0")]
            if any("pytest" in arg for arg in argv[:2]) and any("e2e" in arg for arg in argv):
                return True
    return False


def wait_for_lab(wait_s: float, quiet_s: float = 45) -> None:
    """Block until the lab has been free for ``quiet_s`` in a row: a test suite that just
    finished one campaign often starts the next within seconds (checking once raced with that)."""
    deadline = time.monotonic() + wait_s
    free_since: float | None = None
    while free_since is None or time.monotonic() - free_since < quiet_s:
        busy = busy_lab()
        if busy:
            if time.monotonic() > deadline:
                raise SystemExit(f"lab still busy after {wait_s:g} s: {busy}")
            log(f"lab busy ({', '.join(busy)}): waiting")
            free_since = None
        elif free_since is None:
            free_since = time.monotonic()
        time.sleep(5)


def run_campaign(path: str) -> tuple[dict[str, Any], float]:
    """``swaplab run --json`` with its own services; result.json and the process's wall time."""
    env = {k: v for k, v in os.environ.items() if k != "SWAPLAB_REDIS_URL"}
    started = time.monotonic()
    proc = subprocess.Popen([str(SWAPLAB), "run", "--json", path], cwd=REPO, env=env, stdout=subprocess.PIPE, text=True)
    try:
        out, _ = proc.communicate(timeout=CAMPAIGN_TIMEOUT_S)
    except BaseException:
        proc.terminate()  # swaplab run treats SIGTERM like Ctrl-C: guests off, services stopped
        proc.communicate(timeout=120)
        raise
    elapsed = time.monotonic() - started
    try:
        return json.loads(out), elapsed
    except json.JSONDecodeError:
        raise SystemExit(f"{path}: swaplab run exited {proc.returncode} without result.json") from None


def node_busy_s(node: dict[str, Any]) -> float:
    phases = node.get("phases_s") or {}
    return float(phases.get("boot", 0.0)) + float(phases.get("workload", 0.0))


def run_figures(run: dict[str, Any]) -> dict[str, Any]:
    """The slowest node's critical path and preparation, the start skew and clock offsets of one run."""
    nodes = run.get("nodes") or []
    slowest = max(nodes, key=node_busy_s)
    phases = slowest.get("phases_s") or {}
    return {
        "run_id": run.get("run_id"),
        "verdict": run.get("verdict"),
        "slowest_node": slowest.get("node"),
        "boot_workload_s": round(node_busy_s(slowest), 3),
        "prep_s": {phase: round(float(phases.get(phase, 0.0)), 3) for phase in PREP_PHASES},
        "barrier_s": round(float(phases.get("barrier", 0.0)), 3),
        "start_skew_ms": run.get("start_skew_ms"),
        "clocks": [
            {
                "node": n.get("node"),
                "offset_ms": n.get("clock_offset_ms"),
                "uncertainty_ms": n.get("clock_uncertainty_ms"),
            }
            for n in nodes
        ],
    }


def campaign_figures(result: dict[str, Any], process_s: float) -> dict[str, Any]:
    """Overhead of one campaign; several runs are taken to be sequential (ours have one)."""
    runs = [run_figures(run) for run in result.get("runs") or []]
    wall = float(result["wall_s"])
    busy = sum(run["boot_workload_s"] for run in runs)
    prep = sum(sum(run["prep_s"].values()) for run in runs)
    return {
        "campaign": result.get("campaign"),
        "campaign_id": result.get("campaign_id"),
        "verdict": result.get("verdict"),
        "wall_s": wall,
        "process_s": round(process_s, 1),
        "boot_workload_s": round(busy, 3),
        "overhead_s": round(wall - busy, 3),
        "prep_s": round(prep, 3),
        "overhead_minus_prep_s": round(wall - busy - prep, 3),
        "runs": runs,
    }


def summary(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Mean/min/max of the headline figures over the repetitions of one campaign."""
    out: dict[str, Any] = {}
    for key in ["wall_s", "process_s", "boot_workload_s", "overhead_s", "prep_s", "overhead_minus_prep_s"]:
        values = [row[key] for row in rows]
        out[key] = {"mean": round(statistics.fmean(values), 3), "min": min(values), "max": max(values)}
    return out


def render(report: dict[str, Any]) -> str:
    head = (
        f"{'campaign':<8} {'id':<28} {'verdict':<8} {'wall s':>7} {'proc s':>7} {'boot+work s':>11} "
        f"{'overhead s':>10} {'prep s':>7} {'rest s':>7} {'skew ms':>8}"
    )
    lines = [head, "-" * len(head)]
    for row in report["campaigns"]:
        skew = row["runs"][0]["start_skew_ms"] if row["runs"] else None
        lines.append(
            f"{row['campaign']:<8} {row['campaign_id']:<28} {row['verdict']:<8} {row['wall_s']:>7.1f} "
            f"{row['process_s']:>7.1f} {row['boot_workload_s']:>11.2f} {row['overhead_s']:>10.2f} "
            f"{row['prep_s']:>7.2f} {row['overhead_minus_prep_s']:>7.2f} {'-' if skew is None else f'{skew:.3f}':>8}"
        )
    lines += ["", "per run: slowest node, preparation phases (s), barrier wait, clock offsets ± uncertainty"]
    for row in report["campaigns"]:
        for run in row["runs"]:
            prep = " ".join(f"{k}={v:g}" for k, v in run["prep_s"].items())
            clocks = ", ".join(f"{c['node']} {c['offset_ms']:+.1f}±{c['uncertainty_ms']:.1f} ms" for c in run["clocks"])
            lines.append(
                f"{row['campaign_id']} {run['run_id']} {run['slowest_node']}: {prep} barrier={run['barrier_s']:g}"
            )
            lines.append(f"    clocks: {clocks}")
    return "\n".join(lines)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--runs", type=int, default=1, help="repetitions of each campaign (default 1)")
    parser.add_argument("--json", action="store_true", help="print the figures as JSON")
    parser.add_argument("--wait-s", type=float, default=900, help="how long to wait for busy lab ports")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    wait_for_lab(args.wait_s)
    nfs_was_serving = our_nfs_serving()
    rows: list[dict[str, Any]] = []
    try:
        for repetition in range(args.runs):
            for path in CAMPAIGNS:
                wait_for_lab(args.wait_s)
                log(f"{path} ({repetition + 1}/{args.runs})")
                result, process_s = run_campaign(path)
                rows.append(campaign_figures(result, process_s))
    finally:
        # swaplab run stops an NFS server it started, but an interrupted run may leave one up.
        if not nfs_was_serving and our_nfs_serving():
            subprocess.run([str(SWAPLAB), "nfs", "stop"], cwd=REPO, check=False, stdout=subprocess.DEVNULL)
    by_campaign = {row["campaign"]: summary([r for r in rows if r["campaign"] == row["campaign"]]) for row in rows}
    report = {"campaigns": rows, "summary": by_campaign}
    print(json.dumps(report, indent=2) if args.json else render(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
