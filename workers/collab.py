"""Collaborators a node session is given: progress reporting, a run barrier, a cancel check.

The node session never knows it runs inside a Celery worker: it talks to these small
protocols, implemented over Redis beside the Celery app (workers.tasks,
workers.coordination.barrier) and by plain fakes in tests.
"""

from __future__ import annotations

from typing import Protocol

from model.faults import FaultTimes


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

    def note_fault(self, index: int, times: FaultTimes) -> bool:
        """Tell the run's other nodes when the run's fault ``index`` (0-based) began and
        ended; False when it could not (the caller retries)."""

    def fault_times(self) -> dict[int, FaultTimes]:
        """What the injecting sessions told of the run's faults so far, by index."""


class CancelCheck(Protocol):
    """Asked between steps and while waiting: has someone cancelled this run?"""

    def __call__(self) -> bool: ...
