"""SSH to a node over fabric: a booted node's dropbear with the lab's pinned host key, or
a running host with the key (or agent) and known_hosts its inventory names.

Commands run on raw channels of fabric's connection: short ones read to their end within
a timeout; long-running ones (the sampler, the workload) are streamed so the session can
watch a deadline, a cancel flag and the node's liveness while they run. An unknown host
key is always refused.

Every conversation with a node has a deadline: the login (TCP connect, banner, paramiko's
15 s key exchange, authentication), opening a channel and starting its command
(``CONNECT_TIMEOUT_S``), a command's output (its ``timeout``), a clock exchange
(``CLOCK_TIMEOUT_S``), a liveness probe. A node that stops answering ends each with
``NodeUnreachable`` or a timed-out result, never a hang; what that means is for
``workers.pipeline.evidence`` to say. What a command prints is kept up to
``MAX_STDOUT_BYTES`` / ``MAX_STDERR_BYTES`` (the rest is read and dropped, with a marker).
Streams that follow a command for the whole run (``received_chunks``) block in ``recv``
in their own thread: closing the channel ends them.
"""

from __future__ import annotations

import base64
import logging
import socket
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import paramiko
from fabric import Connection

# Opening a channel and starting its command. A TCG guest on a busy host is slow to fork:
# with three guests booting on two cores dropbear once took more than 8 s to start one.
CONNECT_TIMEOUT_S = 20.0
# While waiting for a booting node, each attempt gives up quickly so a broken barrier or a
# cancel is noticed within seconds (QEMU's port forward accepts TCP long before sshd).
BOOT_PROBE_TIMEOUT_S = 3.0
# The clock exchanges take milliseconds; a node silent this long is not answering.
CLOCK_TIMEOUT_S = 20.0
CLOCK_LINE_MAX = 64  # a clock-serve answer is one integer
MAX_STDOUT_BYTES = 1024 * 1024  # short commands print a few lines
MAX_STDERR_BYTES = 64 * 1024
_POLL_S = 0.01
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
    connect_kwargs: dict[str, Any] = {
        "look_for_keys": False,
        "allow_agent": target.allow_agent,
        "banner_timeout": timeout_s,
        "auth_timeout": timeout_s,
    }
    if target.key_file:  # fabric cannot take key_filename=None (an agent-only node)
        connect_kwargs["key_filename"] = str(target.key_file)
    conn = Connection(
        target.host, user=target.user, port=target.port, connect_timeout=timeout_s, connect_kwargs=connect_kwargs
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
        """Run a short command (``stdin`` fed to it when given, else its stdin is at EOF);
        a timeout gives status None. Output beyond MAX_STDOUT_BYTES / MAX_STDERR_BYTES is
        dropped with a marker."""
        deadline = time.monotonic() + timeout
        channel = self.open_channel(command, timeout=min(timeout, CONNECT_TIMEOUT_S))
        stdout, stderr = _Capped(MAX_STDOUT_BYTES), _Capped(MAX_STDERR_BYTES)
        try:
            channel.settimeout(max(0.0, deadline - time.monotonic()))
            if stdin is not None and not channel.closed:  # closed: the command has already ended
                channel.sendall(stdin)
            channel.shutdown_write()
            while not channel.exit_status_ready() or channel.recv_ready() or channel.recv_stderr_ready():
                if time.monotonic() > deadline:
                    return CommandResult(None, stdout.text(), f"timed out after {timeout:.0f} s")
                busy = channel.recv_ready() or channel.recv_stderr_ready()
                stdout.add(channel.recv(65536) if channel.recv_ready() else b"")
                stderr.add(channel.recv_stderr(65536) if channel.recv_stderr_ready() else b"")
                if not busy:
                    time.sleep(_POLL_S)
            status = channel.recv_exit_status()
        except TimeoutError:
            return CommandResult(None, stdout.text(), f"timed out after {timeout:.0f} s (the node took no input)")
        except (OSError, paramiko.SSHException, EOFError) as err:
            raise NodeUnreachable(f"{type(err).__name__}: {err}") from err
        finally:
            channel.close()
        return CommandResult(status, stdout.text(), stderr.text())

    def open_channel(self, command: str, timeout: float = CONNECT_TIMEOUT_S) -> paramiko.Channel:
        """Start ``command`` on a raw channel (for streaming output); NodeUnreachable when
        the node does not open the channel or start the command within ``timeout``."""
        transport = self._conn.client.get_transport()
        if transport is None or not transport.is_active():
            raise NodeUnreachable("ssh session is closed")
        try:
            channel: paramiko.Channel = transport.open_session(timeout=timeout)
        except (OSError, paramiko.SSHException, EOFError) as err:
            raise NodeUnreachable(f"ssh {self.target.where}: no channel: {type(err).__name__}: {err}") from err
        # paramiko waits for the answer to exec without a deadline: closing the channel ends the wait.
        fired = threading.Event()

        def give_up() -> None:
            fired.set()
            channel.close()

        watchdog = threading.Timer(timeout, give_up)
        watchdog.daemon = True
        watchdog.start()
        try:
            channel.exec_command(command)
        except (OSError, paramiko.SSHException, EOFError) as err:
            channel.close()
            late = f" within {timeout:g} s" if fired.is_set() else ""
            raise NodeUnreachable(f"ssh {self.target.where}: the command did not start{late}: {err}") from err
        finally:
            watchdog.cancel()
        # Only the watchdog's close means "not started": a quick command may already have
        # ended and its channel been closed by the node (its output stays readable).
        if fired.is_set():
            raise NodeUnreachable(f"ssh {self.target.where}: the command did not start within {timeout:g} s")
        return channel

    def clock_offset(
        self, tool: str = "swaplab-node", rounds: int = 15, timeout_s: float = CLOCK_TIMEOUT_S
    ) -> tuple[int, int]:
        """Node clock minus host clock (ns), and its uncertainty (half the best round trip).

        The exchanges go over one open channel to ``swaplab-node clock-serve``, so a round
        trip is a few ms rather than a channel set-up each time (NTP-style: keep the
        exchange with the smallest round trip). All of them within ``timeout_s``, else
        NodeUnreachable; an answer that is not a number is a ValueError.
        """
        deadline = time.monotonic() + timeout_s
        channel = self.open_channel(f"exec {tool} clock-serve", timeout=min(timeout_s, CONNECT_TIMEOUT_S))
        answers = _Answers(channel, deadline, f"clock-serve on {self.target.where}")
        exchanges = []
        try:
            for _ in range(rounds):
                sent = time.time_ns()
                answers.send(b"\n")
                node = answers.number()
                exchanges.append((sent, node, time.time_ns()))
        except NodeUnreachable:
            _close_after_exit(channel, timeout_s=1.0)  # silent so far: no long wait for its exit
            raise
        except BaseException:
            _close_after_exit(channel)
            raise
        _close_after_exit(channel)
        sent, node, received = min(exchanges, key=lambda ex: ex[2] - ex[0])
        return node - (sent + received) // 2, (received - sent) // 2

    def is_alive(self, timeout: float = 10.0) -> bool:
        """True when the node still answers a trivial command in time.

        A raw channel with a deadline: a hung guest must give False, never block.
        """
        deadline = time.monotonic() + timeout
        try:
            channel = self.open_channel("echo alive", timeout=timeout)
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


class _Capped:
    """A command's output up to ``limit`` bytes; the rest counted, not kept."""

    def __init__(self, limit: int) -> None:
        self._limit = limit
        self._data = bytearray()
        self._dropped = 0

    def add(self, chunk: bytes) -> None:
        room = max(0, self._limit - len(self._data))
        self._data += chunk[:room]
        self._dropped += len(chunk) - min(room, len(chunk))

    def text(self) -> str:
        text = self._data.decode(errors="replace")
        return text + f"\n[swaplab: {self._dropped} more bytes of output not kept]" if self._dropped else text


class _Answers:
    """A line-by-line conversation on a channel, every read before one deadline."""

    def __init__(self, channel: paramiko.Channel, deadline: float, who: str) -> None:
        self._channel = channel
        self._deadline = deadline
        self._who = who
        self._pending = b""

    def send(self, data: bytes) -> None:
        self._channel.settimeout(self._left())
        try:
            self._channel.sendall(data)
        except TimeoutError as err:
            raise NodeUnreachable(f"{self._who} took no input in time") from err
        except (OSError, paramiko.SSHException, EOFError) as err:
            raise NodeUnreachable(f"{self._who}: {type(err).__name__}: {err}") from err

    def number(self) -> int:
        line = self._line()
        if not line.isdigit():
            raise ValueError(f"{self._who} answered {line[:40]!r}, not a number")
        return int(line)

    def _line(self) -> str:
        while b"\n" not in self._pending:
            if len(self._pending) > CLOCK_LINE_MAX:
                raise ValueError(f"{self._who} sent more than {CLOCK_LINE_MAX} bytes without a newline")
            self._channel.settimeout(self._left())
            try:
                chunk = self._channel.recv(CLOCK_LINE_MAX)
            except TimeoutError as err:
                raise NodeUnreachable(f"{self._who} did not answer within the deadline") from err
            except (OSError, paramiko.SSHException, EOFError) as err:
                raise NodeUnreachable(f"{self._who}: {type(err).__name__}: {err}") from err
            if not chunk:
                raise NodeUnreachable(f"{self._who} ended without an answer")
            self._pending += chunk
        line, _, self._pending = self._pending.partition(b"\n")
        return line.decode(errors="replace").strip()

    def _left(self) -> float:
        left = self._deadline - time.monotonic()
        if left <= 0:
            raise NodeUnreachable(f"{self._who} did not answer within the deadline")
        return left


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
