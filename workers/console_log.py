"""console.log under a fixed size, whatever the guest prints: its head and its tail.

A guest in a WARN loop prints for as long as the run lasts. Whatever the source (QEMU's
serial port through a socket pair, a lab's console file or command, /dev/kmsg over SSH),
the node's console goes through one :class:`ConsoleLog`, which

- cuts lines longer than ``MAX_LINE_BYTES`` (with a marker; the next lines parse);
- keeps on disk the first ``HEAD_BYTES`` and the last ``TAIL_BYTES`` (from a line start):
  once more than twice ``TAIL_BYTES`` followed the head, the file is rewritten — a new
  file renamed over the old one, so a reader sees one or the other whole — as the head, a
  marker saying how many bytes were left out with the event lines among them (the first
  ``EVENTS_PER_KIND`` of each kind), and the tail. The file never exceeds
  ``HEAD_BYTES + 2 * TAIL_BYTES`` plus that marker;
- classifies every line as it passes, left out or not: the counts per kind and the events
  kept (:class:`model.console.EventTally`) are exact whatever was cut. The live event
  counter (``workers.coordination.streams.ConsoleTail``) and the node result read them here, found by
  the file's path (:meth:`ConsoleLog.find`) in this process.

Readers never take the file whole: :func:`read_head_tail` and :func:`tail_lines` read a
bounded head and tail of any console file, ours or not.
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import stat
import threading
import time
import weakref
from collections.abc import Callable
from pathlib import Path
from typing import ClassVar

from model.console import EventKind, EventTally, may_hold_events
from workers.lines import MAX_LINE_BYTES, LineCutter, text_of

log = logging.getLogger(__name__)
MIB = 1024 * 1024
HEAD_BYTES = 1 * MIB  # a boot prints ~50 KiB: the head holds the boot and the run's start
TAIL_BYTES = 1 * MIB
READ_HEAD_BYTES = 2 * MIB  # what read_head_tail takes of a file at most (ours are smaller)
READ_TAIL_BYTES = 2 * MIB
TAIL_LINES = 40  # the console tail a node result carries
TAIL_LINE_CHARS = 500
_CHUNK = 64 * 1024
_SETTLE_BELOW = 4096
_SETTLE_S = 0.005
_SO_SNDBUFFORCE = getattr(socket, "SO_SNDBUFFORCE", 32)  # root may pass net.core.wmem_max
SERIAL_SEND_BUFFER = 8 * MIB  # the kernel doubles it: ~27,000 one-byte writes
_OPEN_NEW = os.O_RDWR | os.O_APPEND | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW | os.O_CLOEXEC


class BoundedLog:
    """An append-only log of a peer's output that never holds more than its head, a
    marker and twice its tail on disk; lines longer than ``max_line`` are cut."""

    def __init__(
        self, path: Path, head_bytes: int | None = None, tail_bytes: int | None = None, max_line: int = MAX_LINE_BYTES
    ) -> None:
        self.path = path
        # HEAD_BYTES and TAIL_BYTES when not given (read now, so a test may make them small).
        self.head_bytes = HEAD_BYTES if head_bytes is None else head_bytes
        self.tail_bytes = TAIL_BYTES if tail_bytes is None else tail_bytes
        self._cutter = LineCutter(max_line)
        self._lock = threading.Lock()
        self._fd: int | None = _open_new(path)
        self._emitted = 0  # bytes of the (line-cut) stream written so far
        self._tail_from = self.head_bytes  # stream offset where the file's tail starts
        self._section = b""  # what the file holds between its head and its tail
        self._line_start = 0  # stream offset of the line in progress
        self.cut_bytes = 0  # bytes of the stream left out of the file
        self.disk_error: str | None = None  # why the file stopped growing, if it did

    def write(self, data: bytes) -> None:
        """Append what the peer sent (nothing once closed)."""
        with self._lock:
            if self._fd is None:
                return
            kept, lines = self._cutter.feed(data)
            if lines:
                self._lines(lines, self._line_start)
                self._line_start += sum(map(len, lines)) + len(lines)
            self._append(kept)

    def close(self) -> None:
        """The peer is done: its last unterminated line is taken as a line; the file stays."""
        with self._lock:
            if self._fd is None:
                return
            mark, last = self._cutter.flush()
            if last is not None:
                self._lines([last], self._line_start)
            self._append(mark)
            os.close(self._fd)
            self._fd = None

    @property
    def disk_bytes_max(self) -> int:
        """The most the file can hold: head, twice the tail, the cut marker (at most 256 KiB)."""
        return self.head_bytes + 2 * self.tail_bytes + self._cutter.max_len + 256 * 1024

    def _lines(self, lines: list[bytes], offset: int) -> None:
        """Hook: complete lines of the stream, the first at stream ``offset``."""

    def _cut_section(self, tail_from: int) -> bytes:
        """What stands for the stream left out, from the head's end to ``tail_from``."""
        return b"[swaplab: %d bytes left out here: this log keeps its first %d and last %d bytes]\n" % (
            self.cut_bytes,
            self.head_bytes,
            self.tail_bytes,
        )

    def _append(self, data: bytes) -> None:
        if not data or self._fd is None or self.disk_error is not None:
            return
        try:
            _write_all(self._fd, data)
            self._emitted += len(data)
            if self._emitted - self._tail_from > 2 * self.tail_bytes:
                self._compact()
        except OSError as err:
            # A full disk must not stop the reading: the peer (a guest's serial port) would
            # wait on us. Lines are still classified; the file keeps what it has.
            self.disk_error = f"{type(err).__name__}: {err}"

    def _file_pos(self, stream_offset: int) -> int:
        return self.head_bytes + len(self._section) + (stream_offset - self._tail_from)

    def _compact(self) -> None:
        assert self._fd is not None
        start = self._emitted - self.tail_bytes
        newline = os.pread(self._fd, self._cutter.max_len + 256, self._file_pos(start)).find(b"\n")
        start += newline + 1 if newline >= 0 else 0
        self.cut_bytes = start - self.head_bytes
        separator = b"" if os.pread(self._fd, 1, self.head_bytes - 1) == b"\n" else b"\n"
        section = separator + self._cut_section(start)
        tmp = self.path.with_name(f".{self.path.name}.cutting")
        tmp.unlink(missing_ok=True)
        new = _open_new(tmp)
        try:
            _copy(self._fd, new, 0, self.head_bytes)
            _write_all(new, section)
            _copy(self._fd, new, self._file_pos(start), self._emitted - start)
            os.replace(tmp, self.path)
        except OSError:
            os.close(new)
            tmp.unlink(missing_ok=True)
            raise
        os.close(self._fd)
        self._fd, self._tail_from, self._section = new, start, section


class ConsoleLog(BoundedLog):
    """A node's console.log: bounded on disk, every line classified as it passes."""

    _current: ClassVar[weakref.WeakValueDictionary[str, ConsoleLog]] = weakref.WeakValueDictionary()
    _current_lock: ClassVar[threading.Lock] = threading.Lock()

    def __init__(self, path: Path, head_bytes: int | None = None, tail_bytes: int | None = None) -> None:
        self._lines_seen = 0
        self._tally = EventTally()
        self._kept_at: list[int] = []  # stream offset of each kept event's line
        super().__init__(path, head_bytes, tail_bytes)

    @classmethod
    def create(cls, path: Path, head_bytes: int | None = None, tail_bytes: int | None = None) -> ConsoleLog:
        """A fresh console at ``path`` (emptied), the one :meth:`find` answers from now on."""
        log = cls(path, head_bytes, tail_bytes)
        with cls._current_lock:
            cls._current[_key(path)] = log
        return log

    @classmethod
    def find(cls, path: Path) -> ConsoleLog | None:
        """The console this process writes at ``path`` (while its writer lives), else None."""
        with cls._current_lock:
            return cls._current.get(_key(path))

    @classmethod
    def forget(cls, path: Path) -> None:
        """``find`` answers None for ``path`` until a new console is created there."""
        with cls._current_lock:
            cls._current.pop(_key(path), None)

    def counts(self) -> dict[EventKind, int]:
        """Events seen so far, per kind (lines left out of the file included)."""
        with self._lock:
            return dict(self._tally.counts)

    def tally(self) -> EventTally:
        """The events kept and the counts, as they stand."""
        with self._lock:
            return self._tally.copy()

    def _lines(self, lines: list[bytes], offset: int) -> None:
        first = self._lines_seen + 1
        self._lines_seen += len(lines)
        if not may_hold_events(b"\n".join(lines)):
            return
        seen = time.time()
        for number, line in enumerate(lines, start=first):
            if may_hold_events(line) and self._tally.add_line(number, text_of(line), seen):
                self._kept_at.append(offset)
            offset += len(line) + 1

    def _cut_section(self, tail_from: int) -> bytes:
        left_out = [
            event.text.encode()
            for event, at in zip(self._tally.kept, self._kept_at, strict=True)
            if self.head_bytes <= at < tail_from
        ]
        head = (
            b"[swaplab: %d bytes of console left out here (this log keeps its first %d and last %d bytes); "
            b"%d event lines among them follow]\n" % (self.cut_bytes, self.head_bytes, self.tail_bytes, len(left_out))
        )
        return head + b"".join(line + b"\n" for line in left_out) + b"[swaplab: end of the left-out part]\n"


class Pump:
    """Copy what ``read`` returns into ``log`` in a daemon thread until it returns b"" or
    fails; the log is closed then. After a small chunk it waits ``settle_s`` for more to
    gather (only where the source buffers far more than that wait brings)."""

    def __init__(self, read: Callable[[], bytes], log: BoundedLog, name: str, settle_s: float = 0.0) -> None:
        self._read = read
        self._settle_s = settle_s
        self.log = log
        self.failed = False  # a chunk could not be kept (logged once)
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        try:
            while chunk := self._read():
                self._keep(chunk)
                if self._settle_s and len(chunk) < _SETTLE_BELOW:
                    time.sleep(self._settle_s)
        except (OSError, ValueError):
            pass  # the source went away (closed under us): what came is in the log
        finally:
            self.log.close()

    def _keep(self, chunk: bytes) -> None:
        try:
            self.log.write(chunk)
        except Exception:  # never stop reading: a guest whose reader stops waits on its UART
            if not self.failed:
                log.exception("%s: console bytes could not be kept; reading on", self.log.path)
            self.failed = True

    def join(self, timeout_s: float) -> bool:
        """Wait for the source to end; True when it did."""
        self._thread.join(timeout_s)
        return not self._thread.is_alive()


class SocketConsole:
    """A console that arrives on a socket pair: one end for the program that prints it
    (QEMU's serial chardev), the other read here into a :class:`ConsoleLog`.

    A guest's UART waits for this reader (QEMU holds a character until the socket takes
    it), so the reader never stops while the guest may print: a thread reads whatever
    comes (what cannot be kept is dropped, never left unread), and when this process dies
    its end closes and QEMU drops what the guest prints from then on.
    """

    def __init__(self, target: Path) -> None:
        self.log = ConsoleLog.create(target)
        self._ours, self._theirs = socket.socketpair()
        # A UART sends a byte per write, and each write costs ~600 bytes of the sender's
        # buffer: the default 208 KiB holds ~300 characters. With a large one (root only) the
        # reader can let bytes gather instead of waking for every few of them.
        self._settle_s = 0.0
        with contextlib.suppress(OSError):  # not root: the default, read at once
            self._theirs.setsockopt(socket.SOL_SOCKET, _SO_SNDBUFFORCE, SERIAL_SEND_BUFFER)
            self._settle_s = _SETTLE_S
        self._pump: Pump | None = None

    def program_fd(self) -> int:
        """The descriptor to hand to the program (pass_fds); valid until :meth:`start`."""
        return self._theirs.fileno()

    def start(self) -> None:
        """The program has its copy: drop ours and start reading."""
        self._theirs.close()
        name = f"console-{self.log.path.parent.name}"
        self._pump = Pump(lambda: self._ours.recv(_CHUNK), self.log, name, self._settle_s)

    def stop(self, timeout_s: float = 5.0) -> None:
        """After the program exited: read what is left, close (idempotent)."""
        self._theirs.close()
        if self._pump is not None and not self._pump.join(timeout_s):
            self._ours.shutdown(socket.SHUT_RDWR)  # a program that lives on: stop listening to it
            self._pump.join(timeout_s)
        self._ours.close()
        self.log.close()


def read_head_tail(path: Path, head: int = READ_HEAD_BYTES, tail: int = READ_TAIL_BYTES) -> str:
    """A console file as text, never more than its first ``head`` and last ``tail`` bytes
    (with a marker between them when something was not read); "" when it cannot be read."""
    fd = _open_regular(path)
    if fd is None:
        return ""
    with os.fdopen(fd, "rb") as console:
        size = os.fstat(fd).st_size
        if size <= head + tail:
            data = console.read(head + tail)
        else:
            first = console.read(head)
            console.seek(size - tail)
            data = (
                first + b"\n[swaplab: %d bytes of console not read here]\n" % (size - head - tail) + console.read(tail)
            )
    return data.decode("utf-8", errors="replace")


def tail_lines(path: Path, count: int = TAIL_LINES, width: int = TAIL_LINE_CHARS, window: int = 64 * 1024) -> list[str]:
    """The last ``count`` lines of a console file (each at most ``width`` characters),
    from its last ``window`` bytes."""
    fd = _open_regular(path)
    if fd is None:
        return []
    with os.fdopen(fd, "rb") as console:
        size = os.fstat(fd).st_size
        console.seek(max(0, size - window))
        lines = console.read(window).decode("utf-8", errors="replace").splitlines()
    if size > window and lines:
        lines = lines[1:]  # the first one starts mid-line
    return [line[:width] for line in lines[-count:]]


def _key(path: Path) -> str:
    return os.path.abspath(path)


def _open_new(path: Path) -> int:
    return os.open(path, _OPEN_NEW, 0o644)


def _open_regular(path: Path) -> int | None:
    """A read descriptor for ``path`` if it is a regular file (never a FIFO that blocks)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError:
        return None
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        return None
    return fd


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def _copy(src: int, dst: int, offset: int, length: int) -> None:
    end = offset + length
    while offset < end:
        chunk = os.pread(src, min(_CHUNK, end - offset), offset)
        if not chunk:
            return
        _write_all(dst, chunk)
        offset += len(chunk)
