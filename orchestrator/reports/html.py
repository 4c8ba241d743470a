"""The HTML report: one self-contained file that opens offline, plots included.

CSS is inline and every plot is a PNG in a ``data:`` URI, so the file can be mailed,
attached to a CI job or archived and still show everything; nothing is fetched. Every
string from the record goes through :func:`html.escape` (the record is input: a node's
reason may quote a console line). Plots carry stable ids so tests and people can find
them: ``plot-swap-<run>-<node>``, ``plot-memory-<run>-<node>``, ``plot-dist-<figure>``;
a comparison campaign's distribution plots draw each baseline's median across the plot and
name those lines beside it, in ``baseline-dist-<figure>``.
"""

from __future__ import annotations

import base64
import re
from collections.abc import Iterable, Mapping
from html import escape
from typing import Any

from model.result import Campaign, Run
from orchestrator.reports import plots
from orchestrator.reports.tables import (
    NodeSummary,
    RunSummary,
    Table,
    comparisons_table,
    facts,
    figures_table,
    headline,
    no_figures_note,
    reproduce,
    run_summaries,
    runs_table,
    setups,
    skipped_table,
)
from orchestrator.reports.view import (
    FigureSpec,
    Kernel,
    Reference,
    Side,
    baseline_references,
    campaign_of,
    clean,
    distribution,
    figure_specs,
    fmt_figure,
    has_variants,
    kernels,
    run_id,
    series,
)

# A node's two plots take ~0.15 s and ~80 KB: a 1,000-run campaign would take minutes and
# weigh 100 MB. Past this many node runs the page keeps the tables and evidence only.
MAX_SAMPLED_NODES = 60


def render_html(source: Mapping[str, Any] | Campaign) -> str:
    """The campaign record as one offline HTML page with its plots embedded. Raises
    RecordError when the record does not match result.json's schema."""
    record = campaign_of(source)
    verdict = clean(record.verdict) or "unknown"
    sections = [
        ("kernels", "Kernels", _kernels(record)),
        ("setup", "Setup", _setup(record)),
        ("figures", "Figures", _table(figures_table(record)) or _note(no_figures_note(record))),
        ("comparison", "Comparison", _table(comparisons_table(record))),
        ("distributions", _distributions_title(record), _distributions(record)),
        ("runs", "Runs", _table(runs_table(record)) + _runs(record)),
        ("skipped", "Skipped runs", _table(skipped_table(record))),
        ("reproduce", "Reproduce", _reproduce(record)),
    ]
    present = [(anchor, title, content) for anchor, title, content in sections if content]
    body = [_header(record, [(anchor, title) for anchor, title, _ in present])]
    body += [f'<section id="{anchor}">\n<h2>{title}</h2>\n{content}\n</section>' for anchor, title, content in present]
    return (
        '<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n'
        '<meta name="viewport" content="width=device-width, initial-scale=1">\n'
        f"<title>swaplab: {escape(headline(record))}</title>\n<style>{_css(record)}</style>\n</head>\n"
        f'<body class="{_class("campaign", verdict)}">\n<main>\n' + "\n".join(body) + "\n</main>\n</body>\n</html>\n"
    )


# -- building blocks --------------------------------------------------------------------


def _css(record: Campaign) -> str:
    """The page's style; a comparison campaign's adds its outcome badges and baseline legends."""
    return CSS + COMPARISON_CSS.lstrip("\n") if record.comparisons else CSS


def _class(prefix: str, word: str) -> str:
    """A CSS class from a record's word (``v-infra-error``): letters, digits and dashes only."""
    slug = re.sub(r"[^a-z0-9-]+", "-", word.lower()).strip("-") or "unknown"
    return f"{prefix}-{slug}"


def _badge(verdict: str, label: str | None = None) -> str:
    """A verdict as a coloured badge; a redone run's ("pass (attempt 2)") is ringed, so it
    never looks like a plain pass."""
    text = label or verdict
    word = verdict.split(" ", 1)[0]
    redone = " redone" if "(attempt" in text or "(redone)" in text else ""
    return f'<span class="badge {_class("v", word)}{redone}">{escape(text)}</span>'


def _table(table: Table | None) -> str:
    """A shared table as HTML: numbers right-aligned, verdicts as badges, legend below."""
    if table is None:
        return ""
    head = "".join(f'<th class="{c.kind}">{escape(c.header)}</th>' for c in table.columns)
    rows = "\n".join(
        "<tr>" + "".join(_cell(cell, c.kind) for cell, c in zip(row, table.columns, strict=True)) + "</tr>"
        for row in table.rows
    )
    legend = "".join(f"<li>{escape(note)}</li>" for note in table.legend)
    legend = f'<ul class="legend">{legend}</ul>' if legend else ""
    return f'<div class="scroll"><table>\n<thead><tr>{head}</tr></thead>\n<tbody>\n{rows}\n</tbody>\n</table></div>{legend}'


def _cell(text: str, kind: str) -> str:
    if kind == "verdict" and text:
        return f"<td>{_badge(text)}</td>"
    return f'<td class="{kind}">{escape(text)}</td>'


def _note(text: str | None) -> str:
    return f'<p class="noplot">{escape(text)}</p>' if text else ""


def _facts(pairs: Iterable[tuple[str, str]]) -> str:
    items = "".join(f"<dt>{escape(label)}</dt><dd>{escape(value)}</dd>" for label, value in pairs)
    return f'<dl class="facts">{items}</dl>'


def _img(kind: str, key: str, png: bytes | None, alt: str) -> str:
    """A plot as an <img> with a data: URI, or a note when there was nothing to draw."""
    ident = "plot-" + re.sub(r"[^A-Za-z0-9_-]+", "_", f"{kind}-{key}")
    if png is None:
        return f'<p class="noplot" id="{ident}-none">{escape(alt)}: no samples recorded</p>'
    data = base64.b64encode(png).decode("ascii")
    return f'<img class="plot plot-{kind}" id="{ident}" alt="{escape(alt)}" src="data:image/png;base64,{data}">'


# -- sections ---------------------------------------------------------------------------


def _header(record: Campaign, links: list[tuple[str, str]]) -> str:
    """Campaign, verdict, key facts and links to the sections present (ours, not the record's)."""
    verdict = clean(record.verdict) or "unknown"
    title = f"campaign {clean(record.campaign) or '?'}"
    nav = " ".join(f'<a href="#{anchor}">{text}</a>' for anchor, text in links)
    return (
        f"<header>\n<h1>{escape(title)} {_badge(verdict, verdict.upper())}</h1>\n"
        f"{_facts(facts(record))}\n<nav>{nav}</nav>\n</header>"
    )


def _kernels(record: Campaign) -> str:
    rows = "\n".join(_kernel_row(kernel) for kernel in kernels(record))
    if not rows:
        return ""
    head = "<tr><th>kernel</th><th>runs</th><th>source</th><th>version</th><th>artifact</th><th>patches</th></tr>"
    return f'<div class="scroll"><table>\n<thead>{head}</thead>\n<tbody>\n{rows}\n</tbody>\n</table></div>'


def _kernel_row(kernel: Kernel) -> str:
    patches = "".join(f"<li>{escape(subject)}</li>" for subject in kernel.patches)
    patches = f'<ol class="patches">{patches}</ol>' if patches else "none"
    cells = [
        f'<td class="name">{escape(kernel.name)}</td>',
        f"<td>{escape(', '.join(kernel.run_ids))}</td>",
        f"<td>{escape(kernel.source)}</td>",
        f"<td>{escape(kernel.version)}</td>",
        f'<td class="mono" title="{escape(kernel.artifact or "")}">{escape(kernel.short_artifact)}</td>',
        f"<td>{patches}</td>",
    ]
    return "<tr>" + "".join(cells) + "</tr>"


def _setup(record: Campaign) -> str:
    groups = setups(record)
    items = "".join(
        f"<li><strong>runs {escape(', '.join(ids))}</strong>: {escape('; '.join(lines))}</li>" for ids, lines in groups
    )
    return f'<ul class="setup">{items}</ul>' if items else ""


def _distributions_title(record: Campaign) -> str:
    return "Figures per kernel and variant" if has_variants(record) else "Figures per kernel"


def _distributions(record: Campaign) -> str:
    drawn = [
        (spec, groups, baseline_references(record, spec.name))
        for spec in figure_specs(record)
        if (groups := distribution(record, spec.name))
    ]
    if not drawn:
        return ""
    note = "Blue: runs that passed (box over them when there are several); grey crosses: other runs, not compared."
    if any(references for _, _, references in drawn):
        note += " Dashed lines: each baseline's median, as its comparison used it (see Comparison)."
    return f"<p>{note}</p>" + '<div class="grid">' + "".join(_distribution(*plot) for plot in drawn) + "</div>"


def _distribution(
    spec: FigureSpec, groups: list[tuple[Side, list[float], list[float]]], references: list[Reference]
) -> str:
    """A figure's plot; with the baseline lines named beside it when there are any."""
    image = _img("dist", spec.name, plots.distribution_plot(spec, groups, references), f"{spec.title} per kernel")
    if not references:
        return image
    items = "".join(
        f'<li><span class="ref" style="border-color: {plots.reference_colour(index)}"></span>'
        f"{escape(reference.label)}: {escape(fmt_figure(reference.value))} {escape(spec.unit)}</li>"
        for index, reference in enumerate(references)
    )
    ident = "baseline-dist-" + re.sub(r"[^A-Za-z0-9_-]+", "_", spec.name)
    return f'<figure class="dist">{image}<figcaption><ul class="refs" id="{ident}">{items}</ul></figcaption></figure>'


def _runs(record: Campaign) -> str:
    by_id = {run_id(run): run for run in record.runs}
    articles, drawn = [], 0
    for summary in run_summaries(record):
        articles.append(_run(summary, by_id.get(summary.run_id), drawn < MAX_SAMPLED_NODES))
        drawn += len(summary.nodes)
    return "\n".join(articles)


def _run(summary: RunSummary, run: Run | None, draw: bool) -> str:
    ident = re.sub(r"[^A-Za-z0-9_-]+", "_", summary.run_id)
    notes = "".join(f"<li>{escape(note)}</li>" for note in summary.notes)
    notes = f'<ul class="notes">{notes}</ul>' if notes else ""
    nodes = run.nodes if run else []
    samples = {clean(node.node) or "?": series(node) for node in nodes} if draw else None
    parts = [_node(summary.run_id, node, samples) for node in summary.nodes]
    if not summary.nodes:
        parts = ['<p class="noplot">no node ran</p>']
    return (
        f'<article class="run" id="run-{ident}">\n'
        f"<h3>{escape(summary.title)} {_badge(summary.verdict, f'{summary.label}, {summary.exit}')}</h3>\n"
        f"{notes}\n" + "\n".join(parts) + "\n</article>"
    )


def _node(rid: str, node: NodeSummary, samples: dict[str, dict[str, list[float]]] | None) -> str:
    """A node's verdict, its evidence and its two plots (swap; memory and PSI); ``samples``
    is None past :data:`MAX_SAMPLED_NODES`."""
    items = "".join(f"<li>{escape(line)}</li>" for line in node.evidence)
    evidence = f'<ul class="evidence">{items}</ul>' if items else ""
    heading = f"<h4>{escape(node.node)} {_badge(node.verdict)}</h4>"
    if samples is None:
        omitted = f"plots omitted: this report draws the first {MAX_SAMPLED_NODES} node runs (samples.jsonl has them)"
        return f'<div class="node">{heading}{evidence}<p class="noplot">{omitted}</p></div>'
    key, who, series_ = f"{rid}-{node.node}", f"{rid} {node.node}", samples.get(node.node, {})
    if not series_:
        return f'<div class="node">{heading}{evidence}{_note("no samples recorded")}</div>'
    swap = _img("swap", key, plots.swap_plot(series_, f"{who}: swap"), f"{who} swap MiB/s")
    memory = _img("memory", key, plots.memory_plot(series_, f"{who}: memory and PSI"), f"{who} memory and PSI")
    return f'<div class="node">{heading}{evidence}<div class="plots">{swap}{memory}</div></div>'


def _reproduce(record: Campaign) -> str:
    file, command = reproduce(record)
    return f"<p>campaign file: <code>{escape(file)}</code></p>\n<pre>{escape(command)}</pre>"


CSS = """
:root { --fg: #1d232b; --muted: #5b6673; --line: #d8dde3; --bg: #f6f7f9; }
* { box-sizing: border-box; }
body { margin: 0; background: var(--bg); color: var(--fg);
  font: 14px/1.45 system-ui, -apple-system, "Segoe UI", Roboto, "DejaVu Sans", sans-serif; }
main { max-width: 1240px; margin: 0 auto; padding: 20px 24px 48px; }
header { background: #fff; border: 1px solid var(--line); border-top: 6px solid #6b7280; border-radius: 6px;
  padding: 14px 20px; }
.campaign-pass header { border-top-color: #1a7f37; }
.campaign-fail header { border-top-color: #cf222e; }
.campaign-invalid header, .campaign-infra-error header { border-top-color: #bf8700; }
h1 { font-size: 22px; margin: 0 0 8px; }
h2 { font-size: 18px; margin: 28px 0 10px; padding-bottom: 4px; border-bottom: 1px solid var(--line); }
h3 { font-size: 15px; margin: 0 0 8px; }
h4 { font-size: 14px; margin: 6px 0; }
dl.facts { display: grid; grid-template-columns: max-content 1fr; gap: 2px 16px; margin: 0 0 10px; }
dl.facts dt { color: var(--muted); }
dl.facts dd { margin: 0; word-break: break-all; }
nav a { margin-right: 14px; color: #0969da; text-decoration: none; }
.scroll { overflow-x: auto; }
table { border-collapse: collapse; background: #fff; border: 1px solid var(--line); font-size: 13px; }
th, td { padding: 4px 10px; border-bottom: 1px solid var(--line); text-align: left; vertical-align: top; }
th { background: #eef1f4; font-weight: 600; white-space: nowrap; }
tbody tr:nth-child(even) { background: #fafbfc; }
td.number, th.number { text-align: right; font-variant-numeric: tabular-nums; white-space: nowrap; }
.mono, code, pre { font-family: ui-monospace, "DejaVu Sans Mono", monospace; }
pre { background: #fff; border: 1px solid var(--line); padding: 8px 12px; border-radius: 4px; overflow-x: auto; }
ol.patches { margin: 0; padding-left: 18px; }
ul.legend { color: var(--muted); font-size: 12px; margin: 6px 0; padding-left: 18px; columns: 2; }
.badge { display: inline-block; padding: 1px 8px; border-radius: 10px; font-size: 12px; font-weight: 600;
  color: #fff; background: #6b7280; vertical-align: middle; white-space: nowrap; }
.v-pass { background: #1a7f37; }
.v-fail { background: #cf222e; }
.v-invalid { background: #bf8700; }
.v-infra-error { background: #8250df; }
.v-skipped, .v-cancelled { background: #6b7280; }
.badge.redone { box-shadow: 0 0 0 2px #fff, 0 0 0 4px #bf8700; }
td.name { font-weight: 600; white-space: nowrap; }
article.run { background: #fff; border: 1px solid var(--line); border-radius: 6px; padding: 12px 16px; margin: 14px 0; }
ul.notes { margin: 0 0 8px; padding: 6px 12px 6px 28px; background: #fff8c5; border: 1px solid #eed888;
  border-radius: 4px; }
ul.evidence { margin: 4px 0 8px; padding-left: 22px; color: #82071e; }
.node { border-top: 1px dashed var(--line); padding-top: 6px; margin-top: 6px; }
.plots, .grid { display: flex; flex-wrap: wrap; gap: 10px; align-items: flex-start; }
img.plot { max-width: 100%; height: auto; background: #fff; border: 1px solid var(--line); border-radius: 4px; }
p.noplot { color: var(--muted); font-style: italic; margin: 4px 0; }
"""

# A comparison campaign's outcomes and baseline lines (only on its page: any other record's
# page stays byte for byte what it was before comparisons existed).
COMPARISON_CSS = """
.v-regression { background: #cf222e; }
.v-improvement { background: #1a7f37; }
.v-no { background: #57606a; }
.v-insufficient { background: #bf8700; }
figure.dist { margin: 0; }
ul.refs { list-style: none; margin: 2px 0 0; padding: 0 0 0 4px; font-size: 12px; color: var(--muted); }
span.ref { display: inline-block; width: 22px; margin-right: 6px; vertical-align: middle;
  border-top: 2px dashed #E69F00; }
"""
