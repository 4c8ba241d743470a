"""SSH to a node's dropbear over fabric, with the lab's pinned host key.

Short commands go through fabric's ``Connection.run``; long-running ones (the sampler, the
workload) through a raw channel of the same connection so the session can watch a
deadline, a cancel flag and the node's liveness while they run.
"""

from __future__ import annotations

import base64
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass

import paramiko
from fabric import Connection

from workers.image import LabKeys

CONNECT_TIMEOUT_S = 8.0


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


def _pinned_connection(host: str, port: int, keys: LabKeys) -> Connection:
    conn = Connection(
        host,
        user="root",
        port=port,
        connect_timeout=CONNECT_TIMEOUT_S,
        connect_kwargs={
            "key_filename": str(keys.client_private),
            "look_for_keys": False,
            "allow_agent": False,
            "banner_timeout": CONNECT_TIMEOUT_S,
            "auth_timeout": CONNECT_TIMEOUT_S,
        },
    )
    # The lab generated the node's host key itself: pin it and refuse anything else.
    kind, blob = keys.host_public.split()[:2]
    conn.client.get_host_keys().add(f"[{host}]:{port}", kind, paramiko.Ed25519Key(data=base64.b64decode(blob)))
    conn.client.set_missing_host_key_policy(paramiko.RejectPolicy())
    return conn


class NodeShell:
    """An open SSH session to one node."""

    def __init__(self, host: str, port: int, keys: LabKeys) -> None:
        self._conn = _pinned_connection(host, port, keys)
        self._conn.open()

    @classmethod
    def wait_ready(
        cls, host: str, port: int, keys: LabKeys, deadline: float, keep_waiting: Callable[[], bool]
    ) -> NodeShell:
        """Connect, retrying until ``deadline`` (monotonic) while ``keep_waiting()`` holds."""
        last_error = "no attempt"
        while time.monotonic() < deadline and keep_waiting():
            try:
                shell = cls(host, port, keys)
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

    def node_clock_ns(self) -> tuple[int, int, int]:
        """One clock exchange: (host send ns, node ns, host receive ns)."""
        sent = time.time_ns()
        channel = self.open_channel("swaplab-node clock")
        output = channel.makefile("r").read().decode().strip()
        received = time.time_ns()
        channel.close()
        return sent, int(output), received

    def clock_offset(self, rounds: int = 7) -> tuple[int, int]:
        """Node clock minus host clock (ns), and its uncertainty (half the best round trip)."""
        exchanges = [self.node_clock_ns() for _ in range(rounds)]
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
