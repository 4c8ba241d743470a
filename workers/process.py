"""Looking at host processes through /proc: the lab's daemons (QEMU, ganesha) are found
again from pid files, and a pid is only trusted when its command line says it is ours."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
from pathlib import Path

_KILL_WAIT_S = 5.0  # after SIGKILL, only a process stuck in the kernel is still there


def pid_alive(pid: int) -> bool:
    """True when ``pid`` exists and is not a zombie (a reaped-late daemon is dead)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    # The state follows the parenthesised command name, which may contain spaces.
    return stat.rsplit(")", 1)[1].split()[0] not in ("Z", "X")


def wait_gone(pid: int, timeout: float, child: subprocess.Popen[bytes] | None = None, poll_s: float = 0.05) -> bool:
    """Whether ``pid`` is gone within ``timeout`` s. When it is ``child`` (our own), it is
    reaped: a child of ours stays a zombie until then, and pid_alive would never say so."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if child is not None and child.pid == pid:
            if child.poll() is not None:
                return True
        elif not pid_alive(pid):
            return True
        time.sleep(poll_s)
    return False


def cmdline(pid: int) -> list[str]:
    """The argv of ``pid`` ([] when it is gone)."""
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return []
    return [os.fsdecode(arg) for arg in raw.split(b"\0") if arg]


def start_ticks(pid: int) -> int | None:
    """When ``pid`` started (clock ticks after boot): with the pid, it names one process
    for good, where a pid alone may be recycled. None when it is gone: a zombie whose
    threads have all exited (the leader of a multi-threaded process is a zombie before its
    other threads have closed the files they share, its listening sockets among them)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat.rsplit(")", 1)[1].split()
    if fields[0] == "Z" and len(_tasks(pid)) <= 1:
        return None
    return int(fields[19])  # state, ..., starttime (field 22)


def _tasks(pid: int) -> list[str]:
    try:
        return os.listdir(f"/proc/{pid}/task")
    except OSError:
        return []


def record_pid(path: Path, pid: int) -> None:
    """Record ``pid`` with its start time in ``path``, for ``recorded_pid``."""
    path.write_text(f"{pid} {start_ticks(pid) or 0}\n")


def recorded_pid(path: Path) -> int | None:
    """The process ``path`` records while it runs (None: no record, gone, or its pid recycled)."""
    try:
        pid_text, started = path.read_text().split()
        pid, start = int(pid_text), int(started)
    except (OSError, ValueError):
        return None
    return pid if start_ticks(pid) == start else None


def stop_recorded_pid(path: Path, sig: signal.Signals, wait_s: float) -> bool:
    """Signal the process ``path`` records, wait (at most ``wait_s``) until it is gone, then
    kill it if it is not, and drop the record; whether it ran. A stopper that gave up after
    ``wait_s`` would report a process stopped that still holds its ports."""
    pid = recorded_pid(path)
    if pid is not None:
        for signum, wait in ((sig, wait_s), (signal.SIGKILL, _KILL_WAIT_S)):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signum)
            if _gone_within(pid, wait):
                break
    path.unlink(missing_ok=True)
    return pid is not None


def _gone_within(pid: int, wait_s: float) -> bool:
    deadline = time.monotonic() + wait_s
    while start_ticks(pid) is not None:
        if time.monotonic() >= deadline:
            return False
        with contextlib.suppress(ChildProcessError):  # reap it if this process started it
            os.waitpid(pid, os.WNOHANG)
        time.sleep(0.05)
    return True


def owner_uid(pid: int) -> int | None:
    """The real uid ``pid`` runs as (None when it is gone)."""
    try:
        return os.stat(f"/proc/{pid}").st_uid
    except OSError:
        return None
