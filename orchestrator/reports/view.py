"""What the reports see of a campaign record (result.json): the record read through its
schema (``model.result``), and what the reports derive from it.

A record is input: it may come from an older swaplab (no figures, series, kernel_info,
redone or reproduce), from a run refused before any node ran (``nodes: []``, no window),
or from a hand-edited file. The entry points read it once, through the schema
(``model.result.campaign_of``): every missing or null part takes its default, and a
record that does not match is refused with a ``RecordError`` naming every wrong field
(never a report made up from it). A
schema-valid string can still hold escape sequences, and a schema-valid float can be NaN
or infinite, so :func:`clean` turns every string taken from the record into one line
without control characters and :func:`number` takes a non-finite number as missing: no
report can be broken (or a terminal driven) by what it quotes.
"""

from __future__ import annotations

import math
import re
import time
from collections.abc import Iterable
from dataclasses import dataclass, replace

from model.display import printable
from model.exitcode import ExitCode
from model.result import Campaign, ComparedFigure, Comparison, Figure, Node, RecordError, Run, SkippedRun, campaign_of

__all__ = ["RecordError", "campaign_of"]  # the reports' reading of a record, re-exported for their callers

_LABEL_RUN_PREFIX = re.compile(r"^r\d+ ")
_LABEL_WORKLOAD_SUFFIX = re.compile(r" / [^/]* #\d+$")
# A variant's run is labelled ``r001 linux-image-amd64 [base] / small #1`` (a variant name's pattern).
_LABEL_VARIANT_SUFFIX = re.compile(r" \[([a-z][a-z0-9_-]{0,30})\]$")


def clean(value: object) -> str:
    """A value of the record as one line of plain text (``model.display.printable``): no
    escape sequence, control or bidi character, nor a code point XML 1.0 cannot carry."""
    return printable(value).strip()


def texts(values: Iterable[object]) -> list[str]:
    """The non-empty strings of a list field, cleaned."""
    return [text for text in (clean(item) for item in values) if text]


def number(value: object) -> float | None:
    """A finite number, or None (null, text, NaN, infinity and booleans are not figures)."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    try:
        x = float(value)
    except OverflowError:  # an integer beyond any float
        return None
    return x if math.isfinite(x) else None


def run_id(run: Run | SkippedRun) -> str:
    """The run's id (``r001``), or ``?`` when nothing printable is left of it."""
    return clean(run.run_id) or "?"


def workload_label(run: Run) -> str:
    """``overcommit #2``: the workload and the repeat, as far as the record knows them."""
    name = clean(run.workload)
    if not name:  # a refused run: its label still names workload and repeat
        found = _LABEL_WORKLOAD_SUFFIX.search(run_label(run))
        return found.group(0).removeprefix(" / ") if found else "-"
    return f"{name} #{run.repeat}" if run.repeat is not None else name


def fmt_time(epoch: float | None) -> str:
    """An epoch second as UTC wall-clock time, or ``-``."""
    value = number(epoch)
    if value is None:
        return "-"
    return time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(value))


def fmt_number(value: float | None) -> str:
    """A criterion's value or threshold: integers whole, others to 4 significant digits."""
    x = number(value)
    if x is None:
        return "no data"
    if x.is_integer() and abs(x) < 1e12:
        return str(int(x))
    return f"{x:.4g}"


def fmt_figure(value: float | None) -> str:
    """A figure's value, with as many digits as a reader compares (3 significant ones)."""
    x = number(value)
    if x is None:
        return "-"
    if x == 0:
        return "0"
    if abs(x) >= 100:
        return f"{x:.0f}"
    return f"{x:.1f}" if abs(x) >= 10 else f"{x:.3g}"


def exit_text(code: int | None) -> str:
    """``exit 3 (criteria fail)``: the exit code and what it means."""
    if code is None:
        return "exit ?"
    if code == 0:
        return "exit 0"
    try:
        meaning = ExitCode(code).name.lower().replace("_", " ")
    except ValueError:
        return f"exit {code}"
    return f"exit {code} ({meaning})"


# -- redone runs ------------------------------------------------------------------------


def recorded_attempt(run: Run) -> int | None:
    """The run's attempt as its record gives it; None when the record does not say (the
    schema's default of 1 is no evidence that the run ran once)."""
    return run.attempt if "attempt" in run.model_fields_set else None


def redone_lines(run: Run) -> list[str]:
    """Why a run was redone, one line per earlier attempt ("attempt 2: worker lost during
    attempt 1: ..."); empty for a run that ran once. A redone run must never read as a
    plain pass, so an attempt above 1 without recorded reasons still gets a line."""
    lines = []
    for entry in sorted(run.redone, key=lambda e: e.attempt or 0):
        earlier = entry.attempt or 0
        head, sep, rest = clean(entry.reason).partition(": ")
        # "worker lost: node task(s) ..." reads best as "worker lost during attempt 1: ...".
        what = (
            f"{head} during attempt {earlier}: {rest}"
            if sep
            else f"redone after attempt {earlier}: {head or 'why was not recorded'}"
        )
        lines.append(f"attempt {earlier + 1}: {what}")
    attempt = recorded_attempt(run)
    if not lines and attempt is not None and attempt > 1:
        lines.append(f"attempt {attempt}: redone; why the earlier attempt(s) ended was not recorded")
    return lines


def verdict_label(run: Run) -> str:
    """``pass`` or ``pass (attempt 2)``: the verdict, marked when the run was redone."""
    verdict = clean(run.verdict) or "?"
    if not redone_lines(run):
        return verdict
    attempt = recorded_attempt(run)
    return f"{verdict} (attempt {attempt})" if attempt is not None else f"{verdict} (redone)"


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


@dataclass(frozen=True)
class KernelIdentity:
    """What a run's record says of the kernel it ran (every string cleaned)."""

    release: str
    version: str
    source: str
    artifact: str | None
    patches: tuple[str, ...]


def run_label(run: Run | SkippedRun) -> str:
    """The run's label without its run id: ``linux-image-amd64 / overcommit #3``."""
    return _LABEL_RUN_PREFIX.sub("", clean(run.kernel)) or "?"


def spec_label(run: Run) -> str:
    """The campaign's name for the run's kernel: its label without run id, variant and workload."""
    return _LABEL_VARIANT_SUFFIX.sub("", _LABEL_WORKLOAD_SUFFIX.sub("", run_label(run))) or "?"


def variant(run: Run) -> str:
    """The variant of the campaign's settings the run ran (from its label when a refused
    run's record lacks the field); empty for a campaign without variants."""
    found = _LABEL_VARIANT_SUFFIX.search(_LABEL_WORKLOAD_SUFFIX.sub("", run_label(run)))
    return clean(run.variant) or (found.group(1) if found else "")


def has_variants(record: Campaign) -> bool:
    """Whether the campaign ran variants of its settings (a comparison campaign may)."""
    return any(variant(run) for run in record.runs)


def kernel_cell(kernel: str, run: Run) -> str:
    """A run's kernel as the tables show it, with its variant: ``6.1.0-57-amd64 [base]``."""
    name = variant(run)
    return f"{kernel} [{name}]" if name else kernel


def kernel_identity(run: Run) -> KernelIdentity:
    """The run's kernel_info, or what an older record's first node says about its kernel."""
    info = run.kernel_info
    if info.model_fields_set:  # the record has a kernel_info with something in it
        return KernelIdentity(
            release=clean(info.release),
            version=clean(info.version),
            source=clean(info.source),
            artifact=clean(info.artifact) or None,
            patches=tuple(texts(info.patches)),
        )
    kernel = next((node.kernel for node in run.nodes if node.kernel), {})
    package = clean(kernel.get("package"))
    source = clean(kernel.get("source"))
    return KernelIdentity(
        release=clean(kernel.get("uname_r") or kernel.get("kver")),
        version=clean(kernel.get("uname_v")),
        source=f"package {source or package}" if package else source,
        artifact=None,
        patches=(),
    )


def kernels(record: Campaign) -> list[Kernel]:
    """The campaign's kernels in order of first use. Runs share a kernel when the campaign
    names it alike and it booted the same release; a run refused before its kernel was
    resolved joins the first kernel of its name."""
    groups: dict[tuple[str, str], list[Run]] = {}
    for run in record.runs:
        spec, release = spec_label(run), kernel_identity(run).release
        if not release:
            release = next((r for s, r in groups if s == spec), "")
        groups.setdefault((spec, release), []).append(run)
    found = [_kernel(spec, members) for (spec, _), members in groups.items()]
    return _disambiguate(found)


def _kernel(spec: str, members: list[Run]) -> Kernel:
    known = next((kernel_identity(r) for r in members if kernel_identity(r).release), kernel_identity(members[0]))
    return Kernel(
        name=known.release or spec,
        release=known.release or "-",
        version=known.version or "-",
        source=known.source or f"{spec} (not resolved: no node ran)",
        artifact=known.artifact,
        patches=known.patches,
        run_ids=tuple(run_id(r) for r in members),
    )


def _disambiguate(found: list[Kernel]) -> list[Kernel]:
    """Two kernels of one release (a base build and a patched one) get their hash added."""
    names = [k.name for k in found]
    return [replace(k, name=f"{k.name} @{k.short_artifact}") if names.count(k.name) > 1 else k for k in found]


def kernel_by_run(record: Campaign) -> dict[str, Kernel]:
    """Each run id's kernel (as listed by :func:`kernels`)."""
    return {rid: k for k in kernels(record) for rid in k.run_ids}


def kernel_names(record: Campaign) -> dict[str, str]:
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


def figures(node: Node) -> dict[str, Figure]:
    """A node's figures by (cleaned) name; empty in records older than figures."""
    return {clean(name): figure for name, figure in node.figures.items()}


def figure_specs(record: Campaign) -> list[FigureSpec]:
    """The figures the record holds: the known ones in their order, then any new ones."""
    present: dict[str, Figure] = {}
    for run in record.runs:
        for node in run.nodes:
            for name, figure in figures(node).items():
                present.setdefault(name, figure)
    known = [spec for spec in CATALOG if spec.name in present]
    catalog = {spec.name for spec in CATALOG}
    extra = [
        FigureSpec(name, name, name, clean(fig.unit) or "-", clean(fig.better) or "lower")
        for name, fig in present.items()
        if name not in catalog
    ]
    return known + extra


def series(node: Node) -> dict[str, list[float]]:
    """A node's sampled series, nulls and non-finite values as NaN (gaps in a plot), none
    longer than the time axis; empty when the node never sampled (or the record predates
    series)."""
    columns = {
        clean(name): [math.nan if (x := number(v)) is None else x for v in values]
        for name, values in node.series.items()
    }
    t = columns.get("t", [])
    if all(math.isnan(x) for x in t):
        return {}
    return {name: values[: len(t)] for name, values in columns.items()}


Side = tuple[str, ...]  # a distribution's group: kernel, then variant and workload when they vary


def sides(record: Campaign) -> dict[str, Side]:
    """Each run id's side in the per-figure plots: its kernel, with its variant when the
    campaign has variants. A comparison campaign names the kernel as the campaign does
    (its ``kernel_label``, as its comparisons do) and adds the workload when it has several
    (a comparison is always within one workload); any other record names it as the
    Kernels table does."""
    names = kernel_names(record)
    compared = bool(record.comparisons)
    with_variant = has_variants(record)
    # A run refused before it started may lack its workload: it has no values to plot.
    with_workload = compared and len({clean(run.workload) for run in record.runs} - {""}) > 1
    found = {}
    for run in record.runs:
        kernel = (clean(run.kernel_label) or spec_label(run)) if compared else names.get(run_id(run), "?")
        side = [kernel]
        if with_variant:
            side.append(variant(run) or "-")
        if with_workload:
            side.append(clean(run.workload) or "-")
        found[run_id(run)] = tuple(side)
    return found


def distribution(record: Campaign, name: str) -> list[tuple[Side, list[float], list[float]]]:
    """A figure's values per side (:func:`sides`): (side, values of passing nodes, values
    of the others). Only passing runs are compared; the others are kept apart, for inspection."""
    by_run = sides(record)
    groups: dict[Side, tuple[list[float], list[float]]] = {side: ([], []) for side in by_run.values()}
    for run in record.runs:
        passed = clean(run.verdict) == "pass"
        for node in run.nodes:
            figure = figures(node).get(name)
            value = number(figure.value) if figure else None
            if value is not None:
                side = groups.setdefault(by_run.get(run_id(run), ("?",)), ([], []))
                side[0 if passed and clean(node.verdict) == "pass" else 1].append(value)
    return [(side, good, other) for side, (good, other) in groups.items() if good or other]


# -- comparisons ------------------------------------------------------------------------


def campaign_reasons(record: Campaign) -> list[str]:
    """Why the campaign has its verdict beyond its runs' (a regression, no baseline)."""
    return texts(record.reasons)


def compared_figures(entry: Comparison) -> list[ComparedFigure]:
    """A comparison's figures, the one that decides its verdict (``primary``) first."""
    primary = clean(entry.primary)
    return sorted(entry.figures, key=lambda figure: clean(figure.figure) != primary)


def comparison_cells(record: Campaign) -> list[str]:
    """Where each comparison was made: its workload, and the other axis's value (the kernel
    of a variant comparison, the variant of a kernel comparison) when the comparisons
    differ in it: ``small`` or ``small, kernel linux-image-amd64``."""
    entries = record.comparisons
    varying = [axis for axis in ("kernel", "variant") if len({_axis_value(entry, axis) for entry in entries}) > 1]
    return [
        ", ".join([clean(entry.workload) or "-", *(f"{axis} {_axis_value(entry, axis) or '-'}" for axis in varying)])
        for entry in entries
    ]


def _axis_value(entry: Comparison, axis: str) -> str:
    return clean(entry.kernel if axis == "kernel" else entry.variant)


@dataclass(frozen=True)
class Reference:
    """A baseline's median drawn across a figure's plot."""

    label: str  # "baseline base", "baseline base (small)" when several cells are compared
    value: float


def baseline_references(record: Campaign, name: str) -> list[Reference]:
    """The baseline medians of figure ``name``, one per distinct baseline (the comparison
    entry's ``median_a``: the baseline side's passing runs, or another campaign's)."""
    cells = comparison_cells(record)
    several = len(set(cells)) > 1
    found: dict[str, float] = {}
    for entry, cell in zip(record.comparisons, cells, strict=True):
        figure = next((f for f in compared_figures(entry) if clean(f.figure) == name), None)
        value = number(figure.median_a) if figure else None
        if value is None:
            continue
        label = f"baseline {clean(entry.baseline) or '?'}"
        found.setdefault(f"{label} ({cell})" if several else label, value)
    return [Reference(label, value) for label, value in found.items()]
