"""Console-log events: what the kernel under test said on its serial console.

Pure parsing of the text QEMU (or a serial server) captured; the verdict rules decide
what each kind of event means.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from enum import StrEnum

# What a run keeps of its console events (node-result.json, Redis, result.json): the first
# EVENTS_PER_KIND of each kind, so a flood of one kind never hides the first of another,
# and the count of every kind.
EVENTS_PER_KIND = 20
EVENT_TEXT_MAX = 1000  # characters of an event's line kept


class EventKind(StrEnum):
    """Kinds of console events swaplab looks for."""

    PANIC = "panic"
    OOPS = "oops"
    HUNG_TASK = "hung_task"
    OOM_KILL = "oom_kill"
    SWAP_WRITE_ERROR = "swap_write_error"
    SWAP_ACTIVATE_ERROR = "swap_activate_error"
    NFS_NOT_RESPONDING = "nfs_not_responding"
    NFS_OK = "nfs_ok"
    # The allocator refused an allocation (often atomic, in the network path): reported, not
    # a failure by itself — what it led to (a swap write error, a hang) is.
    PAGE_ALLOCATION_FAILURE = "page_allocation_failure"


# Order matters only for readability; each line yields at most one event (first match).
_PATTERNS: list[tuple[EventKind, re.Pattern[str]]] = [
    (EventKind.PANIC, re.compile(r"Kernel panic - not syncing")),
    (
        EventKind.OOPS,
        re.compile(r"\bOops: |\bBUG: |general protection fault|kernel BUG at|Unable to handle kernel"),
    ),
    (EventKind.HUNG_TASK, re.compile(r"INFO: task \S+ blocked for more than \d+ seconds")),
    (EventKind.OOM_KILL, re.compile(r"Out of memory: Kill(ed)? process|Memory cgroup out of memory")),
    (
        EventKind.SWAP_WRITE_ERROR,
        re.compile(r"Write error \S* on dio swapfile|Write-error on swap-device|Read-error on swap-device"),
    ),
    (EventKind.SWAP_ACTIVATE_ERROR, re.compile(r"swap activate: |swapon: swapfile has holes")),
    (EventKind.NFS_NOT_RESPONDING, re.compile(r"nfs: server \S+ not responding")),
    (EventKind.NFS_OK, re.compile(r"nfs: server \S+ OK")),
    (EventKind.PAGE_ALLOCATION_FAILURE, re.compile(r"page allocation failure: order:\d+")),
]

# Every match of a pattern above holds one of these: most console text has no event, and
# looking for a few words in a whole chunk costs far less than eight searches per line.
_EVENT_WORDS = (
    b"Kernel panic",
    b"Oops: ",
    b"BUG",
    b"general protection fault",
    b"Unable to handle kernel",
    b"blocked for more than",
    b"Out of memory: Kill",
    b"Memory cgroup out of memory",
    b"Write error ",
    b"-error on swap-device",
    b"swap activate: ",
    b"swapon: swapfile has holes",
    b"nfs: server ",
    b"page allocation failure",
)

# Kernel health events: any one of these on the console fails the run.
KERNEL_FAILURE_KINDS = frozenset(
    {
        EventKind.PANIC,
        EventKind.OOPS,
        EventKind.HUNG_TASK,
        EventKind.OOM_KILL,
        EventKind.SWAP_WRITE_ERROR,
        EventKind.SWAP_ACTIVATE_ERROR,
    }
)

_PRINTK_TIME = re.compile(r"^\[\s*(\d+\.\d+)\]")


@dataclass(frozen=True)
class ConsoleEvent:
    """One matched console line: its kind, 1-based line number, kernel time, text."""

    kind: EventKind
    line: int
    kernel_time_s: float | None
    text: str
    # When the worker read the line (host epoch s; None when parsed from a file later):
    # what places an event inside or outside a fault's window.
    host_time_s: float | None = None

    def to_json(self) -> dict[str, object]:
        """JSON-able form for result files."""
        return asdict(self)


def classify_line(text: str) -> EventKind | None:
    """The event kind of one console line, or None."""
    for kind, pattern in _PATTERNS:
        if pattern.search(text):
            return kind
    return None


def may_hold_events(data: bytes) -> bool:
    """False only when no line of ``data`` (UTF-8 console text) can be an event."""
    return any(word in data for word in _EVENT_WORDS)


def event_of_line(number: int, raw: str, host_time_s: float | None = None) -> ConsoleEvent | None:
    """The event of console line ``number`` (1-based), or None; its text at most EVENT_TEXT_MAX."""
    line = raw.rstrip("\r")
    kind = classify_line(line)
    if kind is None:
        return None
    stamp = _PRINTK_TIME.match(line)
    kernel_time = float(stamp.group(1)) if stamp else None
    return ConsoleEvent(kind, number, kernel_time, line.strip()[:EVENT_TEXT_MAX], host_time_s)


def parse_console(text: str) -> list[ConsoleEvent]:
    """Every event in a console log, in order."""
    numbered = enumerate(text.splitlines(), start=1)
    return [event for number, raw in numbered if (event := event_of_line(number, raw)) is not None]


@dataclass
class EventTally:
    """A run's console events as kept: the first ``per_kind`` of each kind, in order, and
    how many of each kind there were."""

    per_kind: int = EVENTS_PER_KIND
    kept: list[ConsoleEvent] = field(default_factory=list)
    counts: dict[EventKind, int] = field(default_factory=dict)

    @classmethod
    def of(cls, events: Iterable[ConsoleEvent], per_kind: int = EVENTS_PER_KIND) -> EventTally:
        tally = cls(per_kind)
        for event in events:
            tally.add(event)
        return tally

    def add(self, event: ConsoleEvent) -> bool:
        """Count ``event``; True when it is kept."""
        seen = self.counts[event.kind] = self.counts.get(event.kind, 0) + 1
        if seen > self.per_kind:
            return False
        self.kept.append(event)
        return True

    def add_line(self, number: int, raw: str, host_time_s: float | None = None) -> bool:
        """Count the event of console line ``number``, if it is one; True when it is kept."""
        kind = classify_line(raw)
        if kind is None:
            return False
        if self.counts.get(kind, 0) >= self.per_kind:  # only counted: no event made
            self.counts[kind] += 1
            return False
        event = event_of_line(number, raw, host_time_s)
        return event is not None and self.add(event)

    @property
    def dropped(self) -> int:
        """Events counted but not kept."""
        return sum(self.counts.values()) - len(self.kept)

    def count_json(self) -> dict[str, int]:
        """Counts per kind, every kind present (zero when absent)."""
        return {kind.value: self.counts.get(kind, 0) for kind in EventKind}

    def copy(self) -> EventTally:
        return EventTally(self.per_kind, list(self.kept), dict(self.counts))


def count_by_kind(events: list[ConsoleEvent]) -> dict[str, int]:
    """Event counts per kind (every kind present, zero when absent)."""
    counts = {kind.value: 0 for kind in EventKind}
    for event in events:
        counts[event.kind.value] += 1
    return counts


def last_kernel_time(text: str) -> float | None:
    """The printk time of the last stamped console line: when the kernel last spoke."""
    last = None
    for line in text.splitlines():
        stamp = _PRINTK_TIME.match(line)
        if stamp:
            last = float(stamp.group(1))
    return last
