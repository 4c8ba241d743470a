"""Guest text shown anywhere cannot drive a terminal: ``model.display.printable`` alone, then
every place swaplab shows a record or an event stream, fed a guest's escape sequences in
every string (kernel release, node name, reasons, console lines, event details)."""

from __future__ import annotations

import copy
import io
import json
import re
import unicodedata
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from rich.console import Console

from model.display import printable
from orchestrator.live import LiveView
from orchestrator.reports import render
from orchestrator.results import print_criteria, print_summary
from orchestrator.watch import LogLines

RECORD = Path(__file__).resolve().parents[1] / "fixtures" / "results" / "pair-result.json"
# Retitle the window, clear the screen, red (a C1 CSI), reverse what follows.
HOSTILE = "\x1b]0;pwned\x07\x1b[2J\x9b31m\u202e"
# What must never reach an output: C0 but newline, DEL, C1, bidi controls, the title text.
CONTROL = "[\x00-\x09\x0b-\x1f\x7f-\x9f\u061c\u200e\u200f\u202a-\u202e\u2066-\u2069]"
FORBIDDEN = re.compile(f"{CONTROL}|pwned")


@pytest.mark.parametrize(
    ("text", "shown"),
    [
        ("\x1b]0;pwned\x07ok", "ok"),  # OSC ended by BEL: the window title
        ("\x1b]52;c;cHduZWQ=\x1b\\ok", "ok"),  # OSC ended by ST: the clipboard
        ("\x1b[2Jok", "ok"),
        ("\x1b[?1049hok", "ok"),
        ("\x9b31mred\x9b0m", "red"),  # C1 CSI
        ("\x9d0;pwned\x9cok", "ok"),  # C1 OSC and ST
        ("\x1bPq#0;2;0;0;0\x1b\\ok", "ok"),  # DCS (sixel)
        ("\x1b(0ok\x1bc", "ok"),  # charset, full reset
        ("a\x1b]0;never ended", "a0;never ended"),  # unterminated: only its introducer goes
        ("\u202etxt.exe\u202c \u2066x\u2069\u200f", "txt.exe x"),
        ("[    1.234] ok\r\n", "[    1.234] ok "),
        ("back\x08\x08space\x00nul\x7fdel", "backspacenuldel"),
        ("tab\there", "tab here"),
        ("Jörg 日本 \U0001f600", "Jörg 日本 \U0001f600"),
        ("lone \ud800 surrogate \ufffe", "lone  surrogate "),
        ("\U000e0041\U000e0042tags", "tags"),
        (None, ""),
        (42, "42"),
    ],
)
def test_printable_drops_sequences_controls_and_bidi_but_keeps_text(text: object, shown: str) -> None:
    assert printable(text) == shown


def test_newlines_stay_only_when_the_caller_shows_lines() -> None:
    assert printable("one\r\ntwo\rthree\u2028four\x85five") == "one two three four five"
    assert printable("one\r\ntwo\rthree\u2028four\x85five", lines=True) == "one\ntwo\nthree\nfour\nfive"


@given(st.text(alphabet=st.characters(codec=None, exclude_categories=()), max_size=200), st.booleans())
def test_nothing_a_terminal_acts_on_survives_and_a_second_pass_changes_nothing(text: str, lines: bool) -> None:
    shown = printable(text, lines=lines)
    assert not re.search(CONTROL, shown)
    assert all(ch == "\n" or unicodedata.category(ch) not in ("Cc", "Cf", "Cs") for ch in shown)
    assert lines or "\n" not in shown
    assert printable(shown, lines=lines) == shown


def test_a_long_hostile_text_is_filtered_in_linear_time() -> None:
    text = ("\x9d" + "x" * 1000) * 2000 + "\x1b]" * 100_000  # unterminated string sequences
    assert printable(text).count("x") == 2_000_000


# -- every place a record or an event stream is shown ------------------------------------
def _poisoned(value: Any) -> Any:
    """Every string of a record or event, with the guest's sequences appended."""
    if isinstance(value, dict):
        return {key: _poisoned(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_poisoned(item) for item in value]
    return value + HOSTILE if isinstance(value, str) else value


@pytest.fixture(scope="module")
def record() -> dict[str, Any]:
    poisoned: dict[str, Any] = _poisoned(json.loads(RECORD.read_text()))
    return poisoned


def test_the_summary_table_and_criteria_show_no_guest_sequence(record: dict[str, Any]) -> None:
    summary, criteria = io.StringIO(), io.StringIO()
    print_summary(record, summary)
    print_criteria(record, criteria)
    for shown in (summary.getvalue(), criteria.getvalue()):
        assert "6.1.0-57-amd64" in shown or "swaplab" in shown  # the text itself is there
        assert not FORBIDDEN.search(shown), FORBIDDEN.findall(shown)[:5]


@pytest.mark.parametrize("fmt", ["text", "html", "junit"])
def test_the_reports_show_no_guest_sequence(record: dict[str, Any], fmt: str) -> None:
    if fmt == "html":  # without the plots (seconds of matplotlib; their labels are the tables' cells)
        record = copy.deepcopy(record)
        for node in (node for run in record["runs"] for node in run["nodes"]):
            node.pop("series", None)
            node.pop("figures", None)
    shown = render(record, fmt)
    assert not FORBIDDEN.search(shown), FORBIDDEN.findall(shown)[:5]


def test_the_json_report_keeps_the_data_and_escapes_what_a_terminal_would_obey(record: dict[str, Any]) -> None:
    shown = render(record, "json")
    assert json.loads(shown) == record  # the same data
    assert not re.search(CONTROL, shown)  # "pwned" stays, as data between \u escapes
    assert "\\u001b]0;pwned\\u0007" in shown and "\\u009b31m" in shown and "\\u202e" in shown


EVENTS = [
    {"kind": "phase", "run": "r001", "node": "node1", "phase": "boot", "detail": "6.1.0-57-amd64", "at": "1"},
    {"kind": "phase", "run": "r001", "node": "node1", "phase": "workload", "detail": "touch 64 MiB x 1 pass(es)"},
    {"kind": "swap", "run": "r001", "node": "node1", "out_mib": "1.5", "in_mib": "0", "detail": "progress write 1 8"},
    {"kind": "note", "run": "r002", "detail": "waiting for a worker"},
    {"kind": "run", "run": "r001", "status": "worker-lost", "detail": "node1: [ 2.1] BUG: oops"},
    {"kind": "run", "run": "r001", "status": "done"},
    {"kind": "campaign", "status": "done", "detail": "1 run"},
]


def _hostile(event: dict[str, str]) -> dict[str, str]:
    """An event whose text fields (not its kind, status or numbers) carry the sequences."""
    return {
        key: value + HOSTILE if key in ("run", "node", "phase", "detail") else value for key, value in event.items()
    }


def test_watch_log_lines_show_no_guest_sequence() -> None:
    out = io.StringIO()
    lines = LogLines(out)
    for event in EVENTS:
        lines.event(_hostile(event))
    lines.message(f"redis unreachable ({HOSTILE})")
    shown = out.getvalue()
    assert "6.1.0-57-amd64" in shown and "BUG: oops" in shown and len(shown.splitlines()) == len(EVENTS) + 1
    assert not FORBIDDEN.search(shown), FORBIDDEN.findall(shown)[:5]


def test_the_live_view_shows_no_guest_sequence(record: dict[str, Any]) -> None:
    out = io.StringIO()
    console = Console(file=out, width=120, force_terminal=True, color_system="truecolor")
    finished = {**record["runs"][0], "verdict": "fail", "label": "r001 x" + HOSTILE, "result": record["runs"][0]}
    with LiveView(out, lookup=lambda rid: finished, console=console) as view:
        for event in EVENTS[:3]:
            view.event(_hostile(event))
        console.print(view.render())  # the live area as its refresh draws it: node1's line
        for event in EVENTS[3:]:
            view.event(_hostile(event))
        view.message(HOSTILE)
    shown = out.getvalue()
    assert "r001 node1" in shown and "BUG: oops" in shown and "done: 1 run" in shown
    # rich draws with its own CSI sequences (colours, cursor moves): none of the guest's.
    assert "\x1b]" not in shown and "\x1b[2J" not in shown and "\x07" not in shown
    assert not re.search("[\x80-\x9f\u202a-\u202e\u2066-\u2069]|pwned", shown)
