"""Exporter cost: how long one /metrics scrape takes and how large it is with N live node
sessions in a worker. Prometheus scrapes every second, so a scrape must stay far below
that (and below the 1 s scrape timeout) at the largest run a worker holds.

    .venv/bin/python bench/exporter.py [--n 1 10 100 500] [--json]

Figures on stdout (median of 20 scrapes over real HTTP on 127.0.0.1).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
import urllib.request

from workers import exporter

# One tick as the sampler produces it on a node under swap (every counter present).
TICK = {
    "pswpin": 98_304, "pswpout": 161_000, "pgmajfault": 90_000, "pgscan_direct": 400_000,
    "pgscan_kswapd": 900_000, "pgscan_direct_throttle": 3, "oom_kill": 0, "workingset_refault_anon": 80_000,
    "allocstall": 1_200, "mem_free_bytes": 5 << 20, "mem_available_bytes": 9 << 20, "swap_used_bytes": 300 << 20,
    "psi_some_avg10": 0.4, "psi_full_avg10": 0.2, "psi_some_seconds": 40.0, "psi_full_seconds": 20.0,
    "nfs_rpc_calls": 200_000, "nfs_rpc_retrans": 12, "pfmemalloc_drop": 0,
}  # fmt: skip


def measure(url: str, nodes: int) -> dict[str, float]:
    sessions = [exporter.NODES.begin("bench", f"node{i}", "6.1.0-56-amd64", "pressure") for i in range(nodes)]
    for session in sessions:
        session.update_sample(dict(TICK))
    times, body = [], b""
    for _ in range(20):
        started = time.perf_counter()
        with urllib.request.urlopen(url, timeout=10) as response:
            body = response.read()
        times.append(time.perf_counter() - started)
    for session in sessions:
        exporter.NODES.finish(session, wait_s=0)
    series = sum(1 for line in body.decode().splitlines() if 'lab="bench"' in line)
    return {"nodes": nodes, "scrape_ms": statistics.median(times) * 1e3, "bytes": len(body), "series": series}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, nargs="+", default=[1, 10, 100, 500])
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    os.environ["SWAPLAB_PROMETHEUS_SD_DIR"] = tempfile.mkdtemp(prefix="swaplab-bench-")  # announce nowhere real
    _addr, port = exporter.start_metrics_server("bench")
    rows = [measure(f"http://127.0.0.1:{port}/metrics", n) for n in args.n]
    if args.json:
        print(json.dumps(rows, indent=2))
        return
    print(f"{'nodes':>6} {'scrape ms':>10} {'KiB':>8} {'series/node':>12} {'ms/node':>8}")
    for row in rows:
        nodes = max(1, int(row["nodes"]))
        print(
            f"{row['nodes']:>6} {row['scrape_ms']:>10.2f} {row['bytes'] / 1024:>8.1f} "
            f"{row['series'] / nodes:>12.0f} {row['scrape_ms'] / nodes:>8.2f}"
        )


if __name__ == "__main__":
    main()
