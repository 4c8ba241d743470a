"""The NFS server protocol: one long-lived server per lab, shared by concurrent runs.

A run only adds and removes its own swap files; it never restarts a server that other
runs may be swapping on.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
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

    def ensure_serving(self) -> None:
        """Start the server if it is not already up, and wait until it serves."""

    def is_serving(self) -> bool:
        """True when the server process is alive and accepts connections."""

    def where(self) -> str:
        """What and where the server is, for people (e.g. "nfs-ganesha on 127.0.0.1:12049")."""

    def export(self) -> NfsExport:
        """Where nodes mount from."""

    def create_swap_file(self, name: str, size_mib: int) -> Path:
        """Create a fully allocated, mkswap'ed swap file ``name`` in the export; host path."""

    def remove_swap_file(self, name: str) -> None:
        """Remove one swap file (idempotent)."""

    def swap_file_path(self, name: str) -> Path:
        """Host path of swap file ``name`` (to inspect what the node wrote)."""

    def log_path(self) -> Path:
        """The server's log file, kept for the run's result directory."""

    def stop(self) -> None:
        """Stop the server cleanly (idempotent)."""
