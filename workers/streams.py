"""Readers for the two long-running node commands: the sampler and the workload.

Both read a raw SSH channel. The sampler streams counter ticks for the whole run (a
reader thread writes samples.jsonl as they arrive, so a node that dies mid-run still
leaves its evidence); the workload reports its start instant, progress and outcome.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from pathlib import Path

import paramiko

from model.console import EventKind, classify_line
from model.runspec import WorkloadOutcome
from workers.node_ssh import received_chunks
from workers.samples import Record, TickParser

_POLL_S = 0.2


class SamplerStream:
    """Consume ``swaplab-node sample`` output in a background thread."""

    def __init__(
        self, channel: paramiko.Channel, path: Path, on_record: Callable[[Record], None] | None = None
    ) -> None:
        self._channel = channel
        self._on_record = on_record
        self._file = path.open("a", encoding="utf-8")
        self._parser = TickParser()
        self._lock = threading.Condition()
        self._first: Record | None = None
        self._latest: Record | None = None
        self._records: list[Record] = []  # every tick, for the run's figures and plots (~1 KiB each)
        self.count = 0
        self._thread = threading.Thread(target=self._read, name=f"sampler-{path.parent.name}", daemon=True)
        self._thread.start()

    def _read(self) -> None:
        for chunk in received_chunks(self._channel):
            received_ns = time.time_ns()
            for record in self._parser.feed(chunk.decode("utf-8", errors="replace")):
                record["host_time_ns"] = received_ns
                self._add(record)

    def _add(self, record: Record) -> None:
        with self._lock:
            self._file.write(json.dumps(record) + "\n")
            self._file.flush()
            self._first = self._first or record
            self._latest = record
            self._records.append(record)
            self.count += 1
            self._lock.notify_all()
        if self._on_record is not None:
            self._on_record(record)

    def first(self) -> Record | None:
        """The first tick (taken after swapon, before the workload)."""
        with self._lock:
            return self._first

    def records(self) -> list[Record]:
        """Every tick so far, oldest first."""
        with self._lock:
            return list(self._records)

    def latest(self) -> Record | None:
        """The most recent tick."""
        with self._lock:
            return self._latest

    def last_host_time(self) -> float | None:
        """When the last tick arrived (host epoch seconds)."""
        latest = self.latest()
        return latest["host_time_ns"] / 1e9 if latest else None

    def wait_for_first(self, timeout_s: float) -> bool:
        """Wait until at least one tick arrived."""
        with self._lock:
            return self._lock.wait_for(lambda: self.count > 0, timeout_s)

    def wait_for_more(self, ticks: int, timeout_s: float) -> bool:
        """Wait for ``ticks`` more ticks (so final counters cover the whole workload)."""
        with self._lock:
            target = self.count + ticks
            return self._lock.wait_for(lambda: self.count >= target, timeout_s)

    def close(self) -> None:
        """Stop reading (idempotent); the file keeps every tick received."""
        self._channel.close()
        self._thread.join(timeout=3.0)
        with self._lock:
            if not self._file.closed:
                self._file.close()


class WorkloadStream:
    """Run ``swaplab-node hog`` to completion, watching a deadline and a stop condition."""

    def __init__(self, channel: paramiko.Channel, log: Path) -> None:
        self._channel = channel
        self._log = log.open("a", encoding="utf-8")
        self._pending = ""
        self.last_line = ""
        self.stderr = ""  # the tail of what the tool said on stderr (why it refused, say)
        self._outcome = WorkloadOutcome()

    def wait(self, deadline: float, on_tick: Callable[[], None], stop: Callable[[], bool]) -> bool:
        """Read until the command exits (True) or the deadline / stop condition hits (False)."""
        next_tick = time.monotonic()
        try:
            while True:
                self._drain()
                if self._channel.exit_status_ready() and not self._channel.recv_ready():
                    self._drain()
                    return True
                if time.monotonic() > deadline or stop():
                    return False
                if time.monotonic() >= next_tick:
                    on_tick()
                    next_tick = time.monotonic() + 1.0
                time.sleep(_POLL_S)
        finally:
            self._log.close()

    def _drain(self) -> None:
        while self._channel.recv_ready():
            self._pending += self._channel.recv(65536).decode("utf-8", errors="replace")
        while self._channel.recv_stderr_ready():
            text = self._channel.recv_stderr(65536).decode("utf-8", errors="replace")
            self.stderr = (self.stderr + text)[-2000:]
            self._log.write("stderr: " + text)
        *lines, self._pending = self._pending.split("\n")
        for line in lines:
            self._log.write(line + "\n")
            parse_workload_line(line, self._outcome)
            self.last_line = line.strip() or self.last_line
        self._log.flush()

    def outcome(self, start_at_host_ns: int, clock_offset_ns: int) -> WorkloadOutcome:
        """What the workload reported, with its start translated to host time."""
        outcome = self._outcome.model_copy()
        outcome.start_at_host_ns = start_at_host_ns
        outcome.last_line = self.last_line
        if self._channel.exit_status_ready():
            outcome.exit_status = self._channel.recv_exit_status()
        if outcome.started_node_ns is not None:
            outcome.started_host_ns = outcome.started_node_ns - clock_offset_ns
        return outcome


class ConsoleTail:
    """Follow a growing console log: the events of the lines added since the last call."""

    def __init__(self, path: Path) -> None:
        self._path = path
        self._offset = 0
        self._pending = ""
        self._lock = threading.Lock()

    def new_events(self, final: bool = False) -> list[EventKind]:
        """Kinds of the complete new lines (and the last partial one when ``final``)."""
        with self._lock:
            try:
                with self._path.open("rb") as console:
                    console.seek(self._offset)
                    chunk = console.read()
            except OSError:
                return []
            self._offset += len(chunk)
            self._pending += chunk.decode("utf-8", errors="replace")
            *lines, self._pending = self._pending.split("\n")
            if final:
                lines, self._pending = [*lines, self._pending], ""
            return [kind for line in lines if (kind := classify_line(line)) is not None]


def workload_progress(line: str, mib: int, passes: int) -> float | None:
    """Fraction done from a ``progress <write|verify> <pass> <MiB>`` line (None otherwise)."""
    words = line.split()
    if len(words) != 4 or words[0] != "progress" or not (words[2].isdigit() and words[3].isdigit()):
        return None
    steps_before = (int(words[2]) - 1) * 2 + (1 if words[1] == "verify" else 0)
    return min(1.0, (steps_before * mib + int(words[3])) / (2 * mib * passes))


def parse_workload_line(line: str, outcome: WorkloadOutcome) -> None:
    """Fold one line of ``swaplab-node hog`` output into ``outcome``."""
    words = line.split()
    if not words:
        return
    if words[0] == "started" and len(words) == 2 and words[1].isdigit():
        outcome.started_node_ns = int(words[1])
    elif words[0] == "corrupt":
        outcome.corrupt.append(line.strip())
    elif words[0] == "done":
        fields = dict(word.split("=", 1) for word in words[1:] if "=" in word)
        outcome.done = True
        outcome.pages = int(fields.get("pages", 0))
        outcome.bad_pages = int(fields.get("bad", 0))
        outcome.elapsed_s = int(fields.get("elapsed_ns", 0)) / 1e9
