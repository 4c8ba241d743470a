"""What a fault does to the lab, and how it is undone — now, or by a later worker.

Six kinds of action, all on the NFS path or the node itself:

- **stall**: SIGSTOP of the process that serves NFS (nfs-ganesha, or the QEMU of the
  knfsd server VM: the whole VM pauses), SIGCONT to resume. The process is named by pid
  *and* start time, so a recycled pid is never signalled.
- **drop**: an nftables table of the fault's own in the lab network's namespace (bridge
  family, never the host's rules) that drops a node's frames — all of them (link down) or
  a random share (loss) — in the direction the fault says. The lab's own table is
  replaced whenever a lab is brought up; the fault's is not touched by that.
- **shape**: a node's link at a rate, with tc in the lab network's namespace. A qdisc
  shapes only what leaves an interface, and this host has no IFB to turn a tap's ingress
  into an egress: what the node receives ("in") is shaped by a tbf on its own tap; what
  it sends ("out") by an htb class of its own on the server's tap, which the node's
  frames leave by (a u32 filter on its source address; other nodes' frames pass unshaped).
- **squeeze**: a second ``swaplab-node hog`` on the node, beside the workload: it writes
  and verifies its pages, and is killed if the fault ends first. A corrupt page it finds
  is the kernel's failure like the workload's.
- **delay**: netem in the server VM's own kernel on its lab NIC, for one node's address
  (a user-space delay would compete with TCG for the host's cores).
- **restart**: the NFS server stops serving (its state on disk kept) and starts again in a
  grace period, in which its clients reclaim their open swap files.

Every action is written to the journal (a 0700 directory under /run) *before* it is
applied and removed after it is undone: a worker that dies mid-fault leaves an entry
naming its own pid, and the next worker start undoes it (``undo_leftovers``). A restart left half done needs no
undoing there: a lab's server is started by its next run (``NfsServer.ensure_serving``).
"""

from __future__ import annotations

import contextlib
import hashlib
import ipaddress
import json
import logging
import os
import re
import signal
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Literal

import paramiko
from pydantic import Field

from model.paths import private_dir
from workers.journal import JournalEntry, orphaned_entries, owner
from workers.lab import network
from workers.lab.nfs.base import NfsServer, NfsServerError
from workers.node_ssh import NodeShell, NodeUnreachable
from workers.process import start_ticks

log = logging.getLogger(__name__)
JOURNAL_DIR = Path("/run/swaplab/faults")
_ENTRY_NAME = re.compile(r"[a-z0-9][a-z0-9._-]{0,150}\.json")
_TABLE = re.compile(r"swaplab_fault_[a-z0-9_]{1,40}")


class FaultActionError(RuntimeError):
    """A fault could not be applied or undone: the lab's fault, an infra-error."""


class _Entry(JournalEntry):
    """One journal entry: what to undo, and which worker process applied it."""

    action: Literal["stall", "drop", "restart", "shape", "squeeze", "delay"]
    pid: int | None = Field(default=None, gt=1)
    pid_start: int | None = Field(default=None, ge=0)
    namespace: str | None = Field(default=None, pattern=r"^swaplab-[a-z0-9][a-z0-9-]{0,31}$")
    table: str | None = Field(default=None, pattern=_TABLE.pattern)
    tap: str | None = Field(default=None, pattern=r"^tap-[a-z0-9-]{1,11}$")
    direction: Literal["out", "in", "both"] = "both"
    percent: float | None = Field(default=None, gt=0, le=100)
    server_tap: str | None = Field(default=None, pattern=r"^tap-[a-z0-9-]{1,11}$")
    address: str | None = Field(default=None, pattern=r"^[0-9]{1,3}(\.[0-9]{1,3}){3}$")
    mbit: float | None = Field(default=None, ge=0.1, le=10_000)


class Action:
    """One fault's effect: ``apply`` and ``undo`` (idempotent), journalled under ``name``."""

    def __init__(self, name: str, entry: _Entry) -> None:
        if not _ENTRY_NAME.fullmatch(name + ".json"):
            raise ValueError(f"fault journal name {name!r}")
        self.name = name
        self.entry = entry
        self.applied = False

    def apply(self) -> None:
        _journal(self.name, self.entry)
        self.applied = True
        try:
            self._effect(undo=False)
        except FaultActionError:
            self.undo()
            raise

    def undo(self) -> None:
        if not self.applied:
            return
        self._effect(undo=True)
        _forget(self.name)
        self.applied = False

    def _effect(self, undo: bool) -> None:
        _do(self.entry, undo)

    def finished(self) -> bool:
        """The disturbance ended by itself (a squeeze's hog is done): the fault ends early."""
        return False


class _ServerCall(Action):
    """An action that is two calls on the lab's NFS server (apply, undo); its errors are the fault's."""

    def __init__(
        self, name: str, entry: _Entry, apply: Callable[[], None], undo: Callable[[], None], what: str
    ) -> None:
        super().__init__(name, entry)
        self._calls = (apply, undo)
        self.what = what

    def _effect(self, undo: bool) -> None:
        try:
            self._calls[undo]()
        except NfsServerError as err:
            raise FaultActionError(f"{self.what} failed: {err}") from err


def delay(name: str, server: NfsServer, address: str, ms: float) -> Action:
    """Delay what ``server`` sends the node at ``address`` by ``ms`` while the fault lasts
    (netem in the server's own kernel)."""
    owner_pid, owner_start = owner()
    entry = _Entry(action="delay", address=address, owner_pid=owner_pid, owner_start=owner_start)
    return _ServerCall(
        name, entry, lambda: server.delay_to(address, ms), lambda: server.undelay_to(address), "the delay on the server"
    )


def stall(name: str, pid_of: Callable[[], int | None]) -> Action:
    """Stop the NFS server's process while the fault lasts: ``pid_of`` names it, asked
    again when the fault begins (an earlier restart in the run replaced it)."""
    return _Stall(name, _stall_entry(pid_of()), pid_of)


class _Stall(Action):
    """SIGSTOP/SIGCONT of the process serving when the fault begins."""

    def __init__(self, name: str, entry: _Entry, pid_of: Callable[[], int | None]) -> None:
        super().__init__(name, entry)
        self._pid_of = pid_of

    def apply(self) -> None:
        pid = self._pid_of()
        if pid != self.entry.pid:  # restarted since the run began: the process serving now
            self.entry = _stall_entry(pid)
        super().apply()


def _stall_entry(pid: int | None) -> _Entry:
    if pid is None:
        raise FaultActionError("the lab's NFS server is no process on this worker's host: nothing to stall")
    started = start_ticks(pid)
    if started is None:
        raise FaultActionError(f"the NFS server's process {pid} is gone: nothing to stall")
    owner_pid, owner_start = owner()
    return _Entry(action="stall", pid=pid, pid_start=started, owner_pid=owner_pid, owner_start=owner_start)


class Squeeze(Action):
    """A second hog on the node while the fault lasts; what it found stays on the action."""

    def __init__(self, name: str, entry: _Entry, shell: NodeShell, command: str) -> None:
        super().__init__(name, entry)
        self.shell = shell
        self.command = command
        self.channel: paramiko.Channel | None = None
        self.pid = 0
        self.output = b""
        self.exit_status: int | None = None

    def _effect(self, undo: bool) -> None:
        try:
            if undo:
                self._end()
            else:
                self._start()
        except (NodeUnreachable, OSError, paramiko.SSHException, ValueError) as err:
            raise FaultActionError(f"the memory squeeze on the node failed: {err}") from err

    def _start(self) -> None:
        self.channel = self.shell.open_channel(f"echo $$; exec {self.command}")
        self.channel.settimeout(SQUEEZE_START_S)
        first = b""
        while not first.endswith(b"\n") and len(first) < 32:
            chunk = self.channel.recv(1)
            if not chunk:
                break
            first += chunk
        self.pid = int(first.strip())  # ValueError: it did not start

    def _end(self) -> None:
        channel = self.channel
        if channel is None:
            return
        if not channel.exit_status_ready():
            self.shell.run(f"kill {self.pid} 2>/dev/null; true", timeout=SQUEEZE_START_S)
        channel.settimeout(SQUEEZE_START_S)
        with contextlib.suppress(OSError, TimeoutError):
            while len(self.output) < SQUEEZE_OUTPUT_MAX and (chunk := channel.recv(65536)):
                self.output += chunk
        if channel.exit_status_ready():
            self.exit_status = channel.recv_exit_status()
        channel.close()
        self.channel = None

    def finished(self) -> bool:
        return self.channel is not None and self.channel.exit_status_ready()

    def corrupt(self) -> list[str]:
        """The corrupt pages the squeeze's hog reported (its own lines)."""
        text = self.output.decode(errors="replace")
        return [line.strip()[:300] for line in text.splitlines() if line.startswith("corrupt")][:10]


class Flap(Action):
    """A link-down that comes and goes: its drop table loaded and deleted every ``flap_s``
    by a thread of its own until the fault ends (the journal entry is the drop's)."""

    def __init__(self, name: str, entry: _Entry, flap_s: float) -> None:
        super().__init__(name, entry)
        self.flap_s = flap_s
        self.flips = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def _effect(self, undo: bool) -> None:
        if not undo:
            _do(self.entry, undo=False)  # down now: a failure is the fault's at once
            self._thread = threading.Thread(target=self._flap, name=f"flap-{self.name}", daemon=True)
            self._thread.start()
            return
        self._stop.set()
        if self._thread is not None:
            self._thread.join(COMMAND_JOIN_S)
        _do(self.entry, undo=True)

    def _flap(self) -> None:
        down = True
        while not self._stop.wait(self.flap_s):
            down = not down
            try:
                _do(self.entry, undo=not down)
            except FaultActionError as err:
                log.error("%s: the link flap failed: %s", self.name, err)
                return
            self.flips += 1


COMMAND_JOIN_S = 30.0


def flap(name: str, lab: str, tap: str, direction: str, flap_s: float) -> Flap:
    """A link-down of the node behind ``tap`` that flaps every ``flap_s`` seconds."""
    dropping = drop(name, lab, tap, direction, None)
    return Flap(name, dropping.entry, flap_s)


SQUEEZE_START_S = 30.0
SQUEEZE_OUTPUT_MAX = 1 << 20


def squeeze(name: str, shell: NodeShell, command: str) -> Squeeze:
    """Run ``command`` (a ``swaplab-node hog``) on the node behind ``shell`` while the fault lasts."""
    owner_pid, owner_start = owner()
    entry = _Entry(action="squeeze", owner_pid=owner_pid, owner_start=owner_start)
    return Squeeze(name, entry, shell, command)


def restart(name: str, server: NfsServer) -> Action:
    """Stop ``server`` while the fault lasts, then start it again with a grace period."""
    owner_pid, owner_start = owner()
    entry = _Entry(action="restart", owner_pid=owner_pid, owner_start=owner_start)
    return _ServerCall(
        name, entry, server.stop_for_restart, server.start_after_restart, "the restart of the NFS server"
    )


def drop(name: str, lab: str, tap: str, direction: str, percent: float | None) -> Action:
    """Drop ``percent`` % (all when None) of the frames of the node behind ``tap``, in
    ``direction`` ("out": what the node sends, "in": what it receives, "both")."""
    table = "swaplab_fault_" + hashlib.sha256(name.encode()).hexdigest()[:16]
    return Action(name, _link_entry("drop", lab, tap, direction, table=table, percent=percent))


def shape(name: str, lab: str, tap: str, server_tap: str, address: str, direction: str, mbit: float) -> Action:
    """Limit the link of the node behind ``tap`` (guest address ``address``) to ``mbit``
    Mbit/s in ``direction``; "out" is shaped on ``server_tap``, the server's."""
    return Action(name, _link_entry("shape", lab, tap, direction, server_tap=server_tap, address=address, mbit=mbit))


def _link_entry(action: str, lab: str, tap: str, direction: str, **fields: object) -> _Entry:
    """The journal entry of a fault on a node's link in ``lab``'s namespace, owned by this worker."""
    owner_pid, owner_start = owner()
    return _Entry.model_validate(
        {
            "action": action,
            "namespace": network.namespace(lab),
            "tap": tap,
            "direction": direction,
            "owner_pid": owner_pid,
            "owner_start": owner_start,
            **fields,
        }
    )


SHAPE_HANDLE = "5e:"  # the fault's qdiscs, told apart from anything else on a tap
SHAPE_LATENCY_MS = 400  # the longest a frame queues before the shaper drops it


def shape_commands(entry: _Entry, undo: bool) -> list[list[str]]:
    """The tc commands (arguments after ``tc``) that apply or undo a shape entry; an undo's
    may fail harmlessly (already gone)."""
    assert entry.tap is not None and entry.server_tap is not None and entry.address is not None
    assert entry.mbit is not None
    kbit = f"{round(entry.mbit * 1000)}kbit"
    # At least one full frame per token refill, and 10 ms worth at the rate.
    burst = str(max(16 * 1024, round(entry.mbit * 1e6 / 8 / 100)))
    minor = f"{int(ipaddress.IPv4Address(entry.address)) & 0xFFFF or 1:x}"
    prio = str(int(minor, 16))
    commands = []
    if entry.direction in ("in", "both"):
        if undo:
            commands.append(["qdisc", "del", "dev", entry.tap, "root", "handle", SHAPE_HANDLE])
        else:
            tbf = ["tbf", "rate", kbit, "burst", burst, "latency", f"{SHAPE_LATENCY_MS}ms"]
            commands.append(["qdisc", "replace", "dev", entry.tap, "root", "handle", SHAPE_HANDLE, *tbf])
    if entry.direction in ("out", "both"):
        server = ["dev", entry.server_tap]
        if undo:
            commands.append(["filter", "del", *server, "parent", SHAPE_HANDLE, "protocol", "ip", "prio", prio])
            commands.append(["class", "del", *server, "classid", SHAPE_HANDLE + minor])
        else:
            # No default class: what no filter classifies (other nodes') passes unshaped.
            commands.append(["qdisc", "add", *server, "root", "handle", SHAPE_HANDLE, "htb"])
            rate = ["htb", "rate", kbit, "ceil", kbit, "burst", burst]
            commands.append(["class", "add", *server, "parent", SHAPE_HANDLE, "classid", SHAPE_HANDLE + minor, *rate])
            # Its queue holds what the tbf's would (its latency at the rate), not a tap's 1000 frames.
            limit = str(round(entry.mbit * 1e6 / 8 * SHAPE_LATENCY_MS / 1000) + int(burst))
            commands.append(["qdisc", "add", *server, "parent", SHAPE_HANDLE + minor, "bfifo", "limit", limit])
            match = ["u32", "match", "ip", "src", f"{entry.address}/32", "flowid", SHAPE_HANDLE + minor]
            commands.append(["filter", "add", *server, "parent", SHAPE_HANDLE, "protocol", "ip", "prio", prio, *match])
    return commands


def drop_script(table: str, tap: str, direction: str, percent: float | None) -> str:
    """The nft script of a drop fault: its own bridge table, dropping in the forward hook
    (frames between the node's tap and the server's) before the lab's own chains."""
    if not _TABLE.fullmatch(table) or not re.fullmatch(r"tap-[a-z0-9-]{1,11}", tap):
        raise ValueError(f"fault table {table!r} or tap {tap!r}")
    share = "" if percent is None else f"numgen random mod 10000 < {round(percent * 100)} "
    matches = {"out": [f'iifname "{tap}"'], "in": [f'oifname "{tap}"']}
    matches["both"] = matches["out"] + matches["in"]
    rules = [f"    {match} {share}counter drop" for match in matches[direction]]
    return "\n".join(
        [
            f"table bridge {table} {{",
            "  chain fault {",
            "    type filter hook forward priority -10; policy accept;",
            *rules,
            "  }",
            "}",
        ]
    )


def _do(entry: _Entry, undo: bool) -> None:
    if entry.action in ("restart", "squeeze", "delay"):
        # A leftover: the server starts with the lab's next run; a squeeze ends with its
        # node (or the workload cleanup's `pkill swaplab-node` on a node that outlives the
        # run); a delay is cleared by the lab's next run's start (KnfsdServer.ensure_serving).
        return
    if entry.action == "shape":
        _shape(entry, undo)
        return
    if entry.action == "stall":
        _signal(entry, signal.SIGCONT if undo else signal.SIGSTOP)
        return
    assert entry.namespace is not None and entry.table is not None
    if undo:
        _delete_table(entry.namespace, entry.table)
        return
    assert entry.tap is not None
    try:
        network.load_nft(entry.namespace, drop_script(entry.table, entry.tap, entry.direction, entry.percent))
    except network.LabNetworkError as err:
        raise FaultActionError(f"cannot disturb the link: {err}") from err


def _signal(entry: _Entry, sig: signal.Signals) -> None:
    assert entry.pid is not None
    if start_ticks(entry.pid) != entry.pid_start:
        if sig is signal.SIGSTOP:
            raise FaultActionError(f"the NFS server's process {entry.pid} is gone: nothing to stall")
        return  # gone (or the pid recycled): nothing to resume
    try:
        os.kill(entry.pid, sig)
    except ProcessLookupError:
        if sig is signal.SIGSTOP:
            raise FaultActionError(f"the NFS server's process {entry.pid} is gone: nothing to stall") from None


def _shape(entry: _Entry, undo: bool) -> None:
    assert entry.namespace is not None and entry.server_tap is not None
    if not (network.NETNS_DIR / entry.namespace).exists():
        if undo:
            return  # the lab's network is gone, and its qdiscs with it
        raise FaultActionError(f"the lab network's namespace {entry.namespace} is gone")
    for command in shape_commands(entry, undo):
        try:
            network.tc(entry.namespace, *command)
        except network.LabNetworkError as err:
            if undo or _already_there(command, str(err)):
                continue  # an undo finds it gone; another node's fault added the root first
            raise FaultActionError(f"cannot shape the link: {err}") from err
    if undo and entry.direction in ("out", "both"):
        _drop_empty_root(entry.namespace, entry.server_tap)


def _already_there(command: list[str], error: str) -> bool:
    return command[:2] == ["qdisc", "add"] and ("File exists" in error or "Exclusivity flag on" in error)


def _drop_empty_root(namespace: str, tap: str) -> None:
    """Remove the server tap's shaping root once no node's class is left on it."""
    with contextlib.suppress(network.LabNetworkError):
        if not network.tc(namespace, "class", "show", "dev", tap).strip():
            network.tc(namespace, "qdisc", "del", "dev", tap, "root", "handle", SHAPE_HANDLE)


def _delete_table(namespace: str, table: str) -> None:
    if not (network.NETNS_DIR / namespace).exists():
        return  # the lab's network is gone, and its rules with it
    with contextlib.suppress(network.LabNetworkError):  # already gone
        network.load_nft(namespace, f"table bridge {table}\ndelete table bridge {table}\n")


# -- the journal ------------------------------------------------------------------------------


def _journal(name: str, entry: _Entry) -> None:
    directory = private_dir(JOURNAL_DIR)
    payload = entry.model_dump(mode="json")
    tmp = directory / f".{name}.tmp"
    tmp.write_text(json.dumps(payload))
    tmp.replace(directory / f"{name}.json")


def _forget(name: str) -> None:
    (JOURNAL_DIR / f"{name}.json").unlink(missing_ok=True)


def undo_leftovers() -> list[str]:
    """Undo what workers that died mid-fault left (their entries; a live worker's stay):
    what was undone, for the worker's log."""
    undone = []
    for path, entry in orphaned_entries(JOURNAL_DIR, _Entry, "fault journal entry", _ENTRY_NAME):
        try:
            _do(entry, undo=True)
        except FaultActionError as err:
            log.error("could not undo %s: %s", path.name, err)
            continue
        path.unlink(missing_ok=True)
        undone.append(f"{path.stem} ({entry.action})")
    return undone
