"""Campaign results: result.json (the machine form) and the summary table (the human one)."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, TextIO

from model.display import printable
from model.exitcode import ExitCode
from model.faults import faults_of
from model.paths import UnsafePath, own_subdir, replace_file
from model.result import Run
from model.runspec import NodeResult, is_campaign_id
from orchestrator.evaluation import RunEvaluation
from orchestrator.reports.view import redone_lines
from orchestrator.verdict import MIB, NodeVerdict, combine, exit_code, judge_node
from workers.samples import swap_moved_bytes


def node_entry(result: NodeResult, verdict: NodeVerdict, figures: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """One node's part of result.json: verdict, checks, the figures a reader wants first."""
    out, into = swap_moved_bytes(result.counters_first, result.counters_last) if result.counters_first else (0, 0)
    return {
        **verdict.to_json(),
        "kernel": result.kernel,
        "swap_out_mib": round(out / MIB, 1),
        "swap_in_mib": round(into / MIB, 1),
        "swap_file_nonzero_pages": result.swap_file_nonzero_pages,
        "data_path": result.data_path,
        "nfs_server": result.nfs_server.model_dump(mode="json"),
        "boot": result.boot.model_dump(mode="json"),
        "phases_s": result.phases,
        "started_at": result.started_at,
        "finished_at": result.finished_at,
        "clock_offset_ms": None if result.clock_offset_ns is None else result.clock_offset_ns / 1e6,
        "clock_uncertainty_ms": None if result.clock_uncertainty_ns is None else result.clock_uncertainty_ns / 1e6,
        "workload": result.workload.model_dump(mode="json"),
        "failure": None if result.failure is None else result.failure.model_dump(mode="json"),
        "console_events": result.console_events,
        "console_event_counts": result.console_event_counts,
        "console_events_dropped": result.console_events_dropped,
        "console_source": result.console_source,
        "ram_mib": result.ram_mib,
        "planned_overcommit_mib": result.planned_overcommit_mib,
        "left_clean": result.left_clean,
        "cleanup_problems": result.cleanup_problems,
        "files": result.files,
        "figures": figures,
        "series": result.series,
        "faults": [fault.model_dump(mode="json") for fault in result.faults],
    }


def run_entry(meta: dict[str, Any], results: list[NodeResult], evaluation: RunEvaluation) -> dict[str, Any]:
    """Judge a run's nodes and build its part of result.json (``meta``: run_id, kernel ...)."""
    faults = [fault for result in results for fault in result.faults]
    verdicts = [
        judge_node(
            result,
            evaluation.criteria.get(result.node, []),
            faults_of(result.node, faults),
        )
        for result in results
    ]
    window = evaluation.window
    return {
        **meta,
        "verdict": combine(v.verdict for v in verdicts).value,
        "exit_code": int(exit_code(verdicts)),
        "stops_campaign": any(v.stops_campaign for v in verdicts),
        "window": None if window is None else window.to_json(),
        "start_skew_ms": start_skew_ms(results),
        "start_skew_uncertainty_ms": start_skew_uncertainty_ms(results, _on_guest_clock(meta)),
        "nodes": [node_entry(r, v, evaluation.figures.get(r.node, {})) for r, v in zip(results, verdicts, strict=True)],
    }


def campaign_exit_code(run_codes: list[int]) -> int:
    """Combine run exit codes: the first that applies of 1, 3, 4, 2, 0."""
    order = [ExitCode.KERNEL_FAIL, ExitCode.CRITERIA_FAIL, ExitCode.INVALID, ExitCode.BAD_INPUT_OR_INFRA]
    if not run_codes:
        return int(ExitCode.INVALID)
    return int(next((code for code in order if code in run_codes), ExitCode.PASS))


def start_skew_ms(results: list[NodeResult]) -> float | None:
    """Spread of the nodes' workload start instants, in host time (clock offsets applied)."""
    starts = [r.workload.started_host_ns for r in results if r.workload.started_host_ns is not None]
    if len(starts) < 2:
        return None
    return (max(starts) - min(starts)) / 1e6


def _on_guest_clock(meta: dict[str, Any]) -> bool:
    return str((meta.get("settings") or {}).get("timing") or "host") != "host"


def start_skew_uncertainty_ms(results: list[NodeResult], guest_clock: bool = False) -> float | None:
    """How far the corrected skew may be off: the two largest clock-offset uncertainties.

    None on guest time: its starts are the worker's receive times, which no clock offset
    corrects, so the offsets' uncertainty says nothing about them.
    """
    if guest_clock:
        return None
    errors = sorted((r.clock_uncertainty_ns for r in results if r.clock_uncertainty_ns is not None), reverse=True)
    return sum(errors[:2]) / 1e6 if len(errors) >= 2 else None


def write_result(results_root: Path, cid: str, result: dict[str, Any]) -> None:
    """Write ``results_root/cid/result.json`` atomically (a reader never sees half a file),
    never through a link (``model.paths.replace_file``)."""
    if not is_campaign_id(cid):
        raise UnsafePath(f"not a campaign id: {cid!r}")
    fd = own_subdir(results_root, cid)
    try:
        replace_file(fd, "result.json", (json.dumps(result, indent=2) + "\n").encode())
    finally:
        os.close(fd)


def print_summary(result: dict[str, Any], stream: TextIO) -> None:
    """The table at the end of a campaign: one line per node of every run.

    Kernel releases, node names and reasons come from the nodes (``uname -r``, console
    lines): every line is shown through ``model.display.printable``, and the padded cells
    are made printable before they are padded, so the columns stay aligned.
    """

    def say(line: str) -> None:
        print(printable(line, lines=True), file=stream)

    header = f"{'run':<5} {'kernel':<24} {'node':<7} {'verdict':<12} {'out MiB':>8} {'in MiB':>8} {'boot s':>7} {'mount s':>7} {'work s':>7}"
    say(header)
    say("-" * len(header))
    for run in result["runs"]:
        rid, verdict = printable(run["run_id"]), printable(run["verdict"])
        if not run["nodes"]:  # refused before any node ran
            say(f"{rid:<5} {printable(run['kernel'])[:24]:<24} {'-':<7} {verdict:<12}")
        for reason in run.get("reasons", []):
            say(f"      - {printable(reason)}")
        for line in redone_lines(Run.model_validate(run)):
            say(f"      {line}")
        for node in run["nodes"]:
            phases = node["phases_s"]
            kver = printable(node["kernel"].get("kver", run["kernel"]))
            say(
                f"{rid:<5} {kver[:24]:<24} {printable(node['node']):<7} {printable(node['verdict']):<12} "
                f"{node['swap_out_mib']:>8.1f} {node['swap_in_mib']:>8.1f} "
                f"{phases.get('boot', 0):>7.1f} {phases.get('mount', 0):>7.1f} {phases.get('workload', 0):>7.1f}"
            )
            if node.get("figures"):
                say(f"      figures: {printable(figure_line(node['figures']))}")
            criteria = node.get("criteria", [])
            if criteria:
                passed = sum(1 for c in criteria if c["outcome"] == "pass")
                say(f"      criteria: {passed} of {len(criteria)} passed in Prometheus")
            for reason in node["reasons"]:
                say(f"      - {printable(reason)}")
    say(
        f"\ncampaign {printable(result['campaign_id'])}: {printable(result['verdict']).upper()} "
        f"(exit {result['exit_code']}) in {result['wall_s']:.0f} s"
    )
    say(f"results: {printable(result['result_dir'])}")


_SHORT = {
    "swap_out_mibps": "out",
    "swap_in_mibps": "in",
    "psi_full_share": "psi full",
    "allocstall_per_s": "stalls",
    "majfault_per_s": "majflt",
    "nfs_retrans_per_call": "rpc retrans",
    "tcp_retrans_per_s": "tcp retrans",
}


def figure_line(figures: dict[str, dict[str, Any]]) -> str:
    """The main figures of a node on one line (None shown as "-")."""
    parts = []
    for name, short in _SHORT.items():
        entry = figures.get(name) or {}
        value = entry.get("value")
        shown = "-" if value is None else f"{value:.3g}"
        parts.append(f"{short} {shown} {entry.get('unit', '')}".rstrip())
    return ", ".join(parts)


def print_criteria(result: dict[str, Any], stream: TextIO) -> None:
    """Every criterion of every node: value, threshold, outcome (``swaplab check``)."""
    for run in result["runs"]:
        window = run.get("window") or {}
        print(
            printable(
                f"run {run['run_id']} ({run['kernel']}): {run['verdict'].upper()}, window {window.get('seconds', '-')} s"
            ),
            file=stream,
        )
        for node in run["nodes"]:
            print(printable(f"  {node['node']}: {node['verdict']}"), file=stream)
            for c in node.get("criteria", []):
                value = "no data" if c["value"] is None else f"{c['value']:.6g}"
                kind = "built-in" if c["builtin"] else c["severity"]
                outcome, name = printable(c["outcome"]), printable(c["name"])
                print(
                    f"    {outcome:<7} {name:<28} {printable(kind):<9} {value:>14} {printable(c['op']):>2} {c['threshold']:.6g}",
                    file=stream,
                )
                if c["outcome"] != "pass":
                    print(f"            {printable(c['detail'])}", file=stream)  # it may quote a node's labels
    print(
        printable(f"campaign {result['campaign_id']}: {result['verdict'].upper()} (exit {result['exit_code']})"),
        file=stream,
    )
