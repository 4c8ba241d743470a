"""The live terminal view: events fold into per-node lines, finished runs into permanent lines,
garbage never ends the follow loop, and a stream that is not a terminal keeps the log lines."""

from __future__ import annotations

import io
import re
from collections.abc import Mapping
from types import SimpleNamespace
from typing import Any

import pytest
import redis
from rich.console import Console

from model.hashes import CampaignHash
from orchestrator.live import LiveState, LiveView, progress_fraction, render_rows
from orchestrator.watch import LogLines, follow, format_event, wants_live_view
from workers.coordination.streams import workload_progress

T0 = 1_700_000_000.0
WIDTH = 100


def _ev(kind: str, at: float, **fields: Any) -> dict[str, str]:
    """An event as follow reads it from Redis: every field a string."""
    return {"kind": kind, "at": str(at), **{key: str(value) for key, value in fields.items()}}


# A two-node run as the workers write it (workers/tasks.py, workers/pipeline/), and a second
# run the scheduler cannot start yet.
RUN_EVENTS = [
    _ev("run", T0, run="r001", status="preparing"),
    _ev("phase", T0 + 1, run="r001", node="", phase="kernel", detail="linux-image-amd64"),
    _ev("run", T0 + 5, run="r001", status="provisioning"),
    _ev("phase", T0 + 6, run="r001", node="node1", phase="boot", detail="6.1.0-57-amd64, 256 MiB RAM"),
    _ev("phase", T0 + 7, run="r001", node="node2", phase="boot", detail="6.1.0-57-amd64, 256 MiB RAM"),
    _ev("phase", T0 + 14, run="r001", node="node1", phase="workload", detail="touch 384 MiB x 1 pass(es)"),
    _ev("run", T0 + 14, run="r001", status="running"),
    _ev("swap", T0 + 16, run="r001", node="node1", out_mib=12.1, in_mib=0.0, detail="progress write 1 144"),
    _ev("note", T0 + 16, run="r002", detail="waiting for a worker on lab.local"),
    _ev("note", T0 + 18, run="r002", detail="waiting for a worker on lab.local"),
]


def _folded(events: list[dict[str, str]], now: float) -> tuple[LiveState, list[str]]:
    state, lines = LiveState(), []
    for event in events:
        lines += [line.plain for line in state.fold(event, now)]
    return state, lines


def _screen(state: LiveState, now: float, width: int = WIDTH) -> list[str]:
    console = Console(file=io.StringIO(), width=width, record=True, color_system=None)
    console.print(render_rows(state.rows(now)))
    return [line.rstrip() for line in console.export_text().splitlines()]


# -- folding ------------------------------------------------------------------------------------
def test_events_fold_into_one_line_per_active_node() -> None:
    state, lines = _folded(RUN_EVENTS, T0 + 20)
    rows = {row.where: row for row in state.rows(T0 + 30)}

    assert sorted(rows) == ["r001 node1", "r001 node2", "r002 -"]  # r001's own line hides behind its nodes
    node1 = rows["r001 node1"]
    assert (node1.phase, node1.out_mib, node1.in_mib) == ("workload", "12.1", "0.0")
    assert node1.fraction == pytest.approx(144 / 768)  # write 144 MiB of 384, one pass: written, then verified
    assert node1.progress == " 19%  write 1/1, 144/384 MiB"
    assert node1.elapsed == "0:24"  # since the node's first event (T0 + 6)
    assert (rows["r001 node2"].phase, rows["r001 node2"].progress) == ("boot", "6.1.0-57-amd64, 256 MiB RAM")
    assert (rows["r002 -"].phase, rows["r002 -"].progress) == ("waiting", "waiting for a worker on lab.local")
    assert [line.split("] ", 1)[1] for line in lines] == ["r002         waiting for a worker on lab.local"]


def test_progress_is_a_percentage_as_the_worker_computes_it() -> None:
    for line in ("progress write 1 0", "progress write 1 144", "progress verify 1 200", "progress verify 2 384"):
        assert progress_fraction(line, 384, 2) == pytest.approx(workload_progress(line, 384, 2))
    assert progress_fraction("started 123456", 384, 1) is None
    assert progress_fraction("progress write 1 999999999999", 384, 1) is None  # absurd numbers: the raw line


def test_a_node_without_its_workload_size_shows_the_raw_progress_line() -> None:
    events = [_ev("swap", T0, run="r001", node="node1", out_mib="1.5", in_mib="0", detail="progress verify 1 10")]
    row = _folded(events, T0)[0].rows(T0 + 1)[0]
    assert (row.phase, row.fraction, row.progress, row.out_mib) == (
        "workload",
        None,
        "progress verify 1 10",
        "1.5",
    )


def test_a_finished_run_becomes_one_permanent_line_read_once_from_the_store() -> None:
    state, _ = _folded(RUN_EVENTS, T0 + 20)
    stored = {
        "label": "r001 linux-image-amd64 / overcommit #1",
        "verdict": "fail",
        "prepared": {"kver": "6.1.0-57-amd64"},
        "result": {
            "nodes": [
                {"node": "node1", "verdict": "pass", "reasons": []},
                {"node": "node2", "verdict": "fail", "reasons": ["3 bad pages after swap-in"]},
            ]
        },
    }
    done = _ev("run", T0 + 60, run="r001", status="done")

    assert state.wants_lookup(done) == "r001"
    lines = [line.plain for line in state.fold(done, T0 + 60, stored)]

    assert len(lines) == 1
    assert re.fullmatch(
        r"\[\d\d:\d\d:\d\d\] r001 FAIL +linux-image-amd64 / overcommit #1 \[6\.1\.0-57-amd64\]"
        r"  nodes: node1 pass, node2 fail  - node2: 3 bad pages after swap-in",
        lines[0],
    ), lines[0]
    assert [row.where for row in state.rows(T0 + 61)] == ["r002 -"]  # r001's nodes left the live area
    assert state.wants_lookup(done) is None  # a replayed "done" costs no second read
    assert state.fold(done, T0 + 61, stored) == []
    late = _ev("swap", T0 + 62, run="r001", node="node1", out_mib=1, in_mib=1)
    assert state.fold(late, T0 + 62) == [] and [row.where for row in state.rows(T0 + 62)] == ["r002 -"]


def test_a_lost_worker_is_a_warning_and_the_abandoned_attempt_leaves_the_screen() -> None:
    lost = _ev("run", T0 + 30, run="r001", status="worker-lost", detail="worker lost: node task(s) for node1")
    state, lines = _folded([*RUN_EVENTS, lost, _ev("run", T0 + 31, run="r001", status="queued")], T0 + 31)

    assert "worker-lost: worker lost: node task(s) for node1" in lines[-1]
    rows = {row.where: row.phase for row in state.rows(T0 + 32)}
    assert rows == {"r001 -": "queued", "r002 -": "waiting"}


def test_an_evaluating_run_shows_its_own_line_beside_its_finished_nodes() -> None:
    events = [
        *RUN_EVENTS,
        _ev("phase", T0 + 40, run="r001", node="node1", phase="done"),
        _ev("run", T0 + 41, run="r001", status="evaluating"),
    ]
    state, _ = _folded(events, T0 + 41)
    rows = {row.where: row for row in state.rows(T0 + 100)}

    assert rows["r001 -"].phase == "evaluating"
    assert (rows["r001 node1"].phase, rows["r001 node1"].elapsed) == ("done", "0:34")  # its clock stopped


# -- rendering ----------------------------------------------------------------------------------
def test_the_live_area_renders_one_line_per_row_within_the_width() -> None:
    long_detail = "touch 384 MiB x 1 pass(es) " + "x" * 200
    events = [*RUN_EVENTS, _ev("phase", T0 + 19, run="r001", node="node2", phase="mount", detail=long_detail)]
    state, _ = _folded(events, T0 + 20)
    screen = _screen(state, T0 + 30)

    assert len(screen) == 3
    assert all(len(line) <= WIDTH for line in screen)
    assert re.fullmatch(
        r"r001 node1 workload 0:24  out 12.1 / in  0.0 MiB  ━━─{10}  19%  write 1/1, 144/384 MiB", screen[0]
    )
    assert re.match(r"r001 node2 +mount +0:23 +touch 384 MiB x 1 pass\(es\).*…$", screen[1])
    assert re.match(r"r002 - +waiting +0:14 +waiting for a worker on lab\.local$", screen[2])


GARBAGE: list[Any] = [
    None,
    "not a mapping",
    42,
    {},
    {"kind": None},
    {"kind": "swap", "run": "r001", "node": "node1"},  # no numbers at all
    {"kind": "swap", "run": "r001", "node": "node1", "out_mib": "12,5", "in_mib": "-3", "at": "yesterday"},
    {"kind": "swap", "run": "r001", "node": "node1", "out_mib": "nan", "in_mib": "inf", "detail": ["x"]},
    {"kind": "phase", "run": "r001", "node": "node1", "phase": "workload", "detail": "touch 99999999999 MiB x 0 pass"},
    {"kind": "swap", "run": "r001", "node": "node2", "out_mib": "1", "in_mib": "1", "detail": "progress write x 1"},
    {"kind": "phase", "run": "r009", "node": "n\x1b[2J\x1b]0;owned\x07", "phase": "\u202eboot", "detail": "a\rb\x08"},
    {"kind": "run", "run": "r005", "status": "done", "at": "1e400"},
    {"kind": "run", "run": {"nested": 1}, "status": ["done"]},
    {"kind": "note", "detail": "x" * 100_000},
    {"kind": "campaign", "status": b"done", "at": float("nan")},
    {"kind": "note", "run": "r006", "detail": "far future", "at": "1e300"},
    {"kind": "mystery", "run": "r001"},
]


class _BadMapping(Mapping[str, Any]):
    """A mapping whose every read fails: the view's last line of defence."""

    def __getitem__(self, key: str) -> Any:
        raise RuntimeError("unreadable")

    def __iter__(self) -> Any:
        raise RuntimeError("unreadable")

    def __len__(self) -> int:
        return 1


def test_garbage_events_never_crash_the_view_and_bad_numbers_show_as_a_question_mark() -> None:
    out = io.StringIO()
    console = Console(file=out, width=WIDTH, force_terminal=True, color_system=None)
    with LiveView(out, lookup=lambda rid: {"verdict": ["not", "text"], "result": "nope"}, console=console) as view:
        for event in [*GARBAGE, _BadMapping(), _BadMapping()]:
            view.event(event)
        rows = {row.where: row for row in view.state.rows(T0)}
        screen = _screen(view.state, T0)

    assert (rows["r001 node1"].out_mib, rows["r001 node1"].in_mib) == ("?", "?")
    assert all("\x1b" not in line and "\x07" not in line and "\u202e" not in line for line in screen)
    assert re.search(r"^r009 n +boot .* a b$", "\n".join(screen), re.M)  # whole sequences gone, text kept
    assert "r006         far future" in out.getvalue()  # shown at the time it arrived
    assert out.getvalue().count("an event could not be shown") == 1  # said once, then silently skipped
    assert view.skipped == 5  # three events that are no mapping, two unreadable ones


def test_a_failing_store_read_still_prints_the_finished_run() -> None:
    def lookup(rid: str) -> Mapping[str, Any]:
        raise redis.ConnectionError("gone")

    out = io.StringIO()
    console = Console(file=out, width=WIDTH, force_terminal=True, color_system=None)
    with LiveView(out, lookup=lookup, console=console) as view:
        for event in [*RUN_EVENTS, _ev("run", T0 + 60, run="r001", status="done")]:
            view.event(event)

    assert re.search(r"r001 \? +\?  nodes: node1, node2", out.getvalue())


# -- follow: live view on a terminal, log lines elsewhere ---------------------------------------
class _Store:
    """The part of CampaignStore that follow uses, serving a fixed event list."""

    def __init__(self, events: list[dict[str, str]], runs: dict[str, dict[str, Any]], fail_first: bool = False) -> None:
        self.events = [(f"{i + 1}-0", event) for i, event in enumerate(events)]
        self.runs = runs
        self.run_reads: list[str] = []
        self.fail_first = fail_first

    def read_events(self, cid: str, after: str = "0-0", block_ms: int = 1000) -> list[tuple[str, dict[str, Any]]]:
        if self.fail_first:
            self.fail_first = False
            raise redis.ConnectionError("Connection refused")
        return [(eid, event) for eid, event in self.events if int(eid.split("-")[0]) > int(after.split("-")[0])]

    def status(self, cid: str) -> str:
        return "done"

    def campaign(self, cid: str) -> CampaignHash:
        return CampaignHash(
            id=cid,
            name="c",
            file="c.yaml",
            lab="local",
            status="done",
            created_at=1.0,
            campaign={},
            runs=[],
            result={"exit_code": 0},
        )

    def run(self, cid: str, rid: str) -> SimpleNamespace:
        """A run hash as follow's live view reads it (its JSON form)."""
        self.run_reads.append(rid)
        return SimpleNamespace(model_dump=lambda mode: self.runs[rid])


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


FINISHED = [
    *RUN_EVENTS,
    _ev("run", T0 + 60, run="r001", status="done"),
    _ev("run", T0 + 61, run="r002", status="skipped"),
    _ev("campaign", T0 + 62, status="done"),
]
STORED = {
    "r001": {"label": "r001 linux-image-amd64 / overcommit #1", "verdict": "pass"},
    "r002": {"label": "r002 linux-image-amd64 / overcommit #2", "skipped_reason": "not started: a critical criterion"},
}


def test_a_stream_that_is_not_a_terminal_gets_the_log_lines(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("SWAPLAB_PLAIN", raising=False)
    store, out = _Store(FINISHED, STORED), io.StringIO()

    info = follow(store, "c1", out)  # type: ignore[arg-type]

    expected = [line for event in FINISHED if (line := format_event(event))]
    assert info.status == "done"
    assert out.getvalue().splitlines() == expected
    assert "r001 node1   workload  swapped out    12.1 MiB, in     0.0 MiB progress write 1 144" in out.getvalue()
    assert store.run_reads == []  # the log lines read nothing but the stream


def test_a_terminal_gets_the_live_view_reading_each_finished_run_once(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("SWAPLAB_PLAIN", raising=False)
    monkeypatch.setenv("TERM", "xterm-256color")
    store, out = _Store(FINISHED, STORED), _Terminal()

    info = follow(store, "c1", out)  # type: ignore[arg-type]

    text = re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", out.getvalue())
    assert info.status == "done"
    assert re.search(r"r001 PASS +linux-image-amd64 / overcommit #1", text)
    assert re.search(r"r002 SKIPPED +linux-image-amd64 / overcommit #2  - not started", text)
    assert "campaign     done" in text
    assert "swapped out" not in text  # no log lines
    assert store.run_reads == ["r001", "r002"]


@pytest.mark.parametrize(
    ("env", "tty", "live"),
    [({}, True, True), ({}, False, False), ({"SWAPLAB_PLAIN": "1"}, True, False), ({"TERM": "dumb"}, True, False)],
)
def test_the_live_view_only_where_it_can_be_drawn(
    monkeypatch: pytest.MonkeyPatch, env: dict[str, str], tty: bool, live: bool
) -> None:
    monkeypatch.delenv("SWAPLAB_PLAIN", raising=False)
    monkeypatch.setenv("TERM", "xterm")
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    assert wants_live_view(_Terminal() if tty else io.StringIO()) is live


def test_a_closed_stream_is_not_a_terminal() -> None:
    stream = io.StringIO()
    stream.close()
    assert wants_live_view(stream) is False


def test_redis_outage_is_said_above_the_live_area(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("SWAPLAB_PLAIN", raising=False)
    monkeypatch.setenv("TERM", "xterm")
    monkeypatch.setattr("orchestrator.watch.time.sleep", lambda _s: None)
    store, out = _Store(FINISHED, STORED, fail_first=True), _Terminal()

    follow(store, "c1", out)  # type: ignore[arg-type]

    assert "redis unreachable (Connection refused); retrying" in out.getvalue()


def test_the_log_lines_skip_a_malformed_event() -> None:
    out = io.StringIO()
    sink = LogLines(out)
    sink.event({"kind": "swap", "run": "r001", "node": "node1", "out_mib": "?"})  # format_event would raise
    sink.event(_ev("phase", T0, run="r001", node="node1", phase="collect"))
    assert out.getvalue().splitlines() == [format_event(_ev("phase", T0, run="r001", node="node1", phase="collect"))]
