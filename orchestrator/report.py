"""Campaign results: result.json (the machine form) and the summary table (the human one)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, TextIO

from orchestrator.verdict import MIB, NodeVerdict
from workers.runspec import NodeResult
from workers.samples import swap_moved_bytes


def node_entry(result: NodeResult, verdict: NodeVerdict) -> dict[str, Any]:
    """One node's part of result.json: verdict, checks, the figures a reader wants first."""
    out, into = swap_moved_bytes(result.counters_first, result.counters_last) if result.counters_first else (0, 0)
    return {
        **verdict.to_json(),
        "kernel": result.kernel,
        "swap_out_mib": round(out / MIB, 1),
        "swap_in_mib": round(into / MIB, 1),
        "swap_file_nonzero_pages": result.swap_file_nonzero_pages,
        "phases_s": result.phases,
        "clock_offset_ms": None if result.clock_offset_ns is None else result.clock_offset_ns / 1e6,
        "clock_uncertainty_ms": None if result.clock_uncertainty_ns is None else result.clock_uncertainty_ns / 1e6,
        "workload": result.workload.model_dump(mode="json"),
        "failure": None if result.failure is None else result.failure.model_dump(mode="json"),
        "console_events": result.console_events,
        "files": result.files,
    }


def write_result(path: Path, result: dict[str, Any]) -> None:
    """Write result.json atomically (a reader never sees half a file)."""
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(result, indent=2) + "\n")
    tmp.replace(path)


def print_summary(result: dict[str, Any], stream: TextIO) -> None:
    """The table at the end of a campaign: one line per node of every run."""
    header = f"{'run':<5} {'kernel':<24} {'node':<7} {'verdict':<12} {'out MiB':>8} {'in MiB':>8} {'boot s':>7} {'mount s':>7} {'work s':>7}"
    print(header, file=stream)
    print("-" * len(header), file=stream)
    for run in result["runs"]:
        for node in run["nodes"]:
            phases = node["phases_s"]
            kver = node["kernel"].get("kver", run["kernel"])
            print(
                f"{run['run_id']:<5} {kver[:24]:<24} {node['node']:<7} {node['verdict']:<12} "
                f"{node['swap_out_mib']:>8.1f} {node['swap_in_mib']:>8.1f} "
                f"{phases.get('boot', 0):>7.1f} {phases.get('mount', 0):>7.1f} {phases.get('workload', 0):>7.1f}",
                file=stream,
            )
            for reason in node["reasons"]:
                print(f"      - {reason}", file=stream)
    print(
        f"\ncampaign {result['campaign_id']}: {result['verdict'].upper()} (exit {result['exit_code']}) in {result['wall_s']:.0f} s",
        file=stream,
    )
    print(f"results: {result['result_dir']}", file=stream)
