"""Looking at host processes through /proc: the lab's daemons (QEMU, ganesha) are found
again from pid files, and a pid is only trusted when its command line says it is ours."""

from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path


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
    for good, where a pid alone may be recycled. None when it is gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return int(stat.rsplit(")", 1)[1].split()[19])


def owner_uid(pid: int) -> int | None:
    """The real uid ``pid`` runs as (None when it is gone)."""
    try:
        return os.stat(f"/proc/{pid}").st_uid
    except OSError:
        return None
