"""The live terminal view of a campaign: one updating line per node, a line per finished run.

``orchestrator.watch.follow`` feeds it the campaign's events when its stream is a terminal.
``LiveState`` folds events into what the screen shows (pure, no I/O but one store read per
finished run, for its verdict: the ``done`` event does not carry it); ``LiveView`` draws
that state with rich: the active nodes' lines in a live area redrawn at most 4 times a
second, and permanent lines above it for finished runs, notes and warnings.

Events cross a process boundary (workers write them, any version, any bug): every field is
treated as an untrusted string here. A number that does not parse is shown as "?", control
characters never reach the terminal, and an event of an unexpected shape is skipped: the
view must never end the follow loop that a campaign's outcome depends on.
"""

from __future__ import annotations

import math
import re
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any, TextIO

from rich.console import Console, Group, RenderableType
from rich.live import Live
from rich.text import Text

from model.display import printable
from model.protocol import TERMINAL as TERMINAL_RUN

RunLookup = Callable[[str], Mapping[str, Any]]
"""A run's stored hash by run id (``CampaignStore.run`` bound to the campaign)."""

REFRESH_HZ = 4.0
TEXT_LIMIT = 300  # longer event fields are cut: a line on a terminal, not a log
BAR_WIDTH = 12
LATEST_TIME = 32503680000.0  # year 3000: an event time past it is garbage (localtime() would overflow)
VERDICT_STYLE = {"pass": "bold green", "fail": "bold red", "infra-error": "bold yellow", "invalid": "bold magenta"}

# The workload step's phase detail and the hog's progress line (workers/pipeline/
# workload_steps.py describe(), workers/coordination/streams.py workload_progress()).
_WORKLOAD_SIZE = re.compile(r"touch (\d{1,9}) MiB x (\d{1,6}) pass")


# -- untrusted fields -------------------------------------------------------------------------
def clean_text(value: object, limit: int = TEXT_LIMIT) -> str:
    """``value`` as one printable line (``model.display.printable``), at most ``limit`` chars."""
    if value is None:
        return ""
    text = value if isinstance(value, str) else str(value)
    text = text[: limit * 4]  # bound the work before the filter
    return " ".join(printable(text).split())[:limit]


def parse_number(value: object) -> float | None:
    """A finite, non-negative number from an event field, or None (shown as "?")."""
    if isinstance(value, bool) or value is None:
        return None
    try:
        number = float(value) if isinstance(value, int | float) else float(clean_text(value, 40))
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) and number >= 0 else None


def workload_size(detail: str) -> tuple[int, int] | None:
    """(MiB, passes) from the workload phase's detail "touch 384 MiB x 1 pass(es)"."""
    match = _WORKLOAD_SIZE.search(detail)
    if match is None:
        return None
    mib, passes = int(match.group(1)), int(match.group(2))
    return (mib, passes) if mib > 0 and passes > 0 else None


def progress_fraction(detail: str, mib: int, passes: int) -> float | None:
    """Fraction done from "progress <write|verify> <pass> <MiB>" (as workers.coordination.streams computes it).

    Each pass writes every MiB, then verifies it: 2 x MiB x passes steps in all.
    """
    words = detail.split()
    if len(words) != 4 or words[0] != "progress" or words[1] not in ("write", "verify"):
        return None
    if not (words[2].isdigit() and words[3].isdigit() and len(words[2]) < 7 and len(words[3]) < 10):
        return None
    steps_before = (int(words[2]) - 1) * 2 + (1 if words[1] == "verify" else 0)
    return max(0.0, min(1.0, (steps_before * mib + int(words[3])) / (2 * mib * passes)))


def clock(seconds: float) -> str:
    """Elapsed time as m:ss, or h:mm:ss past an hour."""
    whole = max(0, int(seconds))
    hours, rest = divmod(whole, 3600)
    return f"{hours}:{rest // 60:02d}:{rest % 60:02d}" if hours else f"{rest // 60}:{rest % 60:02d}"


def _mib(value: object) -> str:
    number = parse_number(value)
    return "?" if number is None else f"{number:.1f}"


# -- state ------------------------------------------------------------------------------------
@dataclass
class Track:
    """One line of the live area: a node of a run, or the run itself (``node == ""``) while
    it has no node working (queued, building, preparing, waiting, evaluating)."""

    run: str
    node: str
    first_at: float
    last_at: float
    phase: str = ""
    detail: str = ""
    out_mib: str = ""  # "" until the first swap event, "?" for a number that did not parse
    in_mib: str = ""
    progress: str = ""  # the hog's raw progress line
    size: tuple[int, int] | None = None  # (MiB, passes) of this node's workload

    def fraction(self) -> float | None:
        """Workload progress as a fraction, when both the line and the size are known."""
        if self.phase != "workload" or not self.progress or self.size is None:
            return None
        return progress_fraction(self.progress, *self.size)


@dataclass(frozen=True)
class Row:
    """What one line of the live area shows, as text (the renderer only lays it out)."""

    where: str
    phase: str
    elapsed: str
    out_mib: str  # "12.1", "?" (did not parse) or "" (no swap event yet)
    in_mib: str
    fraction: float | None
    progress: str


@dataclass
class LiveState:
    """A campaign's live picture, folded from its events one at a time."""

    tracks: dict[tuple[str, str], Track] = field(default_factory=dict)
    run_status: dict[str, str] = field(default_factory=dict)
    finished: dict[str, str] = field(default_factory=dict)  # run id -> its permanent line
    notes: dict[str, str] = field(default_factory=dict)  # last note per run (the scheduler repeats them)

    def wants_lookup(self, event: Mapping[str, Any]) -> str | None:
        """The run id whose stored hash ``fold`` needs for this event (its verdict), if any."""
        if clean_text(event.get("kind")) != "run" or clean_text(event.get("status")) not in TERMINAL_RUN:
            return None
        rid = clean_text(event.get("run"), 64)
        return rid if rid and rid not in self.finished else None

    def fold(self, event: Mapping[str, Any], now: float, run_info: Mapping[str, Any] | None = None) -> list[Text]:
        """Take one event in; return the permanent lines it produces (printed above the live area)."""
        kind = clean_text(event.get("kind"), 20)
        at = _event_time(event.get("at"), now)
        rid, node = clean_text(event.get("run"), 64), clean_text(event.get("node"), 64)
        if kind in ("phase", "swap") and rid in self.finished:
            return []  # a late line of a run already reported: its line would never leave
        if kind == "phase" and rid:
            self._phase(rid, node, at, clean_text(event.get("phase"), 20), clean_text(event.get("detail")))
        elif kind == "swap" and rid and node:
            self._swap(self._track(rid, node, at), event)
        elif kind == "run" and rid:
            return self._run(rid, at, clean_text(event.get("status"), 40), clean_text(event.get("detail")), run_info)
        elif kind == "note":
            return self._note(rid, at, clean_text(event.get("detail")))
        elif kind == "campaign":
            detail = clean_text(event.get("detail"))
            return [_line(at, "campaign", clean_text(event.get("status"), 40) + (f": {detail}" if detail else ""))]
        return []

    def rows(self, now: float) -> list[Row]:
        """The live area's lines, by run then node."""
        shown = [track for key, track in sorted(self.tracks.items()) if self._visible(track)]
        return [self._row(track, now) for track in shown]

    # -- folding ---------------------------------------------------------------------------
    def _track(self, rid: str, node: str, at: float) -> Track:
        track = self.tracks.get((rid, node))
        if track is None:
            track = self.tracks[(rid, node)] = Track(rid, node, first_at=at, last_at=at)
        track.last_at = max(track.last_at, at)
        return track

    def _phase(self, rid: str, node: str, at: float, phase: str, detail: str) -> None:
        track = self._track(rid, node, at)
        if phase != track.phase:
            track.progress = ""
        track.phase, track.detail = phase, detail
        if phase == "workload":
            track.size = workload_size(detail) or track.size

    def _swap(self, track: Track, event: Mapping[str, Any]) -> None:
        track.out_mib, track.in_mib = _mib(event.get("out_mib")), _mib(event.get("in_mib"))
        track.phase = track.phase or "workload"
        track.progress = clean_text(event.get("detail"))

    def _run(self, rid: str, at: float, status: str, detail: str, info: Mapping[str, Any] | None) -> list[Text]:
        if status in TERMINAL_RUN:
            return self._finish(rid, at, status, info)
        if status.endswith("-lost"):  # worker-lost, prepare-lost, build-lost: the attempt is redone or ends
            return [_line(at, rid, f"{status}: {detail}" if detail else status, "bold yellow")]
        if rid in self.finished:
            return []
        self.run_status[rid] = status
        if status == "queued":  # queued again after a lost worker: that attempt's nodes are gone
            self._drop(rid, keep_run=True)
        run = self._track(rid, "", at)
        run.phase, run.detail = status, ""
        return []

    def _note(self, rid: str, at: float, detail: str) -> list[Text]:
        if rid and rid not in self.finished:
            run = self._track(rid, "", at)
            run.detail = detail
            if detail.startswith("waiting"):
                run.phase = "waiting"
        if self.notes.get(rid) == detail:
            return []  # the scheduler says "waiting for a worker" at every step; once is enough
        self.notes[rid] = detail
        return [_line(at, rid or "note", detail, "yellow")]

    def _finish(self, rid: str, at: float, status: str, info: Mapping[str, Any] | None) -> list[Text]:
        if rid in self.finished:
            return []
        nodes = sorted(node for run, node in self.tracks if run == rid and node)
        line = finished_line(rid, at, status, info or {}, nodes)
        self.finished[rid] = line.plain
        self.run_status[rid] = status
        self._drop(rid, keep_run=False)
        return [line]

    def _drop(self, rid: str, keep_run: bool) -> None:
        for key in [key for key in self.tracks if key[0] == rid and (key[1] or not keep_run)]:
            del self.tracks[key]

    # -- showing ---------------------------------------------------------------------------
    def _visible(self, track: Track) -> bool:
        if track.node:
            return True
        # The run's own line: while none of its nodes works, and while it is judged.
        busy = any(run == track.run and node for run, node in self.tracks)
        return not busy or self.run_status.get(track.run) == "evaluating"

    @staticmethod
    def _row(track: Track, now: float) -> Row:
        end = track.last_at if track.phase == "done" else now  # a finished node's clock stops
        fraction = track.fraction()
        if fraction is not None and track.size is not None:
            words = track.progress.split()
            progress = f"{fraction * 100:3.0f}%  {words[1]} {words[2]}/{track.size[1]}, {words[3]}/{track.size[0]} MiB"
        else:
            progress = track.progress if track.phase == "workload" and track.progress else track.detail
        return Row(
            where=f"{track.run} {track.node or '-'}",
            phase=track.phase or "?",
            elapsed=clock(end - track.first_at),
            out_mib=track.out_mib,
            in_mib=track.in_mib,
            fraction=fraction,
            progress=progress,
        )


def finished_line(rid: str, at: float, status: str, info: Mapping[str, Any], nodes: list[str]) -> Text:
    """The permanent line of a finished run: id, kernel, verdict (or how it ended), nodes, why."""
    verdict = clean_text(info.get("verdict"), 20) if status == "done" else status
    label = clean_text(info.get("label"), 120)
    label = label[len(rid) :].strip() if label.startswith(rid + " ") else label  # the label starts with the id
    prepared = info.get("prepared")
    kver = clean_text(prepared.get("kver"), 100) if isinstance(prepared, Mapping) else ""
    stored = info.get("result")
    result: Mapping[str, Any] = stored if isinstance(stored, Mapping) else {}
    line = Text(f"[{_stamp(at)}] {rid} ")
    line.append(f"{(verdict or '?').upper():<11}", style=VERDICT_STYLE.get(verdict, "bold"))
    line.append(f" {label or '?'}" + (f" [{kver}]" if kver else ""))
    node_text = _node_verdicts(result, nodes)
    if node_text:
        line.append(f"  nodes: {node_text}")
    why = _first_reason(result) or clean_text(info.get("skipped_reason"))
    if why and verdict != "pass":
        line.append(f"  - {why}", style="dim")
    return line


def _node_verdicts(result: Mapping[str, Any], seen: list[str]) -> str:
    """Per-node verdicts ("node1 pass, node2 fail") from the run's result, else the nodes seen."""
    judged = result.get("nodes")
    if isinstance(judged, list) and judged:
        pairs = [
            (clean_text(n.get("node"), 64), clean_text(n.get("verdict"), 20)) for n in judged if isinstance(n, Mapping)
        ]
        return ", ".join(f"{name or '?'} {verdict or '?'}" for name, verdict in pairs)
    return ", ".join(seen)


def _first_reason(result: Mapping[str, Any]) -> str:
    reasons = result.get("reasons")
    if isinstance(reasons, list) and reasons:
        return clean_text(reasons[0], 200)
    for node in result.get("nodes") or []:
        if isinstance(node, Mapping) and isinstance(node.get("reasons"), list) and node["reasons"]:
            return clean_text(f"{clean_text(node.get('node'), 64)}: {clean_text(node['reasons'][0])}", 200)
    return ""


def _event_time(value: object, now: float) -> float:
    """When the event happened (the writer's clock), or now for a time that makes no sense."""
    at = parse_number(value)
    return at if at is not None and 0 < at < LATEST_TIME else now


def _stamp(at: float) -> str:
    return time.strftime("%H:%M:%S", time.localtime(at))


def _line(at: float, where: str, text: str, style: str = "") -> Text:
    """A permanent line, laid out as the log lines are ("[time] where  text")."""
    return Text(f"[{_stamp(at)}] {where:<12} {text}", style=style)


def render_rows(rows: list[Row]) -> RenderableType:
    """The live area: one line per row, columns aligned across rows, the free text last.

    Lines are laid out by hand rather than in a rich table: a table shrinks every column of a
    narrow terminal, while here only the free text is cut (with an ellipsis), never the node,
    its phase or its numbers.
    """
    if not rows:
        return Group()  # no line at all (an empty text would still take one)
    where = max(len(row.where) for row in rows)
    phase = max(len(row.phase) for row in rows)
    elapsed = max(len(row.elapsed) for row in rows)
    number = max(len(value) for row in rows for value in (row.out_mib, row.in_mib))
    swapped = any(row.out_mib or row.in_mib for row in rows)
    return Group(*(_render_row(row, (where, phase, elapsed, number), swapped) for row in rows))


def _render_row(row: Row, widths: tuple[int, int, int, int], swapped: bool) -> Text:
    where, phase, elapsed, number = widths
    line = Text(no_wrap=True, overflow="ellipsis")
    line.append(row.where.ljust(where), style="bold")
    line.append(" " + row.phase.ljust(phase), style="cyan")
    line.append(" " + row.elapsed.rjust(elapsed))
    if swapped:  # the MiB column exists once any node swaps, blank on the others
        mib = f"out {row.out_mib:>{number}} / in {row.in_mib:>{number}} MiB"
        line.append("  " + (mib if row.out_mib or row.in_mib else " " * len(mib)))
    line.append("  ")
    if row.fraction is not None:
        filled = round(row.fraction * BAR_WIDTH)
        line.append("━" * filled, style="bar.complete")
        line.append("─" * (BAR_WIDTH - filled) + " ", style="bar.back")
    line.append(row.progress, style="" if row.fraction is not None else "dim")
    return line


# -- drawing ----------------------------------------------------------------------------------
class LiveView:
    """Draws a LiveState on a terminal stream; a context manager around rich's Live.

    ``event`` and ``message`` are the sink interface ``orchestrator.watch.follow`` uses.
    """

    def __init__(
        self,
        stream: TextIO,
        lookup: RunLookup | None = None,
        *,
        console: Console | None = None,
        now: Callable[[], float] = time.time,
    ) -> None:
        self.console = console or Console(file=stream, highlight=False, emoji=False)
        self.state = LiveState()
        self.lookup = lookup
        self.now = now
        self.skipped = 0  # events that could not be shown (after the first, silently)
        # The refresh thread renders while the follow loop folds: one lock around the state.
        # Never held while printing: rich's own lock is taken inside print and refresh.
        self._lock = threading.Lock()
        self._live = Live(
            console=self.console,
            refresh_per_second=REFRESH_HZ,
            transient=True,
            redirect_stdout=False,
            get_renderable=self.render,
        )

    def __enter__(self) -> LiveView:
        self._live.start()
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        self._live.stop()
        rows = self._rows()
        if rows:  # detached or interrupted: leave the last picture on the screen
            self.console.print(render_rows(rows))

    def event(self, event: Mapping[str, Any]) -> None:
        """Fold one event in and print the permanent lines it produced."""
        try:
            lines = self._fold(event)
        except Exception as err:  # an event of any shape must not end the follow loop
            self.skipped += 1
            why = f"swaplab: an event could not be shown ({type(err).__name__}); skipping such events"
            lines = [Text(why, style="yellow")] if self.skipped == 1 else []
        for line in lines:
            # The terminal wraps a long line, not rich: it stays one line to copy or grep.
            self.console.print(line, soft_wrap=True)

    def message(self, text: str) -> None:
        """A line of the follow loop itself (Redis unreachable), printed above the live area."""
        self.console.print(Text(clean_text(text, 1000), style="yellow"), soft_wrap=True)

    def render(self) -> RenderableType:
        """The live area now (rich's refresh thread calls this at most REFRESH_HZ times a second)."""
        try:
            return render_rows(self._rows())
        except Exception as err:  # a crash in the refresh thread would freeze the view
            return Text(f"(live view: {type(err).__name__})")

    def _rows(self) -> list[Row]:
        with self._lock:
            return self.state.rows(self.now())

    def _fold(self, event: Mapping[str, Any]) -> list[Text]:
        if not isinstance(event, Mapping):
            raise TypeError(f"event is a {type(event).__name__}")
        info = self._lookup(self.state.wants_lookup(event))
        with self._lock:
            return self.state.fold(event, self.now(), info)

    def _lookup(self, rid: str | None) -> Mapping[str, Any] | None:
        """The finished run's stored hash: one read per finished run, outside the lock."""
        if rid is None or self.lookup is None:
            return None
        try:
            info = self.lookup(rid)
        except Exception:  # Redis away or a bad hash: the line goes without a verdict
            return None
        return info if isinstance(info, Mapping) else None
