"""Parsing the node sampler's tick stream into flat counter records."""

from __future__ import annotations

from workers.samples import TickParser, parse_netstat, parse_psi, parse_snmp, parse_ticks, swap_moved_bytes

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
