"""Collaborators a node session is given: progress reporting, a run barrier, a cancel check.

The node session never knows whether it runs in the CLI's own process or in a Celery
worker: it talks to these small protocols. This module holds the local (in-process,
thread-based) implementations; distributed ones live beside the Celery app.
"""

from __future__ import annotations

import sys
import threading
import time
from typing import Protocol, TextIO


class BarrierBroken(RuntimeError):
    """Another node of the run failed before the barrier; this node must stop."""


class Progress(Protocol):
    """Where a node session reports what it is doing."""

    def phase(self, node: str, phase: str, detail: str = "") -> None:
        """The node entered ``phase`` (kernel, image, nfs, boot, mount, workload ...)."""

    def swap(self, node: str, out_mib: float, in_mib: float, note: str = "") -> None:
        """MiB swapped out/in over NFS since the workload started (about once a second)."""


class Barrier(Protocol):
    """All nodes of a run meet here after swapon, then start at one instant."""

    def arrive_and_wait(self, node: str, timeout_s: float) -> int:
        """Wait for every node; return the common start instant (host CLOCK_REALTIME ns)."""

    def abort(self, node: str, reason: str) -> None:
        """Break the barrier: every node waiting (or arriving later) gets BarrierBroken."""

    def broken(self) -> str | None:
        """Why the barrier was broken, or None: nodes still booting stop early on it."""


class CancelCheck(Protocol):
    """Asked between steps and while waiting: has someone cancelled this run?"""

    def __call__(self) -> bool: ...


class StderrProgress:
    """Human progress lines on stderr; swap lines at most every ``swap_every_s``."""

    def __init__(self, stream: TextIO | None = None, swap_every_s: float = 5.0) -> None:
        self._stream = stream or sys.stderr
        self._start = time.monotonic()
        self._swap_every_s = swap_every_s
        self._last_swap: dict[str, float] = {}
        self._lock = threading.Lock()

    def _print(self, node: str, phase: str, text: str) -> None:
        with self._lock:
            elapsed = time.monotonic() - self._start
            print(f"[{elapsed:7.1f}s] {node:<8} {phase:<9} {text}", file=self._stream, flush=True)

    def phase(self, node: str, phase: str, detail: str = "") -> None:
        self._print(node, phase, detail)

    def swap(self, node: str, out_mib: float, in_mib: float, note: str = "") -> None:
        now = time.monotonic()
        if now - self._last_swap.get(node, 0.0) < self._swap_every_s:
            return
        self._last_swap[node] = now
        self._print(node, "workload", f"swapped out {out_mib:7.1f} MiB, in {in_mib:7.1f} MiB {note}".rstrip())


class LocalBarrier:
    """A thread barrier for the nodes of one run in one process.

    When the last node arrives, the start instant is set ``lead_s`` ahead so every node
    has time to hand it to its guest before it comes.
    """

    def __init__(self, parties: int, lead_s: float = 1.0) -> None:
        self._parties = parties
        self._lead_ns = int(lead_s * 1e9)
        self._arrived: set[str] = set()
        self._start_at: int | None = None
        self._broken: str | None = None
        self._cond = threading.Condition()

    def arrive_and_wait(self, node: str, timeout_s: float) -> int:
        with self._cond:
            self._arrived.add(node)  # a set: arriving twice counts once
            if len(self._arrived) >= self._parties and self._start_at is None:
                self._start_at = time.time_ns() + self._lead_ns
                self._cond.notify_all()
            ready = self._cond.wait_for(lambda: self._start_at is not None or self._broken is not None, timeout_s)
            if self._broken is not None:
                raise BarrierBroken(self._broken)
            if not ready or self._start_at is None:
                raise BarrierBroken(f"barrier timed out after {timeout_s:.0f} s")
            return self._start_at

    def broken(self) -> str | None:
        with self._cond:
            return self._broken

    def abort(self, node: str, reason: str) -> None:
        with self._cond:
            if self._broken is None and self._start_at is None:
                self._broken = f"{node}: {reason}"
            self._cond.notify_all()


class EventCancel:
    """Cancel check backed by a threading.Event (set by the CLI on Ctrl-C)."""

    def __init__(self) -> None:
        self.event = threading.Event()

    def __call__(self) -> bool:
        return self.event.is_set()
