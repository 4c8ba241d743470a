"""SSH to a node's dropbear over fabric, with the lab's pinned host key.

Short commands go through fabric's ``Connection.run``; long-running ones (the sampler, the
workload) through a raw channel of the same connection so the session can watch a
deadline, a cancel flag and the node's liveness while they run.
"""

from __future__ import annotations

import base64
import logging
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass

import paramiko
from fabric import Connection

from workers.image import LabKeys

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


def _pinned_connection(host: str, port: int, keys: LabKeys, timeout_s: float) -> Connection:
    conn = Connection(
        host,
        user="root",
        port=port,
        connect_timeout=timeout_s,
        connect_kwargs={
            "key_filename": str(keys.client_private),
            "look_for_keys": False,
            "allow_agent": False,
            "banner_timeout": timeout_s,
            "auth_timeout": timeout_s,
        },
    )
    # The lab generated the node's host key itself: pin it and refuse anything else.
    kind, blob = keys.host_public.split()[:2]
    conn.client.get_host_keys().add(f"[{host}]:{port}", kind, paramiko.Ed25519Key(data=base64.b64decode(blob)))
    conn.client.set_missing_host_key_policy(paramiko.RejectPolicy())
    return conn


class NodeShell:
    """An open SSH session to one node."""

    def __init__(self, host: str, port: int, keys: LabKeys, timeout_s: float = CONNECT_TIMEOUT_S) -> None:
        self._conn = _pinned_connection(host, port, keys, timeout_s)
        self._conn.open()

    @classmethod
    def wait_ready(
        cls, host: str, port: int, keys: LabKeys, deadline: float, keep_waiting: Callable[[], bool]
    ) -> NodeShell:
        """Connect, retrying until ``deadline`` (monotonic) while ``keep_waiting()`` holds."""
        last_error = "no attempt"
        while time.monotonic() < deadline and keep_waiting():
            if not _sshd_answers(host, port):
                last_error = "no SSH banner yet"
                time.sleep(1.0)
                continue
            try:
                shell = cls(host, port, keys, BOOT_PROBE_TIMEOUT_S)
                if shell.run("true", timeout=CONNECT_TIMEOUT_S).ok:
                    return shell
                shell.close()
            except (OSError, paramiko.SSHException, EOFError) as err:
                # QEMU's port forward accepts TCP before the guest listens: resets are normal.
                last_error = f"{type(err).__name__}: {err}"
            time.sleep(1.0)
        raise NodeUnreachable(f"ssh {host}:{port} did not answer ({last_error})")

    def run(self, command: str, timeout: float = 60.0) -> CommandResult:
        """Run a short command; a timeout gives status None."""
        try:
            result = self._conn.run(command, hide=True, warn=True, timeout=timeout, in_stream=False)
        except Exception as err:  # invoke's CommandTimedOut and paramiko errors alike
            if "timed out" in str(err).lower() or isinstance(err, socket.timeout):
                return CommandResult(None, "", f"timed out after {timeout:.0f} s")
            raise NodeUnreachable(f"{type(err).__name__}: {err}") from err
        return CommandResult(result.exited, result.stdout, result.stderr)

    def open_channel(self, command: str) -> paramiko.Channel:
        """Start ``command`` on a raw channel (for streaming output)."""
        transport = self._conn.client.get_transport()
        if transport is None or not transport.is_active():
            raise NodeUnreachable("ssh session is closed")
        channel: paramiko.Channel = transport.open_session(timeout=CONNECT_TIMEOUT_S)
        channel.exec_command(command)
        return channel

    def clock_offset(self, rounds: int = 15) -> tuple[int, int]:
        """Node clock minus host clock (ns), and its uncertainty (half the best round trip).

        The exchanges go over one open channel to ``swaplab-node clock-serve``, so a round
        trip is a few ms rather than a channel set-up each time (NTP-style: keep the
        exchange with the smallest round trip).
        """
        channel = self.open_channel("exec swaplab-node clock-serve")
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
