"""Node counter samples: parsing what ``swaplab-node sample`` streams from a node.

Each tick of the node-side sampler is the raw text of several /proc files between
``@@ <realtime_ns> <monotonic_ns>`` and ``@@end``. This module turns ticks into flat
records (base units, one key per counter) that go to samples.jsonl, progress lines and,
later, the Prometheus exporter.

The node is a peer, not a friend: a line is at most ``MAX_LINE_BYTES`` (longer ones cut),
a tick at most ``MAX_TICK_LINES`` lines (a longer one is dropped whole), and a section
that does not parse is left out of its record; the ticks after any of these parse.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator

from workers.lines import LineCutter, text_of

PAGE_SIZE = 4096
MAX_TICK_LINES = 2048  # a tick's six files have ~300 lines
VMSTAT_COUNTERS = (
    "pswpin",
    "pswpout",
    "pgmajfault",
    "pgscan_direct",
    "pgscan_kswapd",
    "pgscan_direct_throttle",
    "oom_kill",
    "workingset_refault_anon",
)
_MEMINFO = {
    "MemTotal": "mem_total_bytes",
    "MemFree": "mem_free_bytes",
    "MemAvailable": "mem_available_bytes",
    "SwapTotal": "swap_total_bytes",
    "SwapFree": "swap_free_bytes",
}
Record = dict[str, int | float]


def parse_vmstat(text: str) -> Record:
    """The counters swaplab tracks from /proc/vmstat; allocstall_* zones summed."""
    values: dict[str, int] = {}
    for line in text.splitlines():
        name, _, value = line.partition(" ")
        if value.strip().isdigit():
            values[name] = int(value)
    record: Record = {name: values[name] for name in VMSTAT_COUNTERS if name in values}
    stalls = [value for name, value in values.items() if name.startswith("allocstall")]
    if stalls:
        record["allocstall"] = sum(stalls)
    return record


def parse_meminfo(text: str) -> Record:
    """Memory and swap sizes from /proc/meminfo, in bytes."""
    record: Record = {}
    for line in text.splitlines():
        name, _, rest = line.partition(":")
        if name in _MEMINFO and rest.split():
            record[_MEMINFO[name]] = int(rest.split()[0]) * 1024
    if "swap_total_bytes" in record and "swap_free_bytes" in record:
        record["swap_used_bytes"] = record["swap_total_bytes"] - record["swap_free_bytes"]
    return record


def parse_psi(text: str) -> Record:
    """/proc/pressure/memory: avg10 ratios and total stall time (seconds) for some/full."""
    record: Record = {}
    for line in text.splitlines():
        kind, *fields = line.split()
        pairs = dict(field.split("=", 1) for field in fields if "=" in field)
        if kind in ("some", "full") and "avg10" in pairs and "total" in pairs:
            record[f"psi_{kind}_avg10"] = float(pairs["avg10"]) / 100.0
            record[f"psi_{kind}_seconds"] = int(pairs["total"]) / 1e6
    return record


def parse_rpc_nfs(text: str) -> Record:
    """/proc/net/rpc/nfs: the client's RPC calls and retransmissions."""
    for line in text.splitlines():
        fields = line.split()
        if fields[:1] == ["rpc"] and len(fields) >= 3:
            return {"nfs_rpc_calls": int(fields[1]), "nfs_rpc_retrans": int(fields[2])}
    return {}


def parse_netstat(text: str) -> Record:
    """/proc/net/netstat: TcpExt PFMemallocDrop (packets dropped for lack of reserves)."""
    lines = text.splitlines()
    for header, values in itertools.pairwise(lines):
        if header.startswith("TcpExt:") and values.startswith("TcpExt:"):
            table = dict(zip(header.split()[1:], values.split()[1:], strict=False))
            if "PFMemallocDrop" in table:
                return {"pfmemalloc_drop": int(table["PFMemallocDrop"])}
    return {}


def parse_snmp(text: str) -> Record:
    """/proc/net/snmp: TCP segments sent and retransmitted (over TCP, loss shows here first)."""
    lines = text.splitlines()
    for header, values in itertools.pairwise(lines):
        if header.startswith("Tcp:") and values.startswith("Tcp:"):
            table = dict(zip(header.split()[1:], values.split()[1:], strict=False))
            if table.get("RetransSegs", "").isdigit() and table.get("OutSegs", "").isdigit():
                return {"tcp_retrans_segs": int(table["RetransSegs"]), "tcp_out_segs": int(table["OutSegs"])}
    return {}


_PARSERS = {
    "/proc/vmstat": parse_vmstat,
    "/proc/meminfo": parse_meminfo,
    "/proc/pressure/memory": parse_psi,
    "/proc/net/rpc/nfs": parse_rpc_nfs,
    "/proc/net/netstat": parse_netstat,
    "/proc/net/snmp": parse_snmp,
}


def tick_record(realtime_ns: int, monotonic_ns: int, sections: dict[str, str]) -> Record:
    """One flat record from one tick's raw sections (a section that does not parse adds nothing)."""
    record: Record = {"node_time_ns": realtime_ns, "node_monotonic_ns": monotonic_ns}
    for path, text in sections.items():
        parser = _PARSERS.get(path)
        if parser is None:
            continue
        try:
            record.update(parser(text))
        except (ValueError, IndexError):
            continue  # garbled by the node: the other sections still count
    return record


class TickParser:
    """Incremental parser: feed stdout as it arrives, get complete records back."""

    def __init__(self) -> None:
        self._lines = LineCutter()
        self._header: tuple[int, int] | None = None
        self._sections: dict[str, list[str]] = {}
        self._current: list[str] | None = None
        self._held = 0  # lines of the tick in progress
        self.dropped = 0  # ticks dropped as too long

    @property
    def pending(self) -> int:
        """Bytes held for the line in progress (at most MAX_LINE_BYTES)."""
        return self._lines.pending

    def feed(self, data: str | bytes) -> list[Record]:
        """Consume a chunk; return the records of every tick completed by it."""
        _, lines = self._lines.feed(data.encode() if isinstance(data, str) else data)
        return [record for line in lines if (record := self._line(text_of(line))) is not None]

    def _line(self, line: str) -> Record | None:
        if line.startswith("@@ "):
            parts = line.split()
            valid = len(parts) == 3 and all(part.isdigit() and len(part) <= 20 for part in parts[1:])
            self._start((int(parts[1]), int(parts[2])) if valid else None)
        elif line == "@@end" and self._header is not None:
            sections = {path: "\n".join(body) for path, body in self._sections.items()}
            record = tick_record(*self._header, sections)
            self._start(None)
            return record
        elif self._header is None:
            return None
        elif self._held >= MAX_TICK_LINES:
            self.dropped += 1
            self._start(None)  # a tick without end: dropped, and its lines with it
        elif line.startswith("## "):
            self._held += 1
            self._current = self._sections.setdefault(line[3:].strip(), [])
        elif self._current is not None:
            self._held += 1
            self._current.append(line)
        return None

    def _start(self, header: tuple[int, int] | None) -> None:
        self._header, self._sections, self._current, self._held = header, {}, None, 0


def parse_ticks(text: str) -> Iterator[Record]:
    """Every complete record in a captured sampler output."""
    yield from TickParser().feed(text + "\n")


def swap_moved_bytes(first: Record, last: Record) -> tuple[int, int]:
    """Bytes swapped out and in between two records (from pswpout/pswpin page counts)."""
    out = int(last.get("pswpout", 0)) - int(first.get("pswpout", 0))
    into = int(last.get("pswpin", 0)) - int(first.get("pswpin", 0))
    return out * PAGE_SIZE, into * PAGE_SIZE


def counter_increase(first: Record, last: Record, name: str) -> int:
    """Increase of one counter between two records (0 when absent in both)."""
    return int(last.get(name, 0)) - int(first.get(name, 0))
