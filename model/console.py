"""Console-log events: what the kernel under test said on its serial console.

Pure parsing of the text QEMU (or a serial server) captured; the verdict rules decide
what each kind of event means.
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass
from enum import StrEnum


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
]

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

    def to_json(self) -> dict[str, object]:
        """JSON-able form for result files."""
        return asdict(self)


def classify_line(text: str) -> EventKind | None:
    """The event kind of one console line, or None."""
    for kind, pattern in _PATTERNS:
        if pattern.search(text):
            return kind
    return None


def parse_console(text: str) -> list[ConsoleEvent]:
    """Every event in a console log, in order."""
    events = []
    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.rstrip("\r")
        kind = classify_line(line)
        if kind is None:
            continue
        stamp = _PRINTK_TIME.match(line)
        events.append(ConsoleEvent(kind, number, float(stamp.group(1)) if stamp else None, line.strip()))
    return events


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
