"""SSH to a node over fabric: a booted node's dropbear with the lab's pinned host key, or
a running host with the key (or agent) and known_hosts its inventory names.

Short commands go through fabric's ``Connection.run``; long-running ones (the sampler, the
workload) through a raw channel of the same connection so the session can watch a
deadline, a cancel flag and the node's liveness while they run. An unknown host key is
always refused.
"""

from __future__ import annotations

import base64
import logging
import socket
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import paramiko
from fabric import Connection

CONNECT_TIMEOUT_S = 8.0
# While waiting for a booting node, each attempt gives up quickly so a broken barrier or a
# cancel is noticed within seconds (QEMU's port forward accepts TCP long before sshd).
BOOT_PROBE_TIMEOUT_S = 3.0
# While a node boots, QEMU's port forward accepts TCP before sshd listens; paramiko logs
# every such refused handshake as an error with a traceback. Expected noise, not news.
logging.getLogger("paramiko.transport").setLevel(logging.CRITICAL)


class NodeUnreachable(RuntimeError):
    """The node's sshd did not answer (or the session dropped)."""


@dataclass(frozen=True)
class CommandResult:
    """Exit status (None when it never finished), stdout and stderr of a command."""

    status: int | None
    stdout: str
    stderr: str

    @property
    def ok(self) -> bool:
        """True when the command ran and exited 0."""
        return self.status == 0


@dataclass(frozen=True)
class SshTarget:
    """How to log in to a node: where, as whom, with what, and which host key to accept."""

    host: str
    port: int
    user: str = "root"
    key_file: Path | None = None
    allow_agent: bool = False
    # Pinned "<type> <base64>" host key (a node swaplab built the image of), or a
    # known_hosts file; with neither the login is refused.
    host_key: str | None = None
    known_hosts: Path | None = None

    @property
    def where(self) -> str:
        return f"{self.user}@{self.host}:{self.port}"


def _connection(target: SshTarget, timeout_s: float) -> Connection:
    conn = Connection(
        target.host,
        user=target.user,
        port=target.port,
        connect_timeout=timeout_s,
        connect_kwargs={
            "key_filename": str(target.key_file) if target.key_file else None,
            "look_for_keys": False,
            "allow_agent": target.allow_agent,
            "banner_timeout": timeout_s,
            "auth_timeout": timeout_s,
        },
    )
    host_keys = conn.client.get_host_keys()
    if target.host_key is not None:
        kind, blob = target.host_key.split()[:2]
        name = target.host if target.port == 22 else f"[{target.host}]:{target.port}"
        host_keys.add(name, kind, paramiko.PKey.from_type_string(kind, base64.b64decode(blob)))
    elif target.known_hosts is not None:
        conn.client.load_host_keys(str(target.known_hosts))
    # Only the host keys given above: anything else is refused, never learnt.
    conn.client.set_missing_host_key_policy(paramiko.RejectPolicy())
    return conn


class NodeShell:
    """An open SSH session to one node."""

    def __init__(self, target: SshTarget, timeout_s: float = CONNECT_TIMEOUT_S) -> None:
        self.target = target
        self._conn = _connection(target, timeout_s)
        self._conn.open()

    @classmethod
    def wait_ready(cls, target: SshTarget, deadline: float, keep_waiting: Callable[[], bool]) -> NodeShell:
        """Connect, retrying until ``deadline`` (monotonic) while ``keep_waiting()`` holds."""
        last_error = "no attempt"
        while time.monotonic() < deadline and keep_waiting():
            if not _sshd_answers(target.host, target.port):
                last_error = "no SSH banner yet"
                time.sleep(1.0)
                continue
            try:
                shell = cls(target, BOOT_PROBE_TIMEOUT_S)
                if shell.run("true", timeout=CONNECT_TIMEOUT_S).ok:
                    return shell
                shell.close()
            except (OSError, paramiko.SSHException, EOFError) as err:
                # QEMU's port forward accepts TCP before the guest listens: resets are normal.
                last_error = f"{type(err).__name__}: {err}"
            time.sleep(1.0)
        raise NodeUnreachable(f"ssh {target.where} did not answer ({last_error})")

    @classmethod
    def connect(cls, target: SshTarget) -> NodeShell:
        """One attempt to log in to a node that should be up; NodeUnreachable if it is not."""
        try:
            return cls(target)
        except (OSError, paramiko.SSHException, EOFError) as err:
            raise NodeUnreachable(f"ssh {target.where}: {type(err).__name__}: {err}") from err

    def run(self, command: str, timeout: float = 60.0, stdin: bytes | None = None) -> CommandResult:
        """Run a short command (``stdin`` fed to it when given); a timeout gives status None."""
        if stdin is not None:
            return self._run_with_input(command, stdin, timeout)
        try:
            result = self._conn.run(command, hide=True, warn=True, timeout=timeout, in_stream=False)
        except Exception as err:  # invoke's CommandTimedOut and paramiko errors alike
            if "timed out" in str(err).lower() or isinstance(err, socket.timeout):
                return CommandResult(None, "", f"timed out after {timeout:.0f} s")
            raise NodeUnreachable(f"{type(err).__name__}: {err}") from err
        return CommandResult(result.exited, result.stdout, result.stderr)

    def _run_with_input(self, command: str, data: bytes, timeout: float) -> CommandResult:
        deadline = time.monotonic() + timeout
        channel = self.open_channel(command)
        try:
            channel.sendall(data)
            channel.shutdown_write()
            stdout, stderr = b"", b""
            while not channel.exit_status_ready() or channel.recv_ready() or channel.recv_stderr_ready():
                if time.monotonic() > deadline:
                    return CommandResult(None, stdout.decode(errors="replace"), f"timed out after {timeout:.0f} s")
                stdout += channel.recv(65536) if channel.recv_ready() else b""
                stderr += channel.recv_stderr(65536) if channel.recv_stderr_ready() else b""
                time.sleep(0.01)
            status = channel.recv_exit_status()
        except (OSError, paramiko.SSHException, EOFError) as err:
            raise NodeUnreachable(f"{type(err).__name__}: {err}") from err
        finally:
            channel.close()
        return CommandResult(status, stdout.decode(errors="replace"), stderr.decode(errors="replace"))

    def open_channel(self, command: str) -> paramiko.Channel:
        """Start ``command`` on a raw channel (for streaming output)."""
        transport = self._conn.client.get_transport()
        if transport is None or not transport.is_active():
            raise NodeUnreachable("ssh session is closed")
        channel: paramiko.Channel = transport.open_session(timeout=CONNECT_TIMEOUT_S)
        channel.exec_command(command)
        return channel

    def clock_offset(self, tool: str = "swaplab-node", rounds: int = 15) -> tuple[int, int]:
        """Node clock minus host clock (ns), and its uncertainty (half the best round trip).

        The exchanges go over one open channel to ``swaplab-node clock-serve``, so a round
        trip is a few ms rather than a channel set-up each time (NTP-style: keep the
        exchange with the smallest round trip).
        """
        channel = self.open_channel(f"exec {tool} clock-serve")
        try:
            reader = channel.makefile("r")
            exchanges = []
            for _ in range(rounds):
                sent = time.time_ns()
                channel.sendall(b"\n")
                node = int(reader.readline().strip())
                exchanges.append((sent, node, time.time_ns()))
        finally:
            _close_after_exit(channel)
        sent, node, received = min(exchanges, key=lambda ex: ex[2] - ex[0])
        return node - (sent + received) // 2, (received - sent) // 2

    def is_alive(self, timeout: float = 10.0) -> bool:
        """True when the node still answers a trivial command in time.

        A raw channel with a deadline: a hung guest must give False, never block.
        """
        deadline = time.monotonic() + timeout
        try:
            channel = self.open_channel("echo alive")
            while not channel.exit_status_ready():
                if time.monotonic() > deadline:
                    channel.close()
                    return False
                time.sleep(0.1)
            return channel.recv_exit_status() == 0
        except (NodeUnreachable, OSError, paramiko.SSHException, EOFError):
            return False

    def close(self) -> None:
        """Close the connection (idempotent)."""
        self._conn.close()


def received_chunks(channel: paramiko.Channel, size: int = 65536) -> Iterator[bytes]:
    """What a channel's command writes, chunk by chunk, until it closes or the session drops."""
    while True:
        try:
            chunk = channel.recv(size)
        except (OSError, EOFError, paramiko.SSHException):
            return
        if not chunk:
            return
        yield chunk


def _sshd_answers(host: str, port: int, timeout_s: float = 2.0) -> bool:
    """A cheap, bounded probe: does an SSH banner come back? (A booting guest sends none.)"""
    try:
        with socket.create_connection((host, port), timeout=timeout_s) as probe:
            probe.settimeout(timeout_s)
            return probe.recv(4).startswith(b"SSH-")
    except OSError:
        return False


def _close_after_exit(channel: paramiko.Channel, timeout_s: float = 5.0) -> None:
    """Send EOF, let the remote command exit, then close.

    Closing a channel whose command still runs races with the server's own close: paramiko
    may hand the same channel id to the next session, which the late close then kills
    ("Channel closed" on the next command).
    """
    deadline = time.monotonic() + timeout_s
    channel.shutdown_write()
    while not channel.exit_status_ready() and time.monotonic() < deadline:
        time.sleep(0.01)
    channel.close()
