"""The NFS server protocol: one long-lived server per lab, shared by concurrent runs.

A run only adds and removes its own swap files; it never restarts a server that other
runs may be swapping on. The protocol is operations with evidence, never host paths: a
server may be a daemon on this host (ganesha) or another machine reached over SSH. Each node has an export of its own that admits that node alone;
what a node leaves there is its own doing (it is root there), so the host inspects and
removes swap files without following links and reads them only within their size.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol


class NfsServerError(RuntimeError):
    """The lab's NFS server could not be started or does not serve: an infra-error."""


@dataclass(frozen=True)
class NfsExport:
    """How a node reaches the export: server address as the node sees it, port, path."""

    server: str
    port: int
    path: str


class NfsServer(Protocol):
    """Control of one lab's NFS server."""

    def ensure_serving(self, progress: Callable[[str], None] = ...) -> None:
        """Start the server if it is not already up, and wait until it serves (long work
        says what it does through ``progress``)."""

    def is_serving(self) -> bool:
        """True when the server process is alive and accepts connections."""

    def where(self) -> str:
        """What and where the server is, for people (e.g. "nfs-ganesha on 127.0.0.1:12049")."""

    def export(self) -> NfsExport:
        """The root of the lab's exports, as nodes address the server (for people)."""

    def node_export(self, node: str) -> NfsExport:
        """Where ``node`` mounts its own export from."""

    def data_path(self, node: str) -> str:
        """How ``node``'s NFS traffic reaches the server, in words for its result."""

    def describe_server(self, node: str) -> dict[str, str]:
        """Which server serves ``node``: backend, address, kernel, export and its options."""

    def create_swap_file(self, node: str, name: str, size_mib: int) -> str:
        """Create a fully allocated, mkswap'ed swap file ``name`` in ``node``'s export; where it is, for people."""

    def written_pages(self, node: str, name: str, size_mib: int) -> int | None:
        """Pages the node wrote to its swap file (None: gone); NfsServerError if it is no longer a plain file."""

    def remove_swap_file(self, node: str, name: str) -> None:
        """Remove one swap file, never following what the node made of it (idempotent)."""

    def log_end(self) -> int:
        """Where the server's log ends now: the offset a run reads its part of the log from."""

    def read_log(self, offset: int, limit: int) -> bytes:
        """The server's log from ``offset`` to its end, at most the last ``limit`` bytes of it."""

    def describe_log(self) -> str:
        """Where the server's log is, for people (a file, a journal on a host)."""

    def stop(self) -> None:
        """Stop the server cleanly (idempotent)."""

    def stop_for_restart(self) -> None:
        """Stop serving as a restart fault does: the server's state on disk is kept, so its
        clients can reclaim their state when it starts again."""

    def start_after_restart(self) -> None:
        """Serve again after ``stop_for_restart``, in a grace period in which clients reclaim
        their open files; returns once the server serves."""

    def delay_to(self, address: str, ms: float) -> None:
        """Delay what the server sends to ``address`` by ``ms`` (a latency fault); NfsServerError
        when this server cannot."""

    def undelay_to(self, address: str) -> None:
        """End ``delay_to(address)`` (idempotent)."""

    def serving_pid(self) -> int | None:
        """The process on this host whose stop stalls the whole server (a server fault
        pauses it); None when the server is not a process here."""
