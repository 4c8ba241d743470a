"""What the text and HTML reports show, built once: tables, verdicts with evidence, setup.

The renderers only lay these out (fixed-width text or HTML), so both reports always say
the same thing. They read the record as its schema types it (``model.result``, through
``view.py``); every string here has been through :func:`view.clean`, and the HTML report
still escapes it.
"""

from __future__ import annotations

from dataclasses import dataclass

from model.result import Campaign, ComparedFigure, Comparison, Criterion, Figure, Node, Settings
from orchestrator.reports.view import (
    campaign_reasons,
    clean,
    compared_figures,
    comparison_cells,
    exit_text,
    figure_specs,
    figures,
    fmt_figure,
    fmt_number,
    fmt_time,
    kernel_cell,
    kernel_names,
    number,
    redone_lines,
    run_id,
    run_label,
    texts,
    verdict_label,
    workload_label,
)


@dataclass(frozen=True)
class Column:
    """A table column: its header and how its cells read (``verdict`` cells get colour)."""

    header: str
    kind: str = "text"  # "text", "number" (right-aligned) or "verdict"


@dataclass(frozen=True)
class Table:
    """A table both reports print; ``keys`` leading columns repeat when text splits it."""

    title: str
    columns: tuple[Column, ...]
    rows: tuple[tuple[str, ...], ...]
    keys: int = 1
    legend: tuple[str, ...] = ()


# -- figures ----------------------------------------------------------------------------


def figures_table(record: Campaign) -> Table | None:
    """One row per run x node with its figures; None when the record has no figures."""
    specs = figure_specs(record)
    if not specs:
        return None
    names = kernel_names(record)
    rows = []
    disagree = False
    for run in record.runs:
        redone = " (redone)" if redone_lines(run) else ""
        for node in run.nodes:
            values = figures(node)
            cells = [_figure_cell(values.get(spec.name)) for spec in specs]
            disagree = disagree or any(cell.endswith("!") for cell in cells)
            verdict = (clean(node.verdict) or "?") + redone
            kernel = kernel_cell(names.get(run_id(run), "?"), run)
            rows.append((run_id(run), clean(node.node), kernel, verdict, *cells))
    columns = (
        Column("run"),
        Column("node"),
        Column("kernel"),
        Column("verdict", "verdict"),
        *(Column(spec.short, "number") for spec in specs),
    )
    legend = [f"{spec.short}: {spec.title} ({spec.unit}), {spec.better} is better" for spec in specs]
    legend.append("Only rows whose verdict is pass are compared; the others are for inspection.")
    if disagree:
        legend.append("! the node's own value and Prometheus' differ for this window (see the JSON).")
    return Table("Figures", columns, tuple(rows), keys=2, legend=tuple(legend))


def no_figures_note(record: Campaign) -> str | None:
    """What to say instead of the figures table: nothing when no node ran at all."""
    if figure_specs(record) or not any(run.nodes for run in record.runs):
        return None
    return "none recorded (this record predates figures)"


def _figure_cell(figure: Figure | None) -> str:
    if figure is None:
        return fmt_figure(None)
    return fmt_figure(figure.value) + ("!" if figure.agrees is False else "")


# -- comparisons ------------------------------------------------------------------------


@dataclass(frozen=True)
class FigureChange:
    """One figure of a comparison, baseline (A) against candidate (B), ready to print."""

    name: str
    medians: str  # "14.8 → 5.91 MiB/s"
    change: str  # "-60.0 %", or "+0.3 1/s" when A's median is 0
    interval: str  # "-62.1 .. -51.5 %", "-" without one
    outcome: str  # regression, improvement, no change, insufficient data
    p_values: str  # "0.1 (Holm 0.81)", "-" without a rank test
    summary: str  # orchestrator.stats' own line: figure, medians, change, interval, outcome


@dataclass(frozen=True)
class ComparisonSummary:
    """A comparison: candidate against baseline in one cell, its verdict and its figures."""

    candidate: str
    baseline: str
    cell: str  # "small" or "small, kernel linux-image-amd64"
    verdict: str
    primary: str
    decided: FigureChange | None  # the primary figure's, which is the verdict
    reported: tuple[FigureChange, ...]  # the other figures: reported only

    @property
    def title(self) -> str:
        """``pc0 vs base (small)``."""
        return f"{self.candidate} vs {self.baseline} ({self.cell})"

    @property
    def headline(self) -> str:
        """``pc0 vs base (small): REGRESSION (decided by swap_in_mibps)``."""
        return f"{self.title}: {self.verdict.upper()} (decided by {self.primary})"


def comparison_summaries(record: Campaign) -> list[ComparisonSummary]:
    """A comparison campaign's comparisons, in the record's order (none for other records)."""
    cells = comparison_cells(record)
    return [_comparison_summary(entry, cell) for entry, cell in zip(record.comparisons, cells, strict=True)]


def _comparison_summary(entry: Comparison, cell: str) -> ComparisonSummary:
    primary = clean(entry.primary) or "?"
    changes = [(clean(f.figure) == primary, figure_change(f)) for f in compared_figures(entry)]
    return ComparisonSummary(
        candidate=clean(entry.candidate) or "?",
        baseline=clean(entry.baseline) or "?",
        cell=cell,
        verdict=clean(entry.verdict) or "?",
        primary=primary,
        decided=next((change for is_primary, change in changes if is_primary), None),
        reported=tuple(change for is_primary, change in changes if not is_primary),
    )


def figure_change(figure: ComparedFigure) -> FigureChange:
    """A compared figure (``FigureComparison.to_json()``) as the reports print it."""
    name, unit, outcome = clean(figure.figure) or "?", clean(figure.unit), clean(figure.outcome)
    a, b = fmt_figure(figure.median_a), fmt_figure(figure.median_b)
    change, interval = _change(figure, unit)
    # The record's own summary; for a record without one, the same line (ASCII, as in mail).
    summary = clean(figure.summary) or f"{name}: {a} -> {b} {unit} ({change}, CI {interval}): {outcome or '?'}"
    medians = f"{a} \u2192 {b} {unit}".rstrip()
    return FigureChange(name, medians, change, interval, outcome or "?", _p_values(figure), summary)


def _change(figure: ComparedFigure, unit: str) -> tuple[str, str]:
    """The change and its interval: in percent of A (a ratio), or in the unit when A's median is 0."""
    low, high = number(figure.ci_low), number(figure.ci_high)
    pct = number(figure.change_pct)
    if clean(figure.scale) != "difference" and pct is not None:
        return f"{pct:+.1f} %", _interval(_percent(low), _percent(high), "%")
    difference = number(figure.difference)
    if difference is None:
        return "-", "-"
    return f"{difference:+.3g} {unit}".rstrip(), _interval(_signed(low), _signed(high), unit)


def _interval(low: str | None, high: str | None, unit: str) -> str:
    """``-62.1 .. -51.5 %``; a null upper end was infinite (A's resampled median could be 0)."""
    return "-" if low is None else f"{low} .. {high or '+inf'} {unit}".rstrip()


def _percent(ratio: float | None) -> str | None:
    return None if ratio is None else f"{(ratio - 1) * 100:+.1f}"


def _signed(value: float | None) -> str | None:
    return None if value is None else f"{value:+.3g}"


def _p_values(figure: ComparedFigure) -> str:
    p_value, holm = number(figure.p_value), number(figure.p_holm)
    if p_value is None:
        return "-"
    return f"{p_value:.2g}" + ("" if holm is None else f" (Holm {holm:.2g})")


def comparison_legend(record: Campaign) -> tuple[str, ...]:
    """How the comparisons decided, from the first entry's rule and method (shared by all)."""
    entries = record.comparisons
    if not entries:
        return ()
    method = entries[0].method
    confidence = number(method.confidence)
    level = "95 %" if confidence is None else f"{confidence * 100:g} %"
    lines = [
        "A: the baseline, B: the candidate; one value per passing run, its nodes' median.",
        f"change: B / A - 1 (B - A when a side has a 0); CI: its {level} "
        f"{clean(method.interval) or 'bootstrap'} interval"
        + (f" ({fmt_number(method.resamples)} resamples)" if number(method.resamples) else "")
        + ".",
        f"p: {clean(method.rank_test) or 'rank test'} (Holm-adjusted over the figures reported only).",
    ]
    rule = clean(entries[0].rule)
    return tuple([f"Rule: {rule}." if rule else "Rule: the primary figure's outcome is the verdict.", *lines])


def comparisons_table(record: Campaign) -> Table | None:
    """One row per comparison x figure, the deciding figure first; None without comparisons."""
    rows = [row for summary in comparison_summaries(record) for row in _comparison_rows(summary)]
    if not rows:
        return None
    columns = (
        Column("candidate"),
        Column("baseline"),
        Column("workload"),
        Column("verdict", "verdict"),
        Column("figure"),
        Column("A \u2192 B", "number"),
        Column("change", "number"),
        Column("CI", "number"),
        Column("outcome", "verdict"),
        Column("p", "number"),
    )
    return Table("Comparison", columns, tuple(rows), keys=1, legend=comparison_legend(record))


def _comparison_rows(summary: ComparisonSummary) -> list[tuple[str, ...]]:
    """A comparison's rows: who, where and the verdict on the first only, then a figure each."""
    changes = ([summary.decided] if summary.decided else []) + list(summary.reported)
    cells = [
        (
            f"{c.name} (decides)" if c is summary.decided else c.name,
            c.medians,
            c.change,
            c.interval,
            c.outcome,
            c.p_values,
        )
        for c in changes
    ] or [("-", "-", "-", "-", "", "-")]  # a comparison without figures still shows its verdict
    head = (summary.candidate, summary.baseline, summary.cell, summary.verdict)
    return [(*(head if n == 0 else ("",) * len(head)), *figure) for n, figure in enumerate(cells)]


# -- runs -------------------------------------------------------------------------------


def runs_table(record: Campaign) -> Table:
    """One row per run: kernel, workload, verdict (marked when redone), nodes, window."""
    names = kernel_names(record)
    rows = []
    for run in record.runs:
        window = number(run.window.seconds)
        rows.append(
            (
                run_id(run),
                kernel_cell(names.get(run_id(run), "?"), run),
                workload_label(run),
                verdict_label(run),
                ", ".join(clean(n.node) for n in run.nodes) or "none ran",
                "-" if window is None else f"{window:.0f}",
            )
        )
    columns = (
        Column("run"),
        Column("kernel"),
        Column("workload"),
        Column("verdict", "verdict"),
        Column("nodes"),
        Column("window s", "number"),
    )
    return Table("Runs", columns, tuple(rows))


def skipped_table(record: Campaign) -> Table | None:
    """Runs that never started, and why; None when every run started."""
    rows = tuple((run_id(s), run_label(s), clean(s.reason) or "-") for s in record.skipped_runs)
    if not rows:
        return None
    return Table("Skipped runs", (Column("run"), Column("kernel / workload"), Column("why")), rows, keys=2)


# -- verdicts and their evidence --------------------------------------------------------


@dataclass(frozen=True)
class NodeSummary:
    """A node's verdict and the lines that explain it (none for a clean pass)."""

    node: str
    verdict: str
    evidence: tuple[str, ...]


@dataclass(frozen=True)
class RunSummary:
    """A run's verdict, why it was redone, why it was refused, and its nodes'."""

    run_id: str
    kernel: str
    workload: str
    verdict: str
    label: str  # the verdict, marked when redone ("pass (attempt 2)")
    exit: str  # "exit 3 (criteria fail)"
    notes: tuple[str, ...]  # redone attempts, then the run's own reasons
    nodes: tuple[NodeSummary, ...]

    @property
    def title(self) -> str:
        """``r002  6.1.0-57-amd64  overcommit #1`` (``6.1.0-57-amd64 [base]`` for a variant's run)."""
        return f"{self.run_id}  {self.kernel}  {self.workload}"


def run_summaries(record: Campaign) -> list[RunSummary]:
    """Every run with its verdict and evidence, in order."""
    names = kernel_names(record)
    return [
        RunSummary(
            run_id=run_id(run),
            kernel=kernel_cell(names.get(run_id(run), "?"), run),
            workload=workload_label(run),
            verdict=clean(run.verdict) or "?",
            label=verdict_label(run),
            exit=exit_text(run.exit_code),
            notes=tuple(redone_lines(run) + texts(run.reasons)),
            nodes=tuple(node_summary(node) for node in run.nodes),
        )
        for run in record.runs
    ]


def node_summary(node: Node) -> NodeSummary:
    """A node's evidence: its reasons, then each criterion that did not pass with its numbers."""
    unmet = [c for c in node.criteria if clean(c.outcome) != "pass"]
    # The judge words a criterion's reason as "name (severity...): detail"; the criterion
    # line below says the same with value and threshold, so that reason is not repeated.
    covered = tuple(f"{clean(c.name)} (" for c in unmet)
    reasons = [r for r in texts(node.reasons) if not (covered and r.startswith(covered))]
    return NodeSummary(
        node=clean(node.node) or "?",
        verdict=clean(node.verdict) or "?",
        evidence=tuple(reasons + [criterion_line(c) for c in unmet]),
    )


def criterion_line(criterion: Criterion) -> str:
    """``criterion psi_full_limit (critical): fail: got 41.7, wanted <= 35; <detail>``."""
    kind = clean(criterion.severity) or "?"
    if criterion.builtin:
        kind += ", built-in"
    line = (
        f"criterion {clean(criterion.name)} ({kind}): {clean(criterion.outcome)}: "
        f"got {fmt_number(criterion.value)}, wanted {clean(criterion.op)} "
        f"{fmt_number(criterion.threshold)}"
    )
    detail = clean(criterion.detail)
    return f"{line}; {detail}" if detail else line


# -- setup and reproduction -------------------------------------------------------------


def setups(record: Campaign) -> list[tuple[tuple[str, ...], tuple[str, ...]]]:
    """The distinct settings of the campaign's runs, each with the runs that used them."""
    groups: dict[tuple[str, ...], list[str]] = {}
    for run in record.runs:
        lines = settings_lines(run.settings)
        if lines:
            groups.setdefault(lines, []).append(run_id(run))
    return [(tuple(ids), lines) for lines, ids in groups.items()]


def settings_lines(settings: Settings) -> tuple[str, ...]:
    """A run's settings in a few lines: NFS, node size and swap, workload, sysctls (a part
    the record does not give has no line)."""
    lines = []
    nfs = settings.nfs
    if nfs.model_fields_set:
        backend = f" ({clean(nfs.backend)})" if nfs.backend else ""
        # The contract's "options" text, or the campaign's own mount_options list.
        given = clean(nfs.options) or ",".join(texts(nfs.mount_options))
        options = f", options {given}" if given else ""
        lines.append(f"NFS {clean(nfs.version) or '?'}{backend}{options}")
    sizes = [
        f"{what} {fmt_number(size)} MiB"
        for what, size in (("node RAM", settings.node_ram_mib), ("swap file", settings.swap_mib))
        if size is not None
    ]
    if sizes:
        lines.append(", ".join(sizes))
    work = settings.workload
    if work.model_fields_set:
        amounts = [
            f"{fmt_number(value)} {unit}"
            for value, unit in ((work.mib, "MiB"), (work.passes, "pass(es)"))
            if value is not None
        ]
        lines.append(f"workload {clean(work.name) or '?'}" + (f": {', '.join(amounts)}" if amounts else ""))
    if settings.sysctl:
        lines.append("sysctl " + " ".join(f"{clean(k)}={clean(v)}" for k, v in sorted(settings.sysctl.items())))
    return tuple(lines)


def reproduce(record: Campaign) -> tuple[str, str]:
    """The campaign file and the command that runs it again (derived for older records)."""
    file = clean(record.reproduce.file) or clean(record.file) or "CAMPAIGN.yaml"
    command = clean(record.reproduce.command) or f"swaplab run {file}"
    return file, command


def headline(record: Campaign) -> str:
    """``campaign pair: FAIL``."""
    return f"campaign {clean(record.campaign) or '?'}: {(clean(record.verdict) or '?').upper()}"


def facts(record: Campaign) -> list[tuple[str, str]]:
    """The campaign's key facts as (label, value): verdict and why (a comparison campaign's
    reasons), id, the bisection it is a step of, file, lab, time, runs, results."""
    wall = number(record.wall_s)
    started = fmt_time(record.started_at) + ("" if wall is None else f", took {wall:.0f} s")
    counted = f"{len(record.runs)} run(s), {len(record.skipped_runs)} skipped"
    redone = [f"{run_id(run)} {line}" for run in record.runs for line in redone_lines(run)]
    bisection = clean(record.bisection)
    step_of = [("bisection", f"a step of {bisection} (swaplab bisect --status {bisection})")] if bisection else []
    return [
        ("verdict", f"{(clean(record.verdict) or '?').upper()}, {exit_text(record.exit_code)}"),
        *(("why", reason) for reason in campaign_reasons(record)),
        ("id", clean(record.campaign_id) or "-"),
        *step_of,
        ("file", clean(record.file) or "-"),
        ("lab", clean(record.lab) or "-"),
        ("started", started),
        ("runs", counted),
        *(("redone", line) for line in redone),
        ("results", clean(record.result_dir) or "-"),
    ]
