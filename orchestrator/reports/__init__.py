"""Campaign reports: text, HTML, JUnit XML and JSON renderings of a campaign record.

The record is a campaign's ``result.json`` as ``orchestrator/results.py`` assembles it
(with its figures, series, redone, kernel_info, settings and reproduce; and for a
comparison campaign, its ``comparisons``, ``reasons`` and each run's ``variant``
and ``kernel_label``: a Comparison section, the baseline's median drawn across the
per-figure plots, a JUnit suite of comparisons). Every entry point takes the record as a
mapping or as a ``model.result.Campaign`` and reads it once, through result.json's schema
(``view.py``): older shapes load with their defaults (no figures, runs refused with
``nodes: []``, nulls; a record without comparisons renders exactly as before them), and a
record the schema refuses raises :class:`RecordError` naming every wrong field, in every
format. The text and HTML reports lay out the same tables (``tables.py``); only the HTML
report draws plots (``plots.py``, matplotlib's Agg).

:func:`write_reports` writes, into a result directory:

========  ====================  ==================================================
format    file                  what
========  ====================  ==================================================
text      ``report.txt``        plain text for a reply on a mailing list (80 cols)
html      ``report.html``       one offline page with the plots embedded
junit     ``junit.xml``         JUnit XML (one suite per run, one case per node; one
                                case per comparison)
json      ``report.json``       the record itself, indented (a Campaign: as the
                                schema reads it)
========  ====================  ==================================================
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from model.display import printable
from model.paths import own_subdir, replace_file
from model.result import Campaign
from orchestrator.reports.junit import render_junit
from orchestrator.reports.text import render_text
from orchestrator.reports.view import RecordError, campaign_of

__all__ = [
    "FILES",
    "FORMATS",
    "RecordError",
    "Source",
    "render",
    "render_html",
    "render_json",
    "render_junit",
    "render_text",
    "write_reports",
]

FORMATS = ("text", "html", "junit", "json")
FILES = {"text": "report.txt", "html": "report.html", "junit": "junit.xml", "json": "report.json"}
Source = Mapping[str, Any] | Campaign  # a record as read from result.json, or already validated


def render_html(record: Source) -> str:
    """The HTML report (imported here: matplotlib costs ~0.5 s, and the text report, the
    summary table and every other command that imports this package do not need it)."""
    from orchestrator.reports.html import render_html as draw

    return draw(record)


def render_json(record: Source) -> str:
    """The record itself as indented JSON (what ``--format json`` prints): a mapping as it
    is, once the schema has accepted it (a record the other formats refuse is refused here
    too), a Campaign as the schema reads it.

    Non-ASCII text stays readable, but what a terminal would act on (C1 controls, bidi
    and other invisible characters, lone surrogates) is written as ``\\u`` escapes: the
    same JSON value, nothing for the terminal to obey.
    """
    return _json(_read(record)[1])


def _read(record: Source) -> tuple[Campaign, Any]:
    """The record as the schema reads it, and the document report.json holds."""
    campaign = campaign_of(record)
    return campaign, campaign.model_dump(mode="json") if isinstance(record, Campaign) else record


def _json(document: Any) -> str:
    text = json.dumps(document, indent=2, ensure_ascii=False)
    return _NON_ASCII.sub(_escape_hidden, text) + "\n"


_NON_ASCII = re.compile("[^\x00-\x7e]")  # json.dumps escapes C0 itself


def _escape_hidden(match: re.Match[str]) -> str:
    char = match.group()
    if printable(char) == char:
        return char
    code = ord(char)
    if code <= 0xFFFF:
        return f"\\u{code:04x}"
    code -= 0x10000  # beyond the BMP: JSON escapes a UTF-16 surrogate pair
    return f"\\u{0xD800 + (code >> 10):04x}\\u{0xDC00 + (code & 0x3FF):04x}"


RENDERERS: dict[str, Callable[[Source], str]] = {
    "text": render_text,
    "html": render_html,
    "junit": render_junit,
}


def render(record: Source, fmt: str) -> str:
    """The record rendered in ``fmt``, one of :data:`FORMATS`. Raises RecordError when
    the record does not match result.json's schema."""
    if fmt not in FORMATS:
        raise ValueError(f"unknown report format {fmt!r}: use one of {', '.join(FORMATS)}")
    return _rendered(*_read(record), fmt)


def _rendered(campaign: Campaign, document: Any, fmt: str) -> str:
    return _json(document) if fmt == "json" else RENDERERS[fmt](campaign)


def write_reports(record: Source, directory: Path) -> dict[str, Path]:
    """Write every format into ``directory`` (see the table above); returns format -> path.

    Each file is written to a fresh temporary file in the same directory and renamed over
    the old one, so a reader (a CI job collecting junit.xml, a browser) never sees half a
    file; ``directory`` must be ours and no write goes through a link
    (``model.paths.replace_file``). Reports are 0644: a web server or CI agent reads them.
    The record is read once, before anything is written: a record the schema refuses
    raises RecordError and leaves ``directory`` as it was.
    """
    campaign, document = _read(record)
    directory = directory.absolute()
    fd = own_subdir(directory.parent, directory.name)
    try:
        written = {}
        for fmt in FORMATS:
            replace_file(fd, FILES[fmt], _rendered(campaign, document, fmt).encode("utf-8"), mode=0o644)
            written[fmt] = directory / FILES[fmt]
        return written
    finally:
        os.close(fd)
