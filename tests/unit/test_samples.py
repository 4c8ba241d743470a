"""Parsing the node sampler's tick stream into flat counter records."""

from __future__ import annotations

import pytest

from workers.lines import MAX_LINE_BYTES
from workers.samples import (
    MAX_TICK_LINES,
    TickParser,
    parse_netstat,
    parse_psi,
    parse_snmp,
    parse_ticks,
    swap_moved_bytes,
)

TICK = """@@ 1700000000000000000 5000000000
## /proc/vmstat
nr_free_pages 1000
pswpin 10
pswpout 20
pgmajfault 3
allocstall_dma32 1
allocstall_normal 2
oom_kill 0
## /proc/meminfo
MemTotal:         220000 kB
MemFree:           10000 kB
MemAvailable:      20000 kB
SwapTotal:        524284 kB
SwapFree:         500000 kB
## /proc/pressure/memory
some avg10=12.50 avg60=1.00 avg300=0.00 total=2500000
full avg10=5.00 avg60=0.50 avg300=0.00 total=1000000
## /proc/net/rpc/nfs
net 0 0 0 0
rpc 1234 7 1234
## /proc/net/netstat
TcpExt: SyncookiesSent PFMemallocDrop
TcpExt: 0 4
IpExt: InNoRoutes
IpExt: 0
## /proc/net/snmp
Ip: Forwarding DefaultTTL
Ip: 2 64
Tcp: RtoAlgorithm RtoMin ActiveOpens OutSegs RetransSegs InErrs
Tcp: 1 200 3 5120 9 0
@@end
"""


def test_one_tick_becomes_one_flat_record_in_base_units() -> None:
    [record] = list(parse_ticks(TICK))
    assert record["node_time_ns"] == 1700000000000000000
    assert (record["pswpin"], record["pswpout"], record["allocstall"]) == (10, 20, 3)
    assert record["mem_total_bytes"] == 220000 * 1024
    assert record["swap_used_bytes"] == (524284 - 500000) * 1024
    assert record["psi_some_avg10"] == 0.125
    assert record["psi_full_seconds"] == 1.0
    assert (record["nfs_rpc_calls"], record["nfs_rpc_retrans"]) == (1234, 7)
    assert record["pfmemalloc_drop"] == 4
    assert (record["tcp_out_segs"], record["tcp_retrans_segs"]) == (5120, 9)


def test_ticks_split_across_chunks_are_reassembled() -> None:
    parser = TickParser()
    text = TICK + TICK.replace("pswpout 20", "pswpout 2580")
    records = [r for i in range(0, len(text), 37) for r in parser.feed(text[i : i + 37])]
    assert len(records) == 2
    out, into = swap_moved_bytes(records[0], records[1])
    assert (out, into) == (2560 * 4096, 0)


def test_a_truncated_tick_is_not_a_record() -> None:
    assert list(parse_ticks(TICK.replace("@@end\n", ""))) == []


def test_missing_sections_leave_their_keys_out() -> None:
    assert parse_psi("") == {}
    assert parse_netstat("IpExt: A\nIpExt: 1") == {}
    assert parse_snmp("Tcp: OutSegs RetransSegs\nTcp: 5 x") == {}


def test_a_line_without_end_costs_one_line_and_the_next_tick_parses() -> None:
    parser = TickParser()
    assert parser.feed(b"@@ 1 2\n## /proc/vmstat\npswpout ") == []
    for _ in range(200):  # 12.8 MB without a newline, inside a tick
        assert parser.feed(b"9" * 64_000) == []
        assert parser.pending <= MAX_LINE_BYTES
    cut, after = parser.feed(b"\n@@end\n" + TICK.encode())
    assert "pswpout" not in cut  # the cut line is no number: it adds nothing
    assert after["pswpout"] == 20


def test_a_tick_without_end_is_dropped_and_the_next_one_parses() -> None:
    parser = TickParser()
    endless = "@@ 1 2\n## /proc/vmstat\n" + "pswpout 1\n" * (MAX_TICK_LINES + 10)
    assert parser.feed(endless) == [] and parser.dropped == 1
    [record] = parser.feed(TICK)
    assert record["pswpout"] == 20


@pytest.mark.parametrize(
    "garbled",
    [
        TICK.replace("@@ 1700000000000000000 5000000000", "@@ 17e18 x"),
        TICK.replace("MemTotal:         220000 kB", "MemTotal:         lots kB"),
        TICK.replace("rpc 1234 7 1234", "rpc many 7"),
        TICK.replace("avg10=12.50", "avg10=high"),
        TICK.replace("TcpExt: 0 4", "TcpExt: 0 four"),
    ],
)
def test_a_garbled_tick_never_stops_the_parser(garbled: str) -> None:
    parser = TickParser()
    records = parser.feed(garbled + TICK)
    assert records[-1]["pswpout"] == 20 and len(records) in (1, 2)
