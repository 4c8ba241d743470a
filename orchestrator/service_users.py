"""Which swaplab commands use a local service, so the last one to leave stops it.

``swaplab run`` and ``swaplab check`` start the embedded redis-server and Prometheus when
they are not running and stop them at their end. Two commands may overlap, and a command
may die (SIGKILL, a lost terminal) and leave a service running. Each command using a
service leaves a file named after its pid in the service's ``users/`` directory, holding
the process' start time (a recycled pid is no user). A service whose users are all gone
was left behind: the next command adopts it and stops it at its end, as if it had started
it; while another live command uses it, it stays up.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
from collections.abc import Iterator
from pathlib import Path

from workers.process import start_ticks


class ServiceUsers:
    """The live commands using one service (files in ``<service dir>/users``)."""

    def __init__(self, service_dir: Path) -> None:
        self.dir = service_dir / "users"
        self._lock_file = service_dir / "users.lock"

    @contextlib.contextmanager
    def locked(self) -> Iterator[None]:
        """Exclusive across commands: joining, leaving and stopping happen one at a time."""
        self.dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        fd = os.open(self._lock_file, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)

    def add(self, pid: int | None = None) -> None:
        """Register ``pid`` (default: this process) as a user."""
        pid = pid or os.getpid()
        self.dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        (self.dir / str(pid)).write_text(f"{start_ticks(pid)}\n")

    def remove(self, pid: int | None = None) -> None:
        (self.dir / str(pid or os.getpid())).unlink(missing_ok=True)

    def live(self, excluding: int | None = None) -> list[int]:
        """The users still running (files of dead ones are removed on the way)."""
        alive = []
        for entry in self.dir.iterdir() if self.dir.is_dir() else []:
            pid = int(entry.name) if entry.name.isdigit() else None
            if pid is not None and self._is_user(pid, entry):
                if pid != excluding:
                    alive.append(pid)
            else:
                entry.unlink(missing_ok=True)
        return sorted(alive)

    @staticmethod
    def _is_user(pid: int, entry: Path) -> bool:
        try:
            recorded = entry.read_text().strip()
        except OSError:
            return False
        return recorded == str(start_ticks(pid))
