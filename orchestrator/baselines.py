"""A comparison campaign's sides and their comparisons, from campaign records.

A record's runs are grouped into **sides**: by kernel (``baseline: {kernel: ...}``) or by
variant (``baseline: {variant: ...}``), within each remaining cell (the other axis and the
workload), so a side is only ever compared with the baseline run under the same other
settings. ``last-pass`` compares the whole campaign, per workload, with the last passing
instance of the same campaign (same workload, node size and NFS settings) from the
results database; ``swaplab compare A B`` does the same with any two stored instances.

Only passing runs contribute values (one per run, its nodes' median): a failed run's
figures say nothing about the kernel's speed. The statistics are orchestrator.stats's.

Records and their runs are read through result.json's schema (``model.result``): a
function given a record as a mapping validates it first, and one that does not match is
refused with a ``model.result.RecordError`` (a ValueError) naming every wrong field, never
compared from what could be read of it. The comparison entries these functions make are plain dicts (they
are written into the record) of the shape of ``model.result.Comparison``.
"""

from __future__ import annotations

import statistics
from collections import defaultdict
from collections.abc import Iterable, Mapping
from typing import Any, cast

from pydantic import ValidationError

from model.campaign import LAST_PASS, BaselineSide, CompareSpec
from model.display import printable
from model.result import Campaign, ComparedFigure, Comparison, RecordError, Run, campaign_of, described
from orchestrator.stats import across_time_drift, compare
from orchestrator.stats import side_values as comparison_values

Values = dict[str, list[float]]  # figure -> one value per passing run
Record = Campaign | Mapping[str, Any]  # a record as the scheduler or the database hands it over
Entry = Comparison | Mapping[str, Any]  # a comparison entry, as made here or read back


def comparison_of(entry: Entry) -> Comparison:
    """A comparison entry read through result.json's schema (a Comparison as it is)."""
    if isinstance(entry, Comparison):
        return entry
    try:
        return Comparison.model_validate(entry)
    except ValidationError as err:
        raise RecordError(
            printable(f"comparison entry does not match result.json's schema: {described(err)}")
        ) from None


def side_values(runs: Iterable[Run]) -> Values:
    """Every figure's values over the passing runs: one per run, the median of its nodes.

    The nodes of one run share its boot, its NFS server and its moment on the host: as
    separate values they would count one run's luck twice (12 % false alarms with two nodes
    a run, where 5 % is the promise).
    """
    per_run = [run_value(run) for run in runs if run.verdict == "pass"]
    return cast(Values, comparison_values(per_run))


def run_value(run: Run) -> dict[str, float]:
    """A run's figures: per figure, the median over its nodes that have it."""
    by_figure: dict[str, list[float]] = defaultdict(list)
    for node in run.nodes:
        for name, figure in node.figures.items():
            if figure.value is not None:
                by_figure[name].append(figure.value)
    return {name: statistics.median(values) for name, values in by_figure.items()}


def _policies(spec: CompareSpec) -> dict[str, dict[str, Any]]:
    return {name: policy.model_dump(exclude_none=True) for name, policy in spec.figures.items()}


def _compare(baseline: Values, candidate: Values, spec: CompareSpec, drift: float = 0.0) -> dict[str, Any]:
    return compare(baseline, candidate, primary=spec.primary, policies=_policies(spec), drift=drift).to_json()


def in_campaign(record: Record, baseline: BaselineSide, spec: CompareSpec) -> list[dict[str, Any]]:
    """Every side against the baseline side, cell by cell (the other axis and the workload)."""
    by_kernel = baseline.kernel is not None
    base_name = str(baseline.kernel if by_kernel else baseline.variant)
    cells: dict[tuple[str, str], dict[str, list[Run]]] = defaultdict(lambda: defaultdict(list))
    for run in campaign_of(record).runs:
        side, other = (run.kernel_label, run.variant) if by_kernel else (run.variant, run.kernel_label)
        cells[(other or "", run.workload or "")][side or ""].append(run)
    out = []
    for (other_value, workload), sides in cells.items():
        base = side_values(sides.get(base_name, []))
        for name, runs in sides.items():
            if name == base_name:
                continue
            out.append(
                {
                    "baseline": base_name,
                    "candidate": name,
                    "axis": "kernel" if by_kernel else "variant",
                    "workload": workload,
                    **({"variant" if by_kernel else "kernel": other_value} if other_value else {}),
                    **_compare(base, side_values(runs), spec),
                }
            )
    return out


Cell = tuple[str, str, str]  # variant, workload, the settings that change figures


def cell_of(run: Run) -> Cell:
    """What two runs must share for their figures to be compared: variant, workload, and the
    settings that change the figures (NFS, sysctls, node and swap size, the clock)."""
    settings = run.settings.model_dump(include={"nfs", "sysctl", "node_ram_mib", "swap_mib", "workload"})
    faults = f" faults={run.settings.faults}" if run.settings.faults else ""
    return (run.variant or "", run.workload or "", f"{settings!r} timing={run.settings.timing}{faults}")


def _cells(runs: Iterable[Run]) -> dict[Cell, dict[str, list[Run]]]:
    """Runs by cell, then by the kernel as the campaign named it."""
    cells: dict[Cell, dict[str, list[Run]]] = defaultdict(lambda: defaultdict(list))
    for run in runs:
        # Records from before kernel_label was kept: the release the run booted.
        cells[cell_of(run)][run.kernel_label or run.release()].append(run)
    return cells


def _partner(kernel: str, baseline_kernels: Mapping[str, list[Run]]) -> list[Run]:
    """The baseline's runs for ``kernel``: the same kernel, or the baseline's only one."""
    if kernel in baseline_kernels:
        return baseline_kernels[kernel]
    if len(baseline_kernels) == 1:
        return next(iter(baseline_kernels.values()))
    return []


def against_instance(record: Record, baseline: Record | None, spec: CompareSpec) -> list[dict[str, Any]]:
    """This campaign's runs against another stored instance's, cell by cell.

    Never pooled: runs are compared only with the baseline's runs of the same variant,
    workload and settings (``cell_of``), and kernel by kernel: the same kernel, or the
    baseline's only kernel of that cell. A cell with no partner is an entry with no
    values on the baseline side (insufficient data) and a note saying why. The two ran at
    different times, so every interval carries the clock's drift allowance
    (``orchestrator.stats.ACROSS_TIME_DRIFT``).
    """
    mine = campaign_of(record)
    other = campaign_of(baseline) if baseline is not None else None
    theirs = _cells(other.runs) if other is not None else {}
    out = []
    for cell, kernels in sorted(_cells(mine.runs).items()):
        variant, workload, _settings = cell
        for kernel, runs in sorted(kernels.items()):
            base_runs = _partner(kernel, theirs.get(cell, {}))
            entry = {
                "baseline": other.campaign_id if other is not None else None,
                "candidate": mine.campaign_id,
                "axis": "instance",
                "workload": workload,
                **({"kernel": kernel} if len(kernels) > 1 else {}),
                **({"variant": variant} if variant else {}),
                # Which kernels each side ran: a nightly regression names the kernel that changed.
                "baseline_kernels": releases(base_runs),
                "candidate_kernels": releases(runs),
                # Another instance ran at another time: its drift is not interleaved away.
                **_compare(side_values(base_runs), side_values(runs), spec, across_time_drift(runs[0].settings.timing)),
            }
            if other is not None and not base_runs:
                entry["note"] = _no_partner(other.campaign_id, kernel, variant, workload, theirs.get(cell, {}))
            out.append(entry)
    return out


def _no_partner(baseline_id: str, kernel: str, variant: str, workload: str, kernels: Mapping[str, Any]) -> str:
    what = f"kernel {kernel}" + (f", variant {variant}" if variant else "") + f", workload {workload}"
    if not kernels:
        return f"{baseline_id} has no runs of {what} with the same settings (NFS, sysctls, sizes, clock)"
    return f"{baseline_id} ran {', '.join(sorted(kernels))} there, not {kernel}: not compared"


def comparable(record: Record, other: Record) -> bool:
    """Whether ``other`` ran the same cells (``cell_of``: variants, workloads, settings, clock)."""
    mine = {cell_of(run) for run in campaign_of(record).runs}
    return bool(mine) and mine == {cell_of(run) for run in campaign_of(other).runs}


def is_last_pass(baseline: object) -> bool:
    """Whether a campaign's baseline is the last passing instance of itself."""
    return baseline == LAST_PASS


def regressions(comparisons: Iterable[Entry]) -> list[str]:
    """One line per comparison whose verdict is a regression (the primary figure's summary)."""
    lines = []
    for entry in map(comparison_of, comparisons):
        if entry.verdict == "regression":
            where = f"{entry.candidate} vs {entry.baseline} ({entry.workload})"
            figure = primary_figure(entry)
            summary = figure.summary if figure is not None and figure.summary is not None else ""
            lines.append(f"regression: {where}: {summary}{kernel_change(entry)}")
    return lines


def releases(runs: Iterable[Run]) -> list[str]:
    """The kernel releases the passing runs booted, sorted."""
    found = {run.kernel_info.release or "" for run in runs if run.verdict == "pass"}
    return sorted(found - {""})


def kernel_change(entry: Entry) -> str:
    """ ", kernel 6.1.0-57-amd64 -> 6.1.0-58-amd64" for an instance comparison (or "same kernel")."""
    compared = comparison_of(entry)
    if compared.axis != "instance":
        return ""
    before, after = compared.baseline_kernels, compared.candidate_kernels
    if before == after:
        return f", same kernel {', '.join(after)}" if after else ""
    return f", kernel {', '.join(before) or '?'} -> {', '.join(after) or '?'}"


def primary_figure(entry: Entry) -> ComparedFigure | None:
    """The comparison of the figure that decided ``entry``'s verdict (None when it has none)."""
    compared = comparison_of(entry)
    return next((f for f in compared.figures if f.figure == compared.primary), None)
