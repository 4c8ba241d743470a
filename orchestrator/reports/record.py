"""Reading a campaign record (result.json) for the reports, tolerant of every older shape.

A record is input: it may come from an older swaplab (no figures, series, kernel_info,
redone or reproduce), from a run refused before any node ran (``nodes: []``, no window),
or from a hand-edited file. Every accessor here returns a usable default instead of
raising, and :func:`clean` turns every string taken from the record into one line without
control characters, so no report can be broken (or a terminal driven) by what it quotes.
"""

from __future__ import annotations

import math
import re
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

from model.display import printable
from model.exitcode import ExitCode

Record = Mapping[str, Any]

_LABEL_RUN_PREFIX = re.compile(r"^r\d+ ")
_LABEL_WORKLOAD_SUFFIX = re.compile(r" / [^/]* #\d+$")
# A variant's run is labelled ``r001 linux-image-amd64 [base] / small #1`` (a variant name's pattern).
_LABEL_VARIANT_SUFFIX = re.compile(r" \[([a-z][a-z0-9_-]{0,30})\]$")


def clean(value: object) -> str:
    """A value of the record as one line of plain text (``model.display.printable``): no
    escape sequence, control or bidi character, nor a code point XML 1.0 cannot carry."""
    return printable(value).strip()


def mapping(value: object) -> Mapping[str, Any]:
    """``value`` if it is a JSON object, else an empty one (a missing or null field)."""
    return value if isinstance(value, Mapping) else {}


def mappings(value: object) -> list[Mapping[str, Any]]:
    """The JSON objects of a list field (a missing, null or malformed field is empty)."""
    if not isinstance(value, Sequence) or isinstance(value, str):
        return []
    return [item for item in value if isinstance(item, Mapping)]


def texts(value: object) -> list[str]:
    """The non-empty strings of a list field, cleaned (a missing or malformed field is empty)."""
    if not isinstance(value, list):
        return []
    return [text for text in (clean(item) for item in value) if text]


def number(value: object) -> float | None:
    """A finite number, or None (null, text, NaN and booleans are not figures)."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    try:
        x = float(value)
    except OverflowError:  # an integer beyond any float
        return None
    return x if math.isfinite(x) else None


def runs(record: Record) -> list[Mapping[str, Any]]:
    """The record's judged (or refused) runs, in order."""
    return mappings(record.get("runs"))


def nodes(run: Mapping[str, Any]) -> list[Mapping[str, Any]]:
    """A run's nodes; empty for a run refused before any node ran."""
    return mappings(run.get("nodes"))


def skipped_runs(record: Record) -> list[Mapping[str, Any]]:
    """Runs never started (a critical criterion failed earlier, or the campaign stopped)."""
    return mappings(record.get("skipped_runs"))


def run_id(run: Mapping[str, Any]) -> str:
    """The run's id (``r001``), or ``?`` when the record lacks it."""
    return clean(run.get("run_id")) or "?"


def workload_label(run: Mapping[str, Any]) -> str:
    """``overcommit #2``: the workload and the repeat, as far as the record knows them."""
    name = clean(run.get("workload"))
    repeat = run.get("repeat")
    if not name:  # a refused run: its label still names workload and repeat
        found = _LABEL_WORKLOAD_SUFFIX.search(run_label(run))
        return found.group(0).removeprefix(" / ") if found else "-"
    return f"{name} #{repeat}" if isinstance(repeat, int) else name


def fmt_time(epoch: object) -> str:
    """An epoch second as UTC wall-clock time, or ``-``."""
    value = number(epoch)
    if value is None:
        return "-"
    return time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(value))


def fmt_number(value: object) -> str:
    """A criterion's value or threshold: integers whole, others to 4 significant digits."""
    x = number(value)
    if x is None:
        return "no data"
    if x.is_integer() and abs(x) < 1e12:
        return str(int(x))
    return f"{x:.4g}"


def fmt_figure(value: object) -> str:
    """A figure's value, with as many digits as a reader compares (3 significant ones)."""
    x = number(value)
    if x is None:
        return "-"
    if x == 0:
        return "0"
    if abs(x) >= 100:
        return f"{x:.0f}"
    return f"{x:.1f}" if abs(x) >= 10 else f"{x:.3g}"


def exit_text(code: object) -> str:
    """``exit 3 (criteria fail)``: the exit code and what it means."""
    if not isinstance(code, int) or isinstance(code, bool):
        return "exit ?"
    if code == 0:
        return "exit 0"
    try:
        meaning = ExitCode(code).name.lower().replace("_", " ")
    except ValueError:
        return f"exit {code}"
    return f"exit {code} ({meaning})"


# -- redone runs ------------------------------------------------------------------------


def redone_lines(run: Mapping[str, Any]) -> list[str]:
    """Why a run was redone, one line per earlier attempt ("attempt 2: worker lost during
    attempt 1: ..."); empty for a run that ran once. A redone run must never read as a
    plain pass, so an attempt above 1 without recorded reasons still gets a line."""
    lines = []
    for entry in sorted(mappings(run.get("redone")), key=lambda e: number(e.get("attempt")) or 0):
        earlier = int(number(entry.get("attempt")) or 0)
        head, sep, rest = clean(entry.get("reason")).partition(": ")
        # "worker lost: node task(s) ..." reads best as "worker lost during attempt 1: ...".
        what = (
            f"{head} during attempt {earlier}: {rest}"
            if sep
            else f"redone after attempt {earlier}: {head or 'why was not recorded'}"
        )
        lines.append(f"attempt {earlier + 1}: {what}")
    attempt = number(run.get("attempt"))
    if not lines and attempt is not None and attempt > 1:
        lines.append(f"attempt {int(attempt)}: redone; why the earlier attempt(s) ended was not recorded")
    return lines


def verdict_label(run: Mapping[str, Any]) -> str:
    """``pass`` or ``pass (attempt 2)``: the verdict, marked when the run was redone."""
    verdict = clean(run.get("verdict")) or "?"
    if not redone_lines(run):
        return verdict
    attempt = number(run.get("attempt"))
    return f"{verdict} (attempt {int(attempt)})" if attempt is not None else f"{verdict} (redone)"


# -- kernels ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Kernel:
    """One kernel of the campaign and the runs that ran it."""

    name: str
    release: str
    version: str
    source: str
    artifact: str | None
    patches: tuple[str, ...]
    run_ids: tuple[str, ...]

    @property
    def short_artifact(self) -> str:
        """The artifact hash as people quote it (12 hex digits), or ``-``."""
        return self.artifact[:12] if self.artifact else "-"


def run_label(run: Mapping[str, Any]) -> str:
    """The run's label without its run id: ``linux-image-amd64 / overcommit #3``."""
    return _LABEL_RUN_PREFIX.sub("", clean(run.get("kernel"))) or "?"


def spec_label(run: Mapping[str, Any]) -> str:
    """The campaign's name for the run's kernel: its label without run id, variant and workload."""
    return _LABEL_VARIANT_SUFFIX.sub("", _LABEL_WORKLOAD_SUFFIX.sub("", run_label(run))) or "?"


def variant(run: Mapping[str, Any]) -> str:
    """The variant of the campaign's settings the run ran (from its label when a refused
    run's record lacks the field); empty for a campaign without variants."""
    found = _LABEL_VARIANT_SUFFIX.search(_LABEL_WORKLOAD_SUFFIX.sub("", run_label(run)))
    return clean(run.get("variant")) or (found.group(1) if found else "")


def has_variants(record: Record) -> bool:
    """Whether the campaign ran variants of its settings (a comparison campaign may)."""
    return any(variant(run) for run in runs(record))


def kernel_cell(kernel: str, run: Mapping[str, Any]) -> str:
    """A run's kernel as the tables show it, with its variant: ``6.1.0-57-amd64 [base]``."""
    name = variant(run)
    return f"{kernel} [{name}]" if name else kernel


def kernel_identity(run: Mapping[str, Any]) -> dict[str, Any]:
    """The run's kernel_info, or what an older record's first node says about its kernel."""
    info = mapping(run.get("kernel_info"))
    if info:
        return {
            "release": clean(info.get("release")),
            "version": clean(info.get("version")),
            "source": clean(info.get("source")),
            "artifact": clean(info.get("artifact")) or None,
            "patches": tuple(texts(info.get("patches"))),
        }
    kernel = next((mapping(n.get("kernel")) for n in nodes(run) if mapping(n.get("kernel"))), {})
    package = clean(kernel.get("package"))
    source = clean(kernel.get("source"))
    return {
        "release": clean(kernel.get("uname_r") or kernel.get("kver")),
        "version": clean(kernel.get("uname_v")),
        "source": f"package {source or package}" if package else source,
        "artifact": None,
        "patches": (),
    }


def kernels(record: Record) -> list[Kernel]:
    """The campaign's kernels in order of first use. Runs share a kernel when the campaign
    names it alike and it booted the same release; a run refused before its kernel was
    resolved joins the first kernel of its name."""
    groups: dict[tuple[str, str], list[Mapping[str, Any]]] = {}
    for run in runs(record):
        spec, release = spec_label(run), kernel_identity(run)["release"]
        if not release:
            release = next((r for s, r in groups if s == spec), "")
        groups.setdefault((spec, release), []).append(run)
    found = [_kernel(spec, members) for (spec, _), members in groups.items()]
    return _disambiguate(found)


def _kernel(spec: str, members: list[Mapping[str, Any]]) -> Kernel:
    known = next((kernel_identity(r) for r in members if kernel_identity(r)["release"]), kernel_identity(members[0]))
    return Kernel(
        name=known["release"] or spec,
        release=known["release"] or "-",
        version=known["version"] or "-",
        source=known["source"] or f"{spec} (not resolved: no node ran)",
        artifact=known["artifact"],
        patches=known["patches"],
        run_ids=tuple(run_id(r) for r in members),
    )


def _disambiguate(found: list[Kernel]) -> list[Kernel]:
    """Two kernels of one release (a base build and a patched one) get their hash added."""
    names = [k.name for k in found]
    return [replace(k, name=f"{k.name} @{k.short_artifact}") if names.count(k.name) > 1 else k for k in found]


def kernel_by_run(record: Record) -> dict[str, Kernel]:
    """Each run id's kernel (as listed by :func:`kernels`)."""
    return {rid: k for k in kernels(record) for rid in k.run_ids}


def kernel_names(record: Record) -> dict[str, str]:
    """Each run id's kernel name (as listed by :func:`kernels`)."""
    return {rid: k.name for rid, k in kernel_by_run(record).items()}


# -- figures ----------------------------------------------------------------------------


@dataclass(frozen=True)
class FigureSpec:
    """How the reports show one performance figure."""

    name: str
    short: str  # column header in the tables
    title: str  # what it measures, for the legend and plot titles
    unit: str
    better: str  # "higher" or "lower"


CATALOG = (
    FigureSpec("swap_out_mibps", "out MiB/s", "swap-out throughput", "MiB/s", "higher"),
    FigureSpec("swap_in_mibps", "in MiB/s", "swap-in throughput", "MiB/s", "higher"),
    FigureSpec("workload_wall_s", "wall s", "workload wall time", "s", "lower"),
    FigureSpec("psi_full_share", "PSI full", "share of time memory-stalled (PSI full)", "ratio", "lower"),
    FigureSpec("allocstall_per_s", "stall/s", "allocation stalls per second", "1/s", "lower"),
    FigureSpec("direct_throttle_per_s", "thrtl/s", "direct-reclaim throttling per second", "1/s", "lower"),
    FigureSpec("majfault_per_s", "majflt/s", "major faults per second", "1/s", "lower"),
    FigureSpec("nfs_retrans_per_call", "rtx/call", "NFS RPC retransmissions per call", "ratio", "lower"),
    FigureSpec("tcp_retrans_per_s", "tcp rtx/s", "TCP segments retransmitted per second", "segments/s", "lower"),
)


def figures(node: Mapping[str, Any]) -> Mapping[str, Mapping[str, Any]]:
    """A node's figures by name (empty in records older than figures)."""
    return {clean(k): mapping(v) for k, v in mapping(node.get("figures")).items()}


def figure_specs(record: Record) -> list[FigureSpec]:
    """The figures the record holds: the known ones in their order, then any new ones."""
    present: dict[str, Mapping[str, Any]] = {}
    for run in runs(record):
        for node in nodes(run):
            for name, figure in figures(node).items():
                present.setdefault(name, figure)
    known = [spec for spec in CATALOG if spec.name in present]
    catalog = {spec.name for spec in CATALOG}
    extra = [
        FigureSpec(name, name, name, clean(fig.get("unit")) or "-", clean(fig.get("better")) or "lower")
        for name, fig in present.items()
        if name not in catalog
    ]
    return known + extra


def series(node: Mapping[str, Any]) -> dict[str, list[float]]:
    """A node's sampled series, nulls as NaN (gaps in a plot), none longer than the time
    axis; empty when the node never sampled (or the record predates series)."""
    columns = {
        clean(name): [math.nan if (x := number(v)) is None else x for v in values]
        for name, values in mapping(node.get("series")).items()
        if isinstance(values, list)
    }
    t = columns.get("t", [])
    if all(math.isnan(x) for x in t):
        return {}
    return {name: values[: len(t)] for name, values in columns.items()}


Side = tuple[str, ...]  # a distribution's group: kernel, then variant and workload when they vary


def sides(record: Record) -> dict[str, Side]:
    """Each run id's side in the per-figure plots: its kernel, with its variant when the
    campaign has variants. A comparison campaign names the kernel as the campaign does
    (its ``kernel_label``, as its comparisons do) and adds the workload when it has several
    (a comparison is always within one workload); any other record names it as the
    Kernels table does."""
    names = kernel_names(record)
    compared = bool(comparisons(record))
    with_variant = has_variants(record)
    # A run refused before it started may lack its workload: it has no values to plot.
    with_workload = compared and len({clean(run.get("workload")) for run in runs(record)} - {""}) > 1
    found = {}
    for run in runs(record):
        kernel = (clean(run.get("kernel_label")) or spec_label(run)) if compared else names.get(run_id(run), "?")
        side = [kernel]
        if with_variant:
            side.append(variant(run) or "-")
        if with_workload:
            side.append(clean(run.get("workload")) or "-")
        found[run_id(run)] = tuple(side)
    return found


def distribution(record: Record, name: str) -> list[tuple[Side, list[float], list[float]]]:
    """A figure's values per side (:func:`sides`): (side, values of passing nodes, values
    of the others). Only passing runs are compared; the others are kept apart, for inspection."""
    by_run = sides(record)
    groups: dict[Side, tuple[list[float], list[float]]] = {side: ([], []) for side in by_run.values()}
    for run in runs(record):
        passed = clean(run.get("verdict")) == "pass"
        for node in nodes(run):
            value = number(figures(node).get(name, {}).get("value"))
            if value is not None:
                side = groups.setdefault(by_run.get(run_id(run), ("?",)), ([], []))
                side[0 if passed and clean(node.get("verdict")) == "pass" else 1].append(value)
    return [(side, good, other) for side, (good, other) in groups.items() if good or other]


# -- comparisons ------------------------------------------------------------------------


def comparisons(record: Record) -> list[Mapping[str, Any]]:
    """A comparison campaign's comparisons (empty for any other record)."""
    return mappings(record.get("comparisons"))


def campaign_reasons(record: Record) -> list[str]:
    """Why the campaign has its verdict beyond its runs' (a regression, no baseline)."""
    return texts(record.get("reasons"))


def compared_figures(entry: Mapping[str, Any]) -> list[Mapping[str, Any]]:
    """A comparison's figures, the one that decides its verdict (``primary``) first."""
    found = mappings(entry.get("figures"))
    primary = clean(entry.get("primary"))
    return sorted(found, key=lambda figure: clean(figure.get("figure")) != primary)


def comparison_cells(record: Record) -> list[str]:
    """Where each comparison was made: its workload, and the other axis's value (the kernel
    of a variant comparison, the variant of a kernel comparison) when the comparisons
    differ in it: ``small`` or ``small, kernel linux-image-amd64``."""
    entries = comparisons(record)
    varying = [axis for axis in ("kernel", "variant") if len({clean(entry.get(axis)) for entry in entries}) > 1]
    return [
        ", ".join(
            [clean(entry.get("workload")) or "-", *(f"{axis} {clean(entry.get(axis)) or '-'}" for axis in varying)]
        )
        for entry in entries
    ]


@dataclass(frozen=True)
class Reference:
    """A baseline's median drawn across a figure's plot."""

    label: str  # "baseline base", "baseline base (small)" when several cells are compared
    value: float


def baseline_references(record: Record, name: str) -> list[Reference]:
    """The baseline medians of figure ``name``, one per distinct baseline (the comparison
    entry's ``median_a``: the baseline side's passing runs, or another campaign's)."""
    cells = comparison_cells(record)
    several = len(set(cells)) > 1
    found: dict[str, float] = {}
    for entry, cell in zip(comparisons(record), cells, strict=True):
        figure = next((f for f in compared_figures(entry) if clean(f.get("figure")) == name), {})
        value = number(figure.get("median_a"))
        if value is None:
            continue
        label = f"baseline {clean(entry.get('baseline')) or '?'}"
        found.setdefault(f"{label} ({cell})" if several else label, value)
    return [Reference(label, value) for label, value in found.items()]
