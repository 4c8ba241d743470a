"""Lines from a peer, each of bounded length.

Whatever a node or a guest sends line by line (sampler ticks, workload output, a console)
goes through a :class:`LineCutter`: a peer that never sends a newline costs at most
``max_len`` bytes of buffer, and a line longer than that is cut, with a visible marker,
at the newline that finally ends it; the lines after it parse as usual.
"""

from __future__ import annotations

MAX_LINE_BYTES = 4096  # a printk record is at most 1 KiB, a /proc line far less
CUT_MARK = b" [swaplab: line cut, %d bytes left out]"


class LineCutter:
    """Split a byte stream into lines of at most ``max_len`` bytes (marker excluded)."""

    def __init__(self, max_len: int = MAX_LINE_BYTES) -> None:
        self.max_len = max_len
        self._line = bytearray()  # the kept start of the current line
        self._cut = 0  # bytes of the current line left out so far
        self.cut_lines = 0  # how many lines were cut

    @property
    def pending(self) -> int:
        """Bytes held for the line in progress (never more than ``max_len``)."""
        return len(self._line)

    def feed(self, data: bytes) -> tuple[bytes, list[bytes]]:
        """What of ``data`` to pass on as a stream (cut lines shortened and marked), and the
        lines it completed (without their newline)."""
        *complete, rest = data.split(b"\n")
        if not complete:
            return self._take(rest), []
        first = self._take(complete[0])
        mark, line = self._end_line()
        lines = [line, *(part if len(part) <= self.max_len else self._cut_whole(part) for part in complete[1:])]
        later = b"\n".join(lines[1:]) + b"\n" if len(lines) > 1 else b""
        return first + mark + b"\n" + later + self._take(rest), lines

    def flush(self) -> tuple[bytes, bytes | None]:
        """At the end of the stream: the marker the passed-on stream still owes, and the
        last, unterminated line (None when the stream ended with a newline)."""
        if not self._line and not self._cut:
            return b"", None
        return self._end_line()

    def _take(self, piece: bytes) -> bytes:
        """Add ``piece`` to the line in progress, as far as it has room; what was kept."""
        kept = piece[: max(0, self.max_len - len(self._line))]
        self._line += kept
        self._cut += len(piece) - len(kept)
        return kept

    def _cut_whole(self, line: bytes) -> bytes:
        self.cut_lines += 1
        return line[: self.max_len] + CUT_MARK % (len(line) - self.max_len)

    def _end_line(self) -> tuple[bytes, bytes]:
        mark = CUT_MARK % self._cut if self._cut else b""
        self.cut_lines += bool(self._cut)
        line = bytes(self._line) + mark
        self._line.clear()
        self._cut = 0
        return mark, line


def text_of(line: bytes) -> str:
    """A line as text: UTF-8, any invalid byte replaced (a whole line, never half a character)."""
    return line.decode("utf-8", errors="replace")
