"""Who listens on a local TCP port, from /proc: a service is believed only once its
listening socket is proven to belong to the process swaplab started.

Any user of the host may bind a free port on 127.0.0.1 first. A program that answers
``/-/ready`` on Prometheus' port would otherwise be taken for it, and every criterion
judged by its answers. The kernel says who owns each listening socket
(``/proc/net/tcp{,6}``: uid and inode) and ``/proc/<pid>/fd`` which processes hold it.
"""

from __future__ import annotations

import os
import pwd
from dataclasses import dataclass
from pathlib import Path

from workers.process import cmdline, owner_uid, pid_alive

_LISTEN = "0A"
# Local addresses at which a connection to 127.0.0.1 can arrive, as /proc/net shows them.
_TCP4_LOOPBACK = {"0100007F", "00000000"}
_TCP6_LOOPBACK = {"0" * 32, "0000000000000000FFFF00000100007F"}


@dataclass(frozen=True)
class Listener:
    """One listening socket that takes connections to 127.0.0.1:port."""

    uid: int
    inode: int
    pids: tuple[int, ...]  # the processes holding it that this user can see


def loopback_listeners(port: int, proc: Path = Path("/proc")) -> list[Listener]:
    """Every listening socket a connection to 127.0.0.1:``port`` could reach."""
    found = []
    for table, loopback in (("tcp", _TCP4_LOOPBACK), ("tcp6", _TCP6_LOOPBACK)):
        for uid, inode in _listening(proc / "net" / table, port, loopback):
            found.append(Listener(uid, inode, tuple(_holders(inode, proc))))
    return found


def _listening(table: Path, port: int, loopback: set[str]) -> list[tuple[int, int]]:
    try:
        lines = table.read_text().splitlines()[1:]
    except OSError:
        return []
    out = []
    for line in lines:
        fields = line.split()
        if len(fields) < 10 or fields[3] != _LISTEN:
            continue
        address, _, hex_port = fields[1].partition(":")
        if int(hex_port, 16) == port and address.upper() in loopback:
            out.append((int(fields[7]), int(fields[9])))
    return out


def _holders(inode: int, proc: Path) -> list[int]:
    link = f"socket:[{inode}]"
    pids = []
    for entry in proc.iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fds = list((entry / "fd").iterdir())
        except OSError:
            continue  # gone, or another user's process we may not look into
        for fd in fds:
            try:
                if os.readlink(fd) == link:
                    pids.append(int(entry.name))
                    break
            except OSError:
                continue
    return pids


def describe(listener: Listener) -> str:
    """Who holds a listener, for an error message: pid, user and command."""
    user = _user(listener.uid)
    if not listener.pids:
        return f"a process of user {user} (not visible to this user)"
    pid = listener.pids[0]
    command = " ".join(cmdline(pid))[:120] or "?"
    return f"pid {pid} (user {user}: {command})"


def _user(uid: int) -> str:
    try:
        return f"{pwd.getpwuid(uid).pw_name} (uid {uid})"
    except KeyError:
        return f"uid {uid}"


def stranger_on(port: int, pid: int | None) -> str | None:
    """Who holds 127.0.0.1:``port`` if anyone but ``pid`` of this user does (None when
    nobody listens, or only ``pid``)."""
    for listener in loopback_listeners(port):
        if pid is None or listener.uid != os.geteuid() or listener.pids != (pid,):
            return describe(listener)
    return None


def our_process(pid_file: Path, program: str) -> int | None:
    """The pid in ``pid_file`` when it is a live ``program`` run by this user."""
    try:
        pid = int(pid_file.read_text().strip())
    except (OSError, ValueError):
        return None
    args = cmdline(pid)
    # Some daemons rewrite their title into argv[0] ("redis-server unixsocket:/…").
    if not args or Path(args[0].split(" ")[0]).name != program:
        return None
    return pid if owner_uid(pid) == os.geteuid() and pid_alive(pid) else None
