"""Readers for the two long-running node commands: the sampler and the workload.

Both read a raw SSH channel. The sampler streams counter ticks for the whole run (a
reader thread writes samples.jsonl as they arrive, so a node that dies mid-run still
leaves its evidence); the workload reports its start instant, progress and outcome.

What a node sends is bounded here: lines are cut at ``MAX_LINE_BYTES``
(``workers.lines``), the sampler takes at most ``TICKS_PER_S`` ticks a second (bursts of
``TICK_BURST`` after a stall) and keeps at most ``MAX_TICKS_KEPT`` in memory (thinned, the
first and the last always kept), the workload is read ``DRAIN_BYTES`` at a time and its
log kept under a cap (head and tail). The sampler's reader thread blocks in ``recv``:
closing the channel ends it, and the workload step watches the node's liveness meanwhile.
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path

import paramiko

from model.console import EventKind, classify_line
from model.runspec import WorkloadOutcome
from workers.console_log import BoundedLog, ConsoleLog
from workers.lines import MAX_LINE_BYTES, LineCutter, text_of
from workers.node_ssh import received_chunks
from workers.samples import Record, TickParser

log = logging.getLogger(__name__)

_POLL_S = 0.2
MIB = 1024 * 1024
TICKS_PER_S = 2.0  # the node ticks at 1 Hz
TICK_BURST = 60  # ticks a stalled link may deliver at once
MAX_TICKS_KEPT = 10_000  # ~2 KiB each; plots take 600 points, figures the window's two ends
DRAIN_BYTES = 1 * MIB  # of workload output per poll
WORKLOAD_LOG_HEAD = WORKLOAD_LOG_TAIL = 1 * MIB
STDERR_KEPT = 2000  # characters of the workload's stderr kept for the reason of a refusal
MAX_CORRUPT_LINES = 20  # the tool prints at most 10; the count is in its `done` line
LAST_LINE_CHARS = 500
FOLLOW_BYTES = 1 * MIB  # of a console file nobody here writes, per call


class SamplerStream:
    """Consume ``swaplab-node sample`` output in a background thread."""

    def __init__(
        self, channel: paramiko.Channel, path: Path, on_record: Callable[[Record], None] | None = None
    ) -> None:
        self._channel = channel
        self._on_record = on_record
        self._file = path.open("a", encoding="utf-8")
        self._parser = TickParser()
        self._rate = _TokenBucket(TICK_BURST, TICKS_PER_S)
        self._lock = threading.Condition()
        self._first: Record | None = None
        self._latest: Record | None = None
        self._records: list[Record] = []  # the ticks for the run's figures and plots (~2 KiB each)
        self.count = 0
        self.refused = 0  # ticks over the rate
        self.received = 0  # bytes the node sent
        self._thread = threading.Thread(target=self._read, name=f"sampler-{path.parent.name}", daemon=True)
        self._thread.start()

    @property
    def malformed(self) -> int:
        """Ticks dropped as malformed (too long, garbled)."""
        return self._parser.dropped

    def _read(self) -> None:
        for chunk in received_chunks(self._channel):
            received_ns = time.time_ns()
            self.received += len(chunk)
            for record in self._parser.feed(chunk):
                if not self._rate.take(time.monotonic()):
                    self._refuse()
                    continue
                record["host_time_ns"] = received_ns
                self._add(record)

    def _refuse(self) -> None:
        self.refused += 1
        if self.refused == 1:
            log.warning(
                "%s: the node sends ticks faster than %g/s; the extra ones are dropped", self._file.name, TICKS_PER_S
            )

    def _add(self, record: Record) -> None:
        with self._lock:
            self._file.write(json.dumps(record) + "\n")
            self._file.flush()
            self._first = self._first or record
            self._latest = record
            self._records.append(record)
            if len(self._records) > MAX_TICKS_KEPT:
                self._records = _thinned(self._records)
            self.count += 1
            self._lock.notify_all()
        if self._on_record is not None:
            self._on_record(record)

    def first(self) -> Record | None:
        """The first tick (taken after swapon, before the workload)."""
        with self._lock:
            return self._first

    def records(self) -> list[Record]:
        """The ticks so far, oldest first: every one, or every 2nd, 4th ... of the older ones
        once more than MAX_TICKS_KEPT came (the first and the latest always)."""
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
        # Its lines come cut already (and marked): the log must not cut them again.
        self._log = BoundedLog(log, WORKLOAD_LOG_HEAD, WORKLOAD_LOG_TAIL, max_line=2 * MAX_LINE_BYTES)
        self._lines = LineCutter()
        self._more = False  # the last drain stopped at its budget
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
                if not self._more:  # after a full drain, read on at once (the checks above still ran)
                    time.sleep(_POLL_S)
        finally:
            self._log.close()

    def _drain(self) -> None:
        """What the tool said since the last poll, at most DRAIN_BYTES of each stream."""
        self._more = False
        for data in self._received(self._channel.recv_ready, lambda size: self._channel.recv(size)):
            _, lines = self._lines.feed(data)
            for raw in lines:
                self._log.write(raw + b"\n")
                line = text_of(raw)
                parse_workload_line(line, self._outcome)
                self._stamp_seen()
                self.last_line = line.strip()[:LAST_LINE_CHARS] or self.last_line
        for data in self._received(self._channel.recv_stderr_ready, lambda size: self._channel.recv_stderr(size)):
            self.stderr = (self.stderr + data.decode("utf-8", errors="replace"))[-STDERR_KEPT:]
            self._log.write(b"stderr: " + data)

    def _stamp_seen(self) -> None:
        """The host time the workload's start and end lines were read, once each."""
        outcome = self._outcome
        if outcome.started_node_ns is not None and outcome.started_seen_host_ns is None:
            outcome.started_seen_host_ns = time.time_ns()
        if outcome.done and outcome.done_seen_host_ns is None:
            outcome.done_seen_host_ns = time.time_ns()

    def _received(self, ready: Callable[[], bool], recv: Callable[[int], bytes]) -> Iterator[bytes]:
        """Chunks ready now, DRAIN_BYTES at most (then ``_more``: read on after the checks)."""
        budget = DRAIN_BYTES
        while ready():
            if budget <= 0:
                self._more = True
                return
            data = recv(min(65536, budget))
            if not data:
                return
            budget -= len(data)
            yield data

    def outcome(self, start_at_host_ns: int, clock_offset_ns: int, guest_clock: bool = False) -> WorkloadOutcome:
        """What the workload reported, with its start in host time: translated by the clock
        offset, or on guest time (a node clock of its own pace) when the worker saw it."""
        outcome = self._outcome.model_copy()
        outcome.start_at_host_ns = start_at_host_ns
        outcome.last_line = self.last_line
        if self._channel.exit_status_ready():
            outcome.exit_status = self._channel.recv_exit_status()
        if guest_clock:
            outcome.started_host_ns = outcome.started_seen_host_ns
        elif outcome.started_node_ns is not None:
            outcome.started_host_ns = outcome.started_node_ns - clock_offset_ns
        return outcome


class ConsoleTail:
    """The live event counter: the events of the console lines added since the last call.

    While this process writes the console (a ``ConsoleLog``), the counts are that writer's:
    every line, the ones left out of the capped file too. A console file nobody here writes
    is followed by offset, at most FOLLOW_BYTES a call, its lines cut at MAX_LINE_BYTES.
    """

    def __init__(self, path: Path) -> None:
        self._path = path
        self._offset = 0
        self._lines = LineCutter()
        self._lock = threading.Lock()
        self._log: ConsoleLog | None = None
        self._seen: dict[EventKind, int] = {}

    def new_counts(self, final: bool = False) -> dict[EventKind, int]:
        """How many new events of each kind (only kinds that have some)."""
        with self._lock:
            self._log = self._log or ConsoleLog.find(self._path)
            if self._log is None:
                return dict(Counter(self._follow(final)))
            now = self._log.counts()
            new = {
                kind: count - self._seen.get(kind, 0) for kind, count in now.items() if count > self._seen.get(kind, 0)
            }
            self._seen = now
            return new

    def new_events(self, final: bool = False) -> list[EventKind]:
        """Kinds of the complete new lines (and the last partial one when ``final``)."""
        return [kind for kind, count in self.new_counts(final).items() for _ in range(count)]

    def _follow(self, final: bool) -> list[EventKind]:
        try:
            fd = os.open(self._path, os.O_RDONLY | os.O_NONBLOCK | os.O_NOFOLLOW | os.O_CLOEXEC)
        except OSError:
            return []
        with os.fdopen(fd, "rb") as console:
            if os.fstat(fd).st_size < self._offset:  # a new file: start over
                self._offset, self._lines = 0, LineCutter()
            console.seek(self._offset)
            chunk = console.read(FOLLOW_BYTES)
        self._offset += len(chunk)
        _, lines = self._lines.feed(chunk)
        if final:
            _, last = self._lines.flush()
            lines += [last] if last is not None else []
        return [kind for line in lines if (kind := classify_line(text_of(line))) is not None]


def workload_progress(line: str, mib: int, passes: int) -> float | None:
    """Fraction done from a ``progress <write|verify> <pass> <MiB>`` line (None otherwise)."""
    words = line.split()
    if len(words) != 4 or words[0] != "progress" or not (words[2].isdigit() and words[3].isdigit()):
        return None
    steps_before = (int(words[2]) - 1) * 2 + (1 if words[1] == "verify" else 0)
    return min(1.0, (steps_before * mib + int(words[3])) / (2 * mib * passes))


def parse_workload_line(line: str, outcome: WorkloadOutcome) -> None:
    """Fold one line of ``swaplab-node hog`` output into ``outcome`` (at most
    MAX_CORRUPT_LINES ``corrupt`` lines kept; a ``done`` line with a garbled number is
    no ``done``)."""
    words = line.split()
    if not words:
        return
    if words[0] == "started" and len(words) == 2 and words[1].isdigit():
        outcome.started_node_ns = int(words[1])
    elif words[0] == "corrupt":
        if len(outcome.corrupt) < MAX_CORRUPT_LINES:
            outcome.corrupt.append(line.strip()[:LAST_LINE_CHARS])
    elif words[0] == "done":
        fields = dict(word.split("=", 1) for word in words[1:] if "=" in word)
        numbers = [fields.get(name, "0") for name in ("pages", "bad", "elapsed_ns")]
        if not all(number.isdigit() and len(number) <= 20 for number in numbers):
            return  # garbled: never a verdict on the pages (the workload counts as unfinished)
        outcome.done = True
        outcome.pages, outcome.bad_pages, elapsed_ns = (int(number) for number in numbers)
        outcome.elapsed_s = elapsed_ns / 1e9


def _thinned(records: list[Record]) -> list[Record]:
    """Every other record, the first and the last kept."""
    kept = records[:-1:2]
    return [*kept, records[-1]]


class _TokenBucket:
    """At most ``rate`` events a second on average, ``burst`` at once."""

    def __init__(self, burst: float, rate: float) -> None:
        self._burst, self._rate = burst, rate
        self._tokens, self._at = burst, time.monotonic()

    def take(self, now: float) -> bool:
        self._tokens = min(self._burst, self._tokens + (now - self._at) * self._rate)
        self._at = now
        if self._tokens < 1:
            return False
        self._tokens -= 1
        return True
