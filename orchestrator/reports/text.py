"""The plain-text report: what a reply to a patch series on a mailing list quotes.

At most 80 columns (a wide table is split into blocks that repeat its key columns; long
lines wrap with a hanging indent), spaces only, no colour: mail clients and archives show
it as written. The command to reproduce is never wrapped, so it can be pasted into a shell.
"""

from __future__ import annotations

import textwrap
from collections.abc import Callable, Mapping
from typing import Any

from model.result import Campaign
from orchestrator.reports.tables import (
    ComparisonSummary,
    RunSummary,
    Table,
    comparison_legend,
    comparison_summaries,
    facts,
    figures_table,
    headline,
    no_figures_note,
    reproduce,
    run_summaries,
    setups,
    skipped_table,
)
from orchestrator.reports.view import campaign_of, kernels

WIDTH = 80
GAP = "  "


def render_text(record: Mapping[str, Any] | Campaign) -> str:
    """The campaign record as a plain-text report (UTF-8 text, lines of at most 80 columns).
    Raises RecordError when the record does not match result.json's schema."""
    campaign = campaign_of(record)
    sections: list[Callable[[Campaign], list[str]]] = [
        _header,
        _kernels,
        _setup,
        _figures,
        _comparison,
        _verdicts,
        _skipped,
        _reproduce,
    ]
    blocks = [block for block in (section(campaign) for section in sections) if block]
    return "\n\n".join("\n".join(block) for block in blocks) + "\n"


def wrap(text: str, indent: int = 0, hang: int = 2) -> list[str]:
    """``text`` wrapped to the report's width; continuation lines indented ``hang`` more."""
    return textwrap.wrap(
        text,
        WIDTH,
        initial_indent=" " * indent,
        subsequent_indent=" " * (indent + hang),
        break_long_words=False,  # a hash or a path stays whole (and greppable)
        break_on_hyphens=False,
    ) or [" " * indent]


def _title(text: str, underline: str = "-") -> list[str]:
    return [text, underline * len(text)]


def _field(label: str, value: str, indent: int = 2, width: int = 10) -> list[str]:
    """``  label     value`` with the value's continuation lines under the value."""
    lines = textwrap.wrap(value, WIDTH - indent - width, break_long_words=False, break_on_hyphens=False) or ["-"]
    pad = " " * (indent + width)
    return [" " * indent + label.ljust(width) + lines[0], *(pad + line for line in lines[1:])]


# -- sections ---------------------------------------------------------------------------


def _header(record: Campaign) -> list[str]:
    lines = _title(f"swaplab report: {headline(record)}", "=")
    for label, value in facts(record):
        lines += _field(label, value, indent=0)
    return lines


def _kernels(record: Campaign) -> list[str]:
    found = kernels(record)
    if not found:
        return []
    lines = _title("Kernels")
    for kernel in found:
        lines += wrap(f"{kernel.name} (runs {', '.join(kernel.run_ids)})")
        lines += _field("source", kernel.source)
        lines += _field("version", kernel.version)
        lines += _field("artifact", kernel.short_artifact)
        for number, subject in enumerate(kernel.patches, 1):
            lines += _field("patches" if number == 1 else "", f"{number}/{len(kernel.patches)} {subject}")
    return lines


def _setup(record: Campaign) -> list[str]:
    groups = setups(record)
    if not groups:
        return []
    lines = _title("Setup")
    for run_ids, settings in groups:
        lines += wrap(f"runs {', '.join(run_ids)}")
        for setting in settings:
            lines += wrap(setting, indent=2, hang=4)
    return lines


def _figures(record: Campaign) -> list[str]:
    table = figures_table(record)
    if table is None:
        note = no_figures_note(record)
        return [*_title("Figures"), note] if note else []
    lines = [*_title(table.title), *format_table(table), ""]
    for note in table.legend:
        lines += wrap(note, hang=2)
    return lines


def _comparison(record: Campaign) -> list[str]:
    """Each comparison: its verdict, the figure that decided it, then the figures reported only."""
    summaries = comparison_summaries(record)
    if not summaries:
        return []
    lines = _title("Comparison")
    for summary in summaries:
        lines += _comparison_lines(summary)
    lines.append("")
    for note in comparison_legend(record):
        lines += wrap(note, hang=2)
    return lines


def _comparison_lines(summary: ComparisonSummary) -> list[str]:
    lines = wrap(summary.headline)
    decided = summary.decided
    lines += wrap(decided.summary if decided else f"{summary.primary}: not in the record", indent=2, hang=4)
    if summary.reported:
        lines += wrap("reported only, not deciding the verdict:", indent=2)
    for change in summary.reported:
        p = "" if change.p_values == "-" else f"; p {change.p_values}"
        lines += wrap(f"{change.summary}{p}", indent=4, hang=4)
    return lines


def _verdicts(record: Campaign) -> list[str]:
    summaries = run_summaries(record)
    if not summaries:
        return [*_title("Verdicts"), "no run finished"]
    lines = _title("Verdicts")
    for summary in summaries:
        lines += _run_lines(summary)
    return lines


def _run_lines(summary: RunSummary) -> list[str]:
    lines = wrap(f"{summary.title}: {summary.label}, {summary.exit}")
    for note in summary.notes:
        lines += wrap(note, indent=2, hang=2)
    if not summary.nodes:
        lines += wrap("no node ran", indent=2)
    clean_passes = [n.node for n in summary.nodes if n.verdict == "pass" and not n.evidence]
    if clean_passes:
        lines += wrap(f"passed: {', '.join(clean_passes)}", indent=2, hang=4)
    for node in summary.nodes:
        if node.node in clean_passes:
            continue
        lines += wrap(f"{node.node}: {node.verdict}", indent=2)
        for evidence in node.evidence:
            lines += wrap(f"- {evidence}", indent=4, hang=2)
    return lines


def _skipped(record: Campaign) -> list[str]:
    table = skipped_table(record)
    return [] if table is None else _title(table.title) + format_table(table)


def _reproduce(record: Campaign) -> list[str]:
    file, command = reproduce(record)
    return [*_title("Reproduce"), *wrap(f"campaign file: {file}"), f"  {command}"]


# -- tables -----------------------------------------------------------------------------


def format_table(table: Table, width: int = WIDTH) -> list[str]:
    """A table in fixed-width columns. Too wide for ``width``, it is cut into blocks of
    columns, each repeating the key columns; a single column still too wide wraps."""
    widths = [max([len(c.header), *(len(row[i]) for row in table.rows)]) for i, c in enumerate(table.columns)]
    keys = list(range(min(table.keys, len(widths))))
    room = width - sum(widths[i] + len(GAP) for i in keys)
    lines: list[str] = []
    for block in _blocks(widths, len(keys), room):
        if lines:
            lines.append("")
        # A column wider than the room left wraps; never narrower than 12 (a key hogging the width).
        cut = {i: min(widths[i], max(room, 12)) for i in block}
        lines += _format_block(table, keys + block, {**{i: widths[i] for i in keys}, **cut})
    return lines


def _blocks(widths: list[int], keys: int, room: int) -> list[list[int]]:
    """Non-key columns packed greedily into blocks that fit in ``room``."""
    blocks: list[list[int]] = [[]]
    used = 0
    for i in range(keys, len(widths)):
        need = widths[i] + len(GAP)
        if blocks[-1] and used + need > room:
            blocks.append([])
            used = 0
        blocks[-1].append(i)
        used += need
    return blocks


def _format_block(table: Table, columns: list[int], widths: dict[int, int]) -> list[str]:
    header = [table.columns[i].header for i in range(len(table.columns))]
    lines = _format_row(table, header, columns, widths)
    lines.append(GAP.join("-" * widths[i] for i in columns))
    for row in table.rows:
        lines += _format_row(table, list(row), columns, widths)
    return lines


def _format_row(table: Table, cells: list[str], columns: list[int], widths: dict[int, int]) -> list[str]:
    """One row; a cell longer than its column wraps onto further lines of the row."""
    wrapped = {i: textwrap.wrap(cells[i], widths[i], break_long_words=False) or [""] for i in columns}
    height = max(len(parts) for parts in wrapped.values())
    lines = []
    for n in range(height):
        parts = []
        for i in columns:
            text = wrapped[i][n] if n < len(wrapped[i]) else ""
            number = table.columns[i].kind == "number"
            parts.append(text.rjust(widths[i]) if number else text.ljust(widths[i]))
        lines.append(GAP.join(parts).rstrip())
    return lines
