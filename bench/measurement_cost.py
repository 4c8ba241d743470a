"""Cost of swaplab's own measurement: the same workload with and without swaplab watching.

    .venv/bin/python bench/measurement_cost.py [--repeats 5] [--campaign FILE] [--json]

Runs one workload on one kernel and node image, ``--repeats`` times in each of two modes,
interleaved (swaplab, bare, swaplab, bare ...):

* **swaplab**: a normal ``swaplab run`` of a one-run copy of the campaign (its own redis,
  Prometheus and Celery worker; the node's 1 Hz sampler streaming over SSH into the
  exporter, Prometheus scraping it every second, the barrier, the evaluation);
* **bare**: the same node booted by swaplab's own code in this process (the run's setup,
  then the node pipeline without the clock, sampler, barrier, workload and collect steps),
  and ``swaplab-node hog`` with the same MiB and passes started over SSH with nothing
  else running: no sampler, no exporter, no Prometheus, no Celery, no Redis.

The wall time of both is the hog's own: ``elapsed_ns`` of its ``done`` line, CLOCK_MONOTONIC
in the guest from just before the first page is written to just after the last is
verified (result.json ``nodes[0].workload.elapsed_s``; ``phases_s.workload`` also holds the
wait for the start instant and the SSH channel set-up, so it is not used). It prints each
mode's times and median, and the ratio of medians (swaplab / bare) with a bootstrap 95 %
interval and the min/max of the ratios of adjacent pairs. Goal: within 5 %.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from model.campaign import Campaign, load_campaign
from model.faults import FaultTimes
from model.runspec import Failure, NodeResult
from orchestrator.planner import new_campaign_id, node_specs, plan_runs, run_setup_spec
from workers.coordination.streams import WorkloadStream
from workers.node_session import NodeSession
from workers.pipeline.context import NodeContext
from workers.pipeline.run_setup import prepare_run
from workers.pipeline.step import KernelFault, Pipeline, Step, StepFailure

REPO = Path(__file__).resolve().parent.parent
SWAPLAB = REPO / ".venv" / "bin" / "swaplab"
DEFAULT_CAMPAIGN = REPO / "bench" / "campaigns" / "noise.yaml"
CAMPAIGN_TIMEOUT_S = 1800
# The node pipeline's steps the bare mode leaves out: everything that measures or
# synchronises. The hog itself is run by BareHogStep instead of the WorkloadStep.
LEFT_OUT = frozenset({"clock", "sampler", "barrier", "workload", "collect"})
BOOTSTRAP_RESAMPLES = 10_000
GOAL = 0.05


def log(message: str) -> None:
    """Progress on stderr; stdout carries only the figures."""
    print(f"[measurement-cost] {message}", file=sys.stderr, flush=True)


# -- the swaplab mode --------------------------------------------------------------------------------
def swaplab_run(copy: Path, results: Path) -> dict[str, Any]:
    """One ``swaplab run`` of the one-run campaign copy; the hog's wall time from result.json."""
    from noise_floor import run_swaplab  # bench/noise_floor.py

    record = run_swaplab(copy, results, CAMPAIGN_TIMEOUT_S)
    run = (record.get("runs") or [{}])[0]
    node = (run.get("nodes") or [{}])[0]  # a run refused before it held a node has none
    workload = node.get("workload") or {}
    node_dir = results / str(record.get("campaign_id")) / str(run.get("run_id")) / str(node.get("node"))
    return {
        "mode": "swaplab",
        "id": record["campaign_id"],
        "ok": run.get("verdict") == "pass",
        "verdict": run.get("verdict"),
        "elapsed_s": workload.get("elapsed_s"),
        "workload_phase_s": (node.get("phases_s") or {}).get("workload"),
        "boot_s": (node.get("phases_s") or {}).get("boot"),
        "kernel": (node.get("kernel") or {}).get("uname_r"),
        "image_hash": _image_hash(node_dir / "node-result.json"),
        "node": node.get("node"),
    }


def _image_hash(node_result: Path) -> str | None:
    """The node image a node booted, from its node-result.json (result.json does not carry it)."""
    try:
        return str(json.loads(node_result.read_text()).get("image_hash")) or None
    except (OSError, json.JSONDecodeError):
        return None


# -- the bare mode -----------------------------------------------------------------------------------
class _Progress:
    """Phases to stderr; no swap reports (nothing samples the node)."""

    def phase(self, node: str, phase: str, detail: str = "") -> None:
        """Say which phase the bare node is in."""
        log(f"  bare {node} {phase} {detail}".rstrip())

    def swap(self, node: str, out_mib: float, in_mib: float, note: str = "") -> None:
        """Never called: the bare hog step reports no swap progress."""


class _AloneBarrier:
    """One node, no barrier step: nothing to wait for and nobody to abort."""

    def arrive_and_wait(self, node: str, timeout_s: float) -> int:
        """Start now: there is nobody to wait for."""
        return time.time_ns()

    def abort(self, node: str, reason: str) -> None:
        """Nobody else waits."""

    def broken(self) -> str | None:
        """Never broken."""
        return None

    def note_fault(self, index: int, times: FaultTimes) -> bool:
        """Nobody else to tell."""
        return True

    def fault_times(self) -> dict[int, FaultTimes]:
        """No fault here."""
        return {}


class BareHogStep(Step[NodeContext]):
    """``swaplab-node hog`` started at once over SSH, read to its end, nothing else watching."""

    name = "bare-hog"
    phase = "workload"

    def timeout_s(self, ctx: NodeContext) -> float:
        """The workload's own timeout."""
        return float(ctx.spec.workload.timeout_s)

    def run(self, ctx: NodeContext, deadline: float) -> None:
        """Run the hog to its end and record what it reported."""
        assert ctx.shell is not None and ctx.workload_mib is not None
        work = ctx.spec.workload
        command = f"{ctx.tool} hog --mib {ctx.workload_mib} --passes {work.passes} --seed {work.seed}"
        launched = time.time_ns()
        stream = WorkloadStream(ctx.shell.open_channel(command), ctx.dir / "workload.log")
        # The same reader as the real step (it polls the channel every 0.2 s) with no
        # progress reports and no liveness probes: only QEMU exiting stops it early.
        finished = stream.wait(deadline=deadline, on_tick=lambda: None, stop=lambda: not ctx.machine_running())
        ctx.result.workload = stream.outcome(launched, 0)
        if not finished:
            raise KernelFault(f"the bare hog did not finish (last line: {stream.last_line!r})")


def bare_run(campaign: Campaign) -> dict[str, Any]:
    """Prepare and boot the campaign's first run on its first node, run the hog bare."""
    cid = new_campaign_id(f"{campaign.spec.name}-bare")
    plan = plan_runs(campaign)[0]
    try:
        prepared = prepare_run(run_setup_spec(campaign, cid, plan), lambda phase, text: log(f"  bare {phase} {text}"))
    except StepFailure as failure:  # listed as a failed bare run; the series goes on
        failed = NodeResult(run_id=plan.run_id, node=campaign.lab.nodes[0])
        failed.failure = Failure(cause=failure.cause, phase="prepare", reason=failure.reason)
        return _bare_row(cid, failed)
    spec = node_specs(campaign, cid, plan, 1, [campaign.lab.nodes[0]], prepared)[0]
    session = NodeSession(spec, _Progress(), _AloneBarrier(), lambda: False)
    if session.pipeline is not None:  # None: refused at admission, and run() says why
        kept = [step for step in session.pipeline.steps if step.name not in LEFT_OUT]
        session.pipeline = Pipeline([*kept, BareHogStep()])
        log(f"  bare pipeline: {' -> '.join(session.pipeline.names)}")
    result = session.run()
    return _bare_row(cid, result)


def _bare_row(cid: str, result: NodeResult) -> dict[str, Any]:
    """A bare run as a row of the report: ok only when the hog verified every page and exited 0."""
    work = result.workload
    ok = result.failure is None and work.done and work.bad_pages == 0 and work.exit_status == 0
    return {
        "mode": "bare",
        "id": cid,
        "ok": ok,
        "verdict": "ok" if ok else f"failed: {result.failure.reason if result.failure else work.last_line}",
        "elapsed_s": work.elapsed_s,
        "workload_phase_s": result.phases.get("workload"),
        "boot_s": result.phases.get("boot"),
        "kernel": result.kernel.get("uname_r"),
        "image_hash": result.image_hash or None,
        "node": result.node,
    }


# -- statistics --------------------------------------------------------------------------------------
def ratio_of_medians(a: Sequence[float], b: Sequence[float], seed: int = 0) -> dict[str, Any]:
    """median(a) / median(b), its bootstrap 95 % percentile interval (each mode resampled on
    its own); and of the ratios of adjacent (swaplab, bare) pairs ``a[i] / b[i]``: their
    median with a bootstrap interval (pairs resampled), min and max."""
    ratio = statistics.median(a) / statistics.median(b)
    rng = np.random.default_rng(seed)
    xa, xb = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    boot_a = np.median(xa[rng.integers(0, xa.size, (BOOTSTRAP_RESAMPLES, xa.size))], axis=1)
    boot_b = np.median(xb[rng.integers(0, xb.size, (BOOTSTRAP_RESAMPLES, xb.size))], axis=1)
    low, high = np.quantile(boot_a / boot_b, [0.025, 0.975])
    pairs = np.asarray([x / y for x, y in zip(a, b, strict=True)])
    # The pairs resampled as pairs: a drift of the host between repetitions moves both
    # runs of a pair, so it cancels here while it widens the ratio of medians above.
    boot_pairs = np.median(pairs[rng.integers(0, pairs.size, (BOOTSTRAP_RESAMPLES, pairs.size))], axis=1)
    pair_low, pair_high = np.quantile(boot_pairs, [0.025, 0.975])
    return {
        "ratio": ratio,
        "change_pct": 100 * (ratio - 1),
        "ci95": [float(low), float(high)],
        "pair_ratios": pairs.tolist(),
        "pair_median": float(np.median(pairs)),
        "pair_ci95": [float(pair_low), float(pair_high)],
        "pair_min": float(pairs.min()),
        "pair_max": float(pairs.max()),
        "within_goal": abs(ratio - 1) <= GOAL,
        "interval_within_goal": low >= 1 - GOAL and high <= 1 + GOAL,
    }


def summarise(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Per mode: the wall times of the runs that worked and their median; the ratio."""
    times = {mode: [r["elapsed_s"] for r in rows if r["mode"] == mode and r["ok"]] for mode in ("swaplab", "bare")}
    modes = {
        mode: {"n": len(values), "values_s": values, "median_s": statistics.median(values) if values else None}
        for mode, values in times.items()
    }
    # Pairs only of runs that both worked, in the order they ran.
    pairs = _pairs(rows)
    ratio = ratio_of_medians([p[0] for p in pairs], [p[1] for p in pairs]) if pairs else None
    return {"modes": modes, "ratio": ratio}


def _pairs(rows: list[dict[str, Any]]) -> list[tuple[float, float]]:
    """(swaplab, bare) wall times of each repetition in which both modes worked."""
    by_rep: dict[int, dict[str, dict[str, Any]]] = {}
    for row in rows:
        by_rep.setdefault(row["repetition"], {})[row["mode"]] = row
    return [
        (rep["swaplab"]["elapsed_s"], rep["bare"]["elapsed_s"])
        for rep in by_rep.values()
        if all(m in rep and rep[m]["ok"] and rep[m]["elapsed_s"] for m in ("swaplab", "bare"))
    ]


# -- output ------------------------------------------------------------------------------------------
def render(report: dict[str, Any]) -> str:
    """The report as text."""
    lines = [
        f"workload {report['workload']} on {report['kernel']}, node image {str(report['image'])[:12]}, "
        f"{report['repeats']} repetitions, interleaved swaplab, bare, swaplab, bare ...",
        "wall s = the hog's own start-to-end (nodes[0].workload.elapsed_s: elapsed_ns of its 'done' line)",
        "",
        f"{'rep':>3}  {'mode':<8} {'id':<36} {'verdict':<8} {'wall s':>8} {'phase s':>8} {'boot s':>7}",
    ]
    for row in report["runs"]:
        lines.append(
            f"{row['repetition']:>3}  {row['mode']:<8} {row['id']:<36} {str(row['verdict'])[:8]:<8} "
            f"{_f(row['elapsed_s'], 3):>8} {_f(row['workload_phase_s'], 2):>8} {_f(row['boot_s'], 2):>7}"
        )
    lines.append("")
    for mode, stats in report["summary"]["modes"].items():
        values = ", ".join(f"{v:.2f}" for v in stats["values_s"])
        lines.append(f"{mode:<8} n={stats['n']}  median {_f(stats['median_s'], 3)} s  ({values})")
    ratio = report["summary"]["ratio"]
    if ratio is None:
        lines.append("no repetition in which both modes worked: no ratio")
        return "\n".join(lines)
    low, high = ratio["ci95"]
    lines += [
        f"ratio of medians swaplab / bare: {ratio['ratio']:.4f} ({ratio['change_pct']:+.2f} %), "
        f"bootstrap 95 % CI {low:.4f} .. {high:.4f}",
        f"adjacent pairs swaplab / bare: median {ratio['pair_median']:.4f}, bootstrap 95 % CI "
        f"{ratio['pair_ci95'][0]:.4f} .. {ratio['pair_ci95'][1]:.4f}, min {ratio['pair_min']:.4f}, "
        f"max {ratio['pair_max']:.4f}",
        f"goal within {GOAL * 100:g} %: ratio {'yes' if ratio['within_goal'] else 'NO'}, "
        f"whole interval {'yes' if ratio['interval_within_goal'] else 'no'}",
    ]
    return "\n".join(lines)


def _f(value: float | None, digits: int) -> str:
    """A number with ``digits`` decimals; '-' for none."""
    return "-" if value is None else f"{value:.{digits}f}"


# -- main --------------------------------------------------------------------------------------------
def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    """The command line."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--repeats", type=int, default=5, help="runs per mode (default 5)")
    parser.add_argument("--campaign", type=Path, default=DEFAULT_CAMPAIGN, help="campaign whose first run is used")
    parser.add_argument("--json", action="store_true", help="print the figures as JSON")
    parser.add_argument("--wait-s", type=float, default=900, help="how long to wait for a busy lab")
    args = parser.parse_args(argv)
    if args.repeats < 1:
        parser.error("--repeats must be at least 1")
    return args


def _nfs(command: str) -> None:
    """``swaplab nfs start|stop`` of the default lab (the one our campaign uses)."""
    subprocess.run([str(SWAPLAB), "nfs", command], cwd=REPO, check=False, stdout=subprocess.DEVNULL)


def measure(copy: Path, work: Path, repeats: int) -> list[dict[str, Any]]:
    """swaplab, bare, swaplab, bare ...: ``repeats`` runs of each mode, interleaved."""
    campaign = load_campaign(copy)
    rows = []
    for repetition in range(1, repeats + 1):
        log(f"repetition {repetition}/{repeats}: swaplab run")
        rows.append({"repetition": repetition, **swaplab_run(copy, work / "swaplab")})
        log(f"repetition {repetition}/{repeats}: bare  ({rows[-1]['elapsed_s']} s under swaplab)")
        rows.append({"repetition": repetition, **bare_run(campaign)})
        log(f"repetition {repetition}/{repeats}: bare took {rows[-1]['elapsed_s']} s")
    return rows


def main(argv: Sequence[str] | None = None) -> int:
    """Run both modes interleaved, print the figures."""
    from noise_floor import campaign_copy  # bench/noise_floor.py
    from orchestration import our_nfs_serving, wait_for_lab  # bench/orchestration.py

    args = parse_args(argv)
    work = Path(tempfile.mkdtemp(prefix="swaplab-cost-"))  # kept: both modes' evidence
    copy = campaign_copy(args.campaign.resolve(), work, repeats=1)
    # This process is the bare mode's worker: it serves the one-node copy of the lab and
    # writes its node results beside the swaplab runs'.
    os.environ["SWAPLAB_LABS"] = load_campaign(copy).lab.inventory
    os.environ["SWAPLAB_RESULTS"] = str(work / "bare")
    wait_for_lab(args.wait_s)
    nfs_was_serving = our_nfs_serving()
    # One NFS server for both modes, up for the whole series (swaplab run leaves a serving
    # one alone): neither mode pays for starting it.
    _nfs("start")
    try:
        rows = measure(copy, work, args.repeats)
    finally:
        if not nfs_was_serving:
            _nfs("stop")
    log(f"results of both modes in {work}")
    report = _report(args, rows)
    print(json.dumps(report, indent=2) if args.json else render(report))
    return 0


def _report(args: argparse.Namespace, rows: list[dict[str, Any]]) -> dict[str, Any]:
    """The whole report: what was run, every run, and the summary."""
    campaign = load_campaign(args.campaign.resolve())
    workload = campaign.spec.workloads[0]
    images = sorted({str(r["image_hash"]) for r in rows if r["image_hash"]})
    kernels = sorted({str(r["kernel"]) for r in rows if r["kernel"]})
    if len(images) > 1 or len(kernels) > 1:
        log(f"WARNING: the runs did not all boot one image/kernel: {images} {kernels}")
    return {
        "campaign": str(args.campaign),
        "workload": f"{workload.name} ({workload.mib} MiB x {workload.passes} pass(es), node {campaign.ram_mib} MiB)",
        "kernel": ", ".join(kernels),
        "image": ", ".join(images),
        "repeats": args.repeats,
        "runs": rows,
        "summary": summarise(rows),
    }


if __name__ == "__main__":
    sys.exit(main())
