"""Console of a node swaplab does not boot: whatever the lab gives, else the kernel log over SSH.

Three sources, each appending to the session's ``console.log`` from the moment the session
starts (nothing older: an OOM kill of yesterday is not this run's):

- ``FileFollower``: a host file the lab's console server writes (conserver, a QEMU serial
  log), read from its current end;
- ``CommandCapture``: a host command whose output is the console (``ipmitool sol activate``);
- ``KmsgCapture``: ``cat /dev/kmsg`` over the open SSH session (what ``dmesg -w`` reads;
  busybox's dmesg cannot follow), records from before the session dropped. It only sees
  what the kernel still manages to send over the network: a node that hangs takes its
  last words with it, which is why a lab console is better evidence.

All three write through a ``ConsoleLog`` (``workers.console_log``): console.log stays under
its cap on disk, lines are cut at ``MAX_LINE_BYTES``, and the events are counted as they
pass. No reader holds more than one line and one chunk in memory.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import threading
from pathlib import Path
from typing import Protocol

from workers.console_log import ConsoleLog, Pump
from workers.lines import MAX_LINE_BYTES, LineCutter, text_of
from workers.node_ssh import NodeShell, received_chunks

_POLL_S = 0.2
_CHUNK = 64 * 1024
_FOLLOW_BYTES = 8 * 1024 * 1024  # copied per poll at most: a flood cannot keep stop() waiting
# /dev/kmsg record: "<prio>,<seq>,<usec since boot>,<flags>[,...];<text>"
_KMSG = re.compile(r"^\d+,\d+,(\d+),[^;]*;(.*)$")


class ConsoleCapture(Protocol):
    """A running capture into console.log."""

    source: str

    def stop(self) -> None:
        """Stop capturing (idempotent); what was captured stays in console.log."""


class FileFollower:
    """Append what a host file gains from now on."""

    def __init__(self, source_file: Path, target: Path) -> None:
        self.source = f"file {source_file}"
        self._source_file = source_file
        self.log = ConsoleLog.create(target)
        self._offset = source_file.stat().st_size if source_file.exists() else 0
        self._stopped = threading.Event()
        self._thread = threading.Thread(target=self._follow, name=f"console-{target.parent.name}", daemon=True)
        self._thread.start()

    def _follow(self) -> None:
        while not self._stopped.wait(_POLL_S):
            self._copy_new()
        self._copy_new()
        self.log.close()

    def _copy_new(self) -> None:
        """What the file gained since the last poll, in chunks, at most _FOLLOW_BYTES."""
        try:
            with self._source_file.open("rb") as src:
                size = os.fstat(src.fileno()).st_size
                if size < self._offset:  # the console server started a new file
                    self._offset = 0
                src.seek(self._offset)
                budget = _FOLLOW_BYTES
                while budget > 0 and (chunk := src.read(min(_CHUNK, budget))):
                    self._offset += len(chunk)
                    budget -= len(chunk)
                    self.log.write(chunk)
        except OSError:
            return

    def stop(self) -> None:
        self._stopped.set()
        self._thread.join(timeout=5.0)


class CommandCapture:
    """A host command's output, as long as the session runs."""

    def __init__(self, argv: tuple[str, ...], target: Path) -> None:
        self.source = f"command {' '.join(argv)}"
        self.log = ConsoleLog.create(target)
        self._proc = subprocess.Popen(
            list(argv),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        assert self._proc.stdout is not None
        out = self._proc.stdout.fileno()
        self._pump = Pump(lambda: os.read(out, _CHUNK), self.log, f"console-{target.parent.name}")

    def stop(self) -> None:
        # The whole session the command started (its pid, not reaped yet, names the group):
        # a child left behind would hold the pipe open.
        for sig in (signal.SIGTERM, signal.SIGKILL):
            try:
                os.killpg(self._proc.pid, sig)
            except ProcessLookupError:
                break
            if self._pump.join(timeout_s=5.0):
                break  # end of the pipe: nothing of the session writes any more
        ended = self._pump.join(timeout_s=1.0)
        self.log.close()
        with contextlib.suppress(subprocess.TimeoutExpired):  # stuck in the kernel: Popen reaps it later
            self._proc.wait(timeout=5)
        if ended:  # never under a read still running (the descriptor could be reused)
            assert self._proc.stdout is not None
            self._proc.stdout.close()


class KmsgCapture:
    """The node's kernel log records from now on, written as dmesg prints them."""

    source = "kernel log over ssh (/dev/kmsg, as dmesg -w)"

    def __init__(self, shell: NodeShell, target: Path) -> None:
        uptime = shell.run("cat /proc/uptime", timeout=15)
        self._since_us = int(float(uptime.stdout.split()[0]) * 1e6) if uptime.ok else 0
        self.log = ConsoleLog.create(target)
        self._channel = shell.open_channel("exec cat /dev/kmsg")
        self._thread = threading.Thread(target=self._read, name=f"kmsg-{target.parent.name}", daemon=True)
        self._thread.start()

    def _read(self) -> None:
        # A record without its newline costs one line's buffer, no more; cut shorter than the
        # console's own limit, so the dmesg form of a cut record is not cut again.
        records = LineCutter(MAX_LINE_BYTES // 2)
        try:
            for chunk in received_chunks(self._channel):
                _, lines = records.feed(chunk)
                shown = [text for line in lines if (text := kmsg_line(text_of(line), self._since_us)) is not None]
                if shown:
                    self.log.write("".join(text + "\n" for text in shown).encode())
        finally:
            self.log.close()

    def stop(self) -> None:
        self._channel.close()  # ends the read (a silent node included)
        self._thread.join(timeout=5.0)


def kmsg_line(record: str, since_us: int) -> str | None:
    """A /dev/kmsg record as ``[   12.345678] text``; None for older records and continuations."""
    match = _KMSG.match(record)
    if match is None:
        return None  # " KEY=value" dictionary continuation lines
    usec = int(match.group(1))
    if usec < since_us:
        return None
    return f"[{usec // 1_000_000:5d}.{usec % 1_000_000:06d}] {match.group(2)}"
