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
"""

from __future__ import annotations

import re
import subprocess
import threading
from pathlib import Path
from typing import BinaryIO, Protocol

from workers.node_ssh import NodeShell, received_chunks

_POLL_S = 0.2
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
        self._target = target
        self._offset = source_file.stat().st_size if source_file.exists() else 0
        self._stopped = threading.Event()
        self._thread = threading.Thread(target=self._follow, name=f"console-{target.parent.name}", daemon=True)
        self._thread.start()

    def _follow(self) -> None:
        with self._target.open("ab") as out:
            while not self._stopped.wait(_POLL_S):
                self._copy_new(out)
            self._copy_new(out)

    def _copy_new(self, out: BinaryIO) -> None:
        try:
            with self._source_file.open("rb") as src:
                src.seek(self._offset)
                chunk = src.read()
        except OSError:
            return
        self._offset += len(chunk)
        out.write(chunk)
        out.flush()

    def stop(self) -> None:
        self._stopped.set()
        self._thread.join(timeout=5.0)


class CommandCapture:
    """A host command's output, as long as the session runs."""

    def __init__(self, argv: tuple[str, ...], target: Path) -> None:
        self.source = f"command {' '.join(argv)}"
        with target.open("ab") as out:
            self._proc = subprocess.Popen(
                list(argv), stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
            )

    def stop(self) -> None:
        if self._proc.poll() is None:
            self._proc.terminate()
            try:
                self._proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait()


class KmsgCapture:
    """The node's kernel log records from now on, written as dmesg prints them."""

    source = "kernel log over ssh (/dev/kmsg, as dmesg -w)"

    def __init__(self, shell: NodeShell, target: Path) -> None:
        uptime = shell.run("cat /proc/uptime", timeout=15)
        self._since_us = int(float(uptime.stdout.split()[0]) * 1e6) if uptime.ok else 0
        self._channel = shell.open_channel("exec cat /dev/kmsg")
        self._target = target
        self._thread = threading.Thread(target=self._read, name=f"kmsg-{target.parent.name}", daemon=True)
        self._thread.start()

    def _read(self) -> None:
        pending = ""
        with self._target.open("a", encoding="utf-8") as out:
            for chunk in received_chunks(self._channel):
                pending += chunk.decode("utf-8", errors="replace")
                *lines, pending = pending.split("\n")
                for line in lines:
                    shown = kmsg_line(line, self._since_us)
                    if shown is not None:
                        out.write(shown + "\n")
                out.flush()

    def stop(self) -> None:
        self._channel.close()
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
