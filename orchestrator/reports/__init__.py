"""Campaign reports: text, HTML, JUnit XML and JSON renderings of a campaign record.

The record is a campaign's ``result.json`` as ``orchestrator/report.py`` assembles it
(with issue 12's figures, series, redone, kernel_info, settings and reproduce; and for a
comparison campaign, issue 13's ``comparisons``, ``reasons`` and each run's ``variant``
and ``kernel_label``: a Comparison section, the baseline's median drawn across the
per-figure plots, a JUnit suite of comparisons). Every report reads it through
``record.py``, which accepts older shapes too (no figures, runs refused with ``nodes:
[]``, nulls; a record without comparisons renders exactly as before them); the text and
HTML reports lay out the same tables (``tables.py``); only the HTML report draws plots
(``plots.py``, matplotlib's Agg).

:func:`write_reports` writes, into a result directory:

========  ====================  ==================================================
format    file                  what
========  ====================  ==================================================
text      ``report.txt``        plain text for a reply on a mailing list (80 cols)
html      ``report.html``       one offline page with the plots embedded
junit     ``junit.xml``         JUnit XML (one suite per run, one case per node; one
                                case per comparison)
json      ``report.json``       the record itself, indented
========  ====================  ==================================================
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable
from pathlib import Path

from orchestrator.reports.junit import render_junit
from orchestrator.reports.record import Record
from orchestrator.reports.text import render_text

__all__ = ["FILES", "FORMATS", "render", "render_html", "render_json", "render_junit", "render_text", "write_reports"]

FORMATS = ("text", "html", "junit", "json")
FILES = {"text": "report.txt", "html": "report.html", "junit": "junit.xml", "json": "report.json"}


def render_html(record: Record) -> str:
    """The HTML report (imported here: matplotlib costs ~0.5 s, and the text report, the
    summary table and every other command that imports this package do not need it)."""
    from orchestrator.reports.html import render_html as draw

    return draw(record)


def render_json(record: Record) -> str:
    """The record itself as indented JSON (what ``--format json`` prints)."""
    return json.dumps(record, indent=2, ensure_ascii=False) + "\n"


RENDERERS: dict[str, Callable[[Record], str]] = {
    "text": render_text,
    "html": render_html,
    "junit": render_junit,
    "json": render_json,
}


def render(record: Record, fmt: str) -> str:
    """The record rendered in ``fmt``, one of :data:`FORMATS`."""
    if fmt not in RENDERERS:
        raise ValueError(f"unknown report format {fmt!r}: use one of {', '.join(FORMATS)}")
    return RENDERERS[fmt](record)


def write_reports(record: Record, directory: Path) -> dict[str, Path]:
    """Write every format into ``directory`` (see the table above); returns format -> path.

    Each file is written to a temporary file in the same directory and renamed over the
    old one, so a reader (a CI job collecting junit.xml, a browser) never sees half a file.
    """
    directory.mkdir(parents=True, exist_ok=True)
    written = {}
    for fmt in FORMATS:
        path = directory / FILES[fmt]
        _write_atomically(path, render(record, fmt))
        written[fmt] = path
    return written


def _write_atomically(path: Path, text: str) -> None:
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as out:
            out.write(text)
        os.chmod(tmp, 0o644)  # mkstemp's 0600 would hide the report from a web server or CI agent
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
