"""A comparison campaign's sides and their comparisons, from campaign records.

A record's runs are grouped into **sides**: by kernel (``baseline: {kernel: ...}``) or by
variant (``baseline: {variant: ...}``), within each remaining cell (the other axis and the
workload), so a side is only ever compared with the baseline run under the same other
settings. ``last-pass`` compares the whole campaign, per workload, with the last passing
instance of the same campaign (same workload, node size and NFS settings) from the
results database; ``swaplab compare A B`` does the same with any two stored instances.

Only passing runs contribute values (one per node): a failed run's figures say nothing
about the kernel's speed. The statistics are orchestrator.stats's.

Records and their runs are read through result.json's schema (``model.result``): a
function given a record as a mapping validates it first, and one that does not match is
refused with a ``model.result.RecordError`` (a ValueError) naming every wrong field, never
compared from what could be read of it. The comparison entries these functions make are plain dicts (they
are written into the record) of the shape of ``model.result.Comparison``.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Mapping
from typing import Any, cast

from pydantic import ValidationError

from model.campaign import LAST_PASS, BaselineSide, CompareSpec
from model.display import printable
from model.result import Campaign, ComparedFigure, Comparison, RecordError, Run, campaign_of, described
from orchestrator.stats import compare
from orchestrator.stats import side_values as comparison_values

Values = dict[str, list[float]]  # figure -> one value per passing node run
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
    """Every figure's values over the passing runs' nodes (stats.side_values per node)."""
    per_node = [
        {name: figure.value for name, figure in node.figures.items() if figure.value is not None}
        for run in runs
        if run.verdict == "pass"
        for node in run.nodes
    ]
    return cast(Values, comparison_values(per_node))


def _policies(spec: CompareSpec) -> dict[str, dict[str, Any]]:
    return {name: policy.model_dump(exclude_none=True) for name, policy in spec.figures.items()}


def _compare(baseline: Values, candidate: Values, spec: CompareSpec) -> dict[str, Any]:
    return compare(baseline, candidate, primary=spec.primary, policies=_policies(spec)).to_json()


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


def against_instance(record: Record, baseline: Record | None, spec: CompareSpec) -> list[dict[str, Any]]:
    """This campaign's runs against another stored instance's, workload by workload."""
    mine_all = campaign_of(record)
    other = campaign_of(baseline) if baseline is not None else None
    theirs_all = other.runs if other is not None else []
    out = []
    for workload in sorted({run.workload or "" for run in mine_all.runs}):
        mine = [run for run in mine_all.runs if (run.workload or "") == workload]
        theirs = [run for run in theirs_all if (run.workload or "") == workload]
        entry = {
            "baseline": other.campaign_id if other is not None else None,
            "candidate": mine_all.campaign_id,
            "axis": "instance",
            "workload": workload,
            # Which kernels each side ran: a nightly regression names the kernel that changed.
            "baseline_kernels": releases(theirs),
            "candidate_kernels": releases(mine),
            **_compare(side_values(theirs), side_values(mine), spec),
        }
        out.append(entry)
    return out


def comparable(record: Record, other: Record) -> bool:
    """Whether ``other`` ran the same workloads on the same node size and NFS settings."""

    def settings(rec: Campaign) -> set[str]:
        return {
            repr(run.settings.model_dump(include={"nfs", "node_ram_mib", "workload"}, exclude_unset=True))
            for run in rec.runs
        }

    mine = settings(campaign_of(record))
    return bool(mine) and mine == settings(campaign_of(other))


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
