"""A comparison campaign's sides and their comparisons, from campaign records.

A record's runs are grouped into **sides**: by kernel (``baseline: {kernel: ...}``) or by
variant (``baseline: {variant: ...}``), within each remaining cell (the other axis and the
workload), so a side is only ever compared with the baseline run under the same other
settings. ``last-pass`` compares the whole campaign, per workload, with the last passing
instance of the same campaign (same workload, node size and NFS settings) from the
results database; ``swaplab compare A B`` does the same with any two stored instances.

Only passing runs contribute values (one per node): a failed run's figures say nothing
about the kernel's speed. The statistics are orchestrator.stats's.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Mapping
from typing import Any, cast

from model.campaign import LAST_PASS, BaselineSide, CompareSpec
from orchestrator.stats import compare
from orchestrator.stats import side_values as comparison_values

Values = dict[str, list[float]]  # figure -> one value per passing node run


def side_values(runs: Iterable[Mapping[str, Any]]) -> Values:
    """Every figure's values over the passing runs' nodes (comparison.side_values per node)."""
    per_node = [
        {name: float(figure["value"]) for name, figure in (node.get("figures") or {}).items() if _numeric(figure)}
        for run in runs
        if run.get("verdict") == "pass"
        for node in run.get("nodes") or []
    ]
    return cast(Values, comparison_values(per_node))


def _numeric(figure: Any) -> bool:
    return isinstance(figure, Mapping) and isinstance(figure.get("value"), int | float)


def _policies(spec: CompareSpec) -> dict[str, dict[str, Any]]:
    return {name: policy.model_dump(exclude_none=True) for name, policy in spec.figures.items()}


def _compare(baseline: Values, candidate: Values, spec: CompareSpec) -> dict[str, Any]:
    return compare(baseline, candidate, primary=spec.primary, policies=_policies(spec)).to_json()


def in_campaign(record: Mapping[str, Any], baseline: BaselineSide, spec: CompareSpec) -> list[dict[str, Any]]:
    """Every side against the baseline side, cell by cell (the other axis and the workload)."""
    axis = "kernel_label" if baseline.kernel is not None else "variant"
    other = "variant" if axis == "kernel_label" else "kernel_label"
    base_name = baseline.kernel if baseline.kernel is not None else baseline.variant
    cells: dict[tuple[str, str], dict[str, list[Mapping[str, Any]]]] = defaultdict(lambda: defaultdict(list))
    for run in record.get("runs") or []:
        cells[(str(run.get(other) or ""), str(run.get("workload") or ""))][str(run.get(axis) or "")].append(run)
    out = []
    for (other_value, workload), sides in cells.items():
        base = side_values(sides.get(str(base_name), []))
        for name, runs in sides.items():
            if name == base_name:
                continue
            out.append(
                {
                    "baseline": base_name,
                    "candidate": name,
                    "axis": "kernel" if axis == "kernel_label" else "variant",
                    "workload": workload,
                    **({other.replace("_label", ""): other_value} if other_value else {}),
                    **_compare(base, side_values(runs), spec),
                }
            )
    return out


def against_instance(
    record: Mapping[str, Any], baseline: Mapping[str, Any] | None, spec: CompareSpec
) -> list[dict[str, Any]]:
    """This campaign's runs against another stored instance's, workload by workload."""
    out = []
    for workload in sorted({str(run.get("workload") or "") for run in record.get("runs") or []}):
        mine = [run for run in record.get("runs") or [] if run.get("workload") == workload]
        theirs = [run for run in (baseline or {}).get("runs") or [] if run.get("workload") == workload]
        entry = {
            "baseline": (baseline or {}).get("campaign_id"),
            "candidate": record.get("campaign_id"),
            "axis": "instance",
            "workload": workload,
            # Which kernels each side ran: a nightly regression names the kernel that changed.
            "baseline_kernels": releases(theirs),
            "candidate_kernels": releases(mine),
            **_compare(side_values(theirs), side_values(mine), spec),
        }
        out.append(entry)
    return out


def comparable(record: Mapping[str, Any], other: Mapping[str, Any]) -> bool:
    """Whether ``other`` ran the same workloads on the same node size and NFS settings."""

    def settings(rec: Mapping[str, Any]) -> set[str]:
        return {
            repr(
                sorted(
                    (k, repr(v))
                    for k, v in (run.get("settings") or {}).items()
                    if k in ("nfs", "node_ram_mib", "workload")
                )
            )
            for run in rec.get("runs") or []
        }

    return bool(settings(record)) and settings(record) == settings(other)


def is_last_pass(baseline: object) -> bool:
    """Whether a campaign's baseline is the last passing instance of itself."""
    return baseline == LAST_PASS


def regressions(comparisons: Iterable[Mapping[str, Any]]) -> list[str]:
    """One line per comparison whose verdict is a regression (the primary figure's summary)."""
    lines = []
    for entry in comparisons:
        if entry.get("verdict") == "regression":
            where = f"{entry['candidate']} vs {entry['baseline']} ({entry['workload']})"
            lines.append(f"regression: {where}: {primary_figure(entry).get('summary', '')}{kernel_change(entry)}")
    return lines


def releases(runs: Iterable[Mapping[str, Any]]) -> list[str]:
    """The kernel releases the passing runs booted, sorted."""
    found = {str((run.get("kernel_info") or {}).get("release") or "") for run in runs if run.get("verdict") == "pass"}
    return sorted(found - {""})


def kernel_change(entry: Mapping[str, Any]) -> str:
    """ ", kernel 6.1.0-57-amd64 -> 6.1.0-58-amd64" for an instance comparison (or "same kernel")."""
    if entry.get("axis") != "instance":
        return ""
    before, after = entry.get("baseline_kernels") or [], entry.get("candidate_kernels") or []
    if before == after:
        return f", same kernel {', '.join(after)}" if after else ""
    return f", kernel {', '.join(before) or '?'} -> {', '.join(after) or '?'}"


def primary_figure(entry: Mapping[str, Any]) -> Mapping[str, Any]:
    """The comparison of the figure that decided ``entry``'s verdict."""
    return next((f for f in entry.get("figures") or [] if f.get("figure") == entry.get("primary")), {})
