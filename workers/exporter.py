"""The worker's Prometheus exporter: per-node samples of the runs it executes, and
orchestrator figures (runs by verdict, boot seconds, barrier skew, leases held).

Node series are built at scrape time by a custom collector from the latest state of each
live node session, so nothing is left behind when a session ends:

- a session's series are *born at zero* before the node boots (``begin``), so the first
  scrape holds the baseline and an OOM kill in the workload's first second is still an
  increase of the counter;
- the node's own counters (since its boot, and it boots fresh for every run) are exported
  as they are: Prometheus sees one monotonic series per session;
- ``finish`` waits until Prometheus has scraped the final values, then drops the series,
  so a later run of the same node never sees values of an earlier one in its window.

Labels are bounded (lab, node, kernel, scenario; plus kind/phase/verdict enums): a run is
a time window, never a label. The state lives in the worker's process: the worker runs
the threads pool (workers.app), so no multiprocess mode is needed.
"""

from __future__ import annotations

import atexit
import json
import logging
import os
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server
from prometheus_client.metrics_core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from model.console import EventKind
from model.paths import cache_dir
from workers.samples import PAGE_SIZE, Record

log = logging.getLogger(__name__)

NODE_LABELS = ("lab", "node", "kernel", "scenario")
PHASES = ("kernel", "image", "nfs", "boot", "clock", "mount", "barrier", "workload", "collect", "teardown", "done")

# Node counters: exported name (without _total) -> (sample key, scale to base units, help).
NODE_COUNTERS: dict[str, tuple[str, float, str]] = {
    "swaplab_node_swap_in_pages": ("pswpin", 1, "Pages swapped in (vmstat pswpin)."),
    "swaplab_node_swap_out_pages": ("pswpout", 1, "Pages swapped out (vmstat pswpout)."),
    "swaplab_node_swap_in_bytes": ("pswpin", PAGE_SIZE, "Bytes swapped in (pswpin x page size)."),
    "swaplab_node_swap_out_bytes": ("pswpout", PAGE_SIZE, "Bytes swapped out (pswpout x page size)."),
    "swaplab_node_major_faults": ("pgmajfault", 1, "Major page faults (vmstat pgmajfault)."),
    "swaplab_node_pgscan_direct": ("pgscan_direct", 1, "Pages scanned by direct reclaim."),
    "swaplab_node_pgscan_kswapd": ("pgscan_kswapd", 1, "Pages scanned by kswapd."),
    "swaplab_node_pgscan_direct_throttle": ("pgscan_direct_throttle", 1, "Direct reclaim throttle events."),
    "swaplab_node_allocation_stalls": ("allocstall", 1, "Allocation stalls, all zones (vmstat allocstall_*)."),
    "swaplab_node_oom_kills": ("oom_kill", 1, "OOM kills (vmstat oom_kill)."),
    "swaplab_node_workingset_refault_anon": ("workingset_refault_anon", 1, "Anonymous workingset refaults."),
    "swaplab_node_psi_memory_some_seconds": ("psi_some_seconds", 1, "PSI memory 'some' stall time."),
    "swaplab_node_psi_memory_full_seconds": ("psi_full_seconds", 1, "PSI memory 'full' stall time."),
    "swaplab_node_nfs_rpc_calls": ("nfs_rpc_calls", 1, "NFS client RPC calls (/proc/net/rpc/nfs)."),
    "swaplab_node_nfs_rpc_retransmissions": ("nfs_rpc_retrans", 1, "NFS client RPC retransmissions."),
    "swaplab_node_pfmemalloc_drops": ("pfmemalloc_drop", 1, "Packets dropped for lack of memory reserves."),
    "swaplab_node_tcp_out_segments": ("tcp_out_segs", 1, "TCP segments sent (/proc/net/snmp OutSegs)."),
    "swaplab_node_tcp_retransmitted_segments": ("tcp_retrans_segs", 1, "TCP segments retransmitted (RetransSegs)."),
}
# Node gauges: exported name -> (sample key, help). No value before the first sample.
NODE_GAUGES: dict[str, tuple[str, str]] = {
    "swaplab_node_memory_free_bytes": ("mem_free_bytes", "MemFree."),
    "swaplab_node_memory_available_bytes": ("mem_available_bytes", "MemAvailable."),
    "swaplab_node_swap_used_bytes": ("swap_used_bytes", "SwapTotal - SwapFree."),
    "swaplab_node_psi_memory_some_avg10_ratio": ("psi_some_avg10", "PSI memory 'some' avg10, as a ratio."),
    "swaplab_node_psi_memory_full_avg10_ratio": ("psi_full_avg10", "PSI memory 'full' avg10, as a ratio."),
}
CONSOLE_EVENTS = "swaplab_node_console_events"
SAMPLES = "swaplab_node_samples"
SAMPLE_AGE = "swaplab_node_sample_age_seconds"
WORKLOAD_PROGRESS = "swaplab_node_workload_progress_ratio"
WORKLOAD_DONE = "swaplab_node_workload_done"
PHASE = "swaplab_node_phase"


@dataclass
class NodeSeries:
    """The live state of one node session, as the collector exports it."""

    labels: tuple[str, str, str, str]
    counters: Record = field(default_factory=dict)
    gauges: Record = field(default_factory=dict)
    console: dict[str, int] = field(default_factory=lambda: {kind.value: 0 for kind in EventKind})
    samples: int = 0
    last_sample: float | None = None
    progress: float = 0.0
    done: float = 0.0
    phase: str = "kernel"

    def update_sample(self, record: Record) -> None:
        """Fold one sampler tick in (the node's cumulative counters, current gauges)."""
        for key, value in record.items():
            self.counters[key] = value
        self.samples += 1
        self.last_sample = time.time()


class NodeMetrics(Collector):
    """Custom collector over the live node sessions of this process."""

    def __init__(self) -> None:
        self._lock = threading.Condition()
        self._series: dict[tuple[str, str], NodeSeries] = {}
        self._scrapes = 0
        self._last_scrape = 0.0

    def begin(self, lab: str, node: str, kernel: str, scenario: str) -> NodeSeries:
        """Start a session's series at zero (replacing any earlier session of the node)."""
        series = NodeSeries((lab, node, kernel, scenario))
        with self._lock:
            self._series[(lab, node)] = series
        return series

    def finish(self, series: NodeSeries, wait_s: float = 5.0) -> None:
        """Drop a session's series once a scrape has read its final values."""
        with self._lock:
            seen = self._scrapes
            # Wait only when someone scrapes us: without Prometheus, there is nobody to wait for.
            if self._recently_scraped():
                self._lock.wait_for(lambda: self._scrapes >= seen + 2, wait_s)
            if self._series.get((series.labels[0], series.labels[1])) is series:
                del self._series[(series.labels[0], series.labels[1])]

    def _recently_scraped(self) -> bool:
        return self._scrapes > 0 and time.monotonic() - self._last_scrape < 10.0

    def collect(self) -> Iterator[Metric]:
        with self._lock:
            self._scrapes += 1
            self._last_scrape = time.monotonic()
            self._lock.notify_all()
            live = list(self._series.values())
        yield from _node_families(live)


def _node_families(live: list[NodeSeries]) -> Iterator[Metric]:
    now = time.time()
    for name, (key, scale, help_text) in NODE_COUNTERS.items():
        family = CounterMetricFamily(name, help_text, labels=NODE_LABELS)
        for s in live:
            family.add_metric(s.labels, float(s.counters.get(key, 0)) * scale)
        yield family
    for name, (key, help_text) in NODE_GAUGES.items():
        gauge = GaugeMetricFamily(name, help_text, labels=NODE_LABELS)
        for s in live:
            if key in s.counters:
                gauge.add_metric(s.labels, float(s.counters[key]))
        yield gauge
    events = CounterMetricFamily(CONSOLE_EVENTS, "Console events by kind.", labels=(*NODE_LABELS, "kind"))
    samples = CounterMetricFamily(SAMPLES, "Sampler ticks received from the node.", labels=NODE_LABELS)
    age = GaugeMetricFamily(SAMPLE_AGE, "Seconds since the node's sampler last reported.", labels=NODE_LABELS)
    progress = GaugeMetricFamily(WORKLOAD_PROGRESS, "Workload progress (write + verify).", labels=NODE_LABELS)
    done = GaugeMetricFamily(WORKLOAD_DONE, "1 once the workload finished and verified.", labels=NODE_LABELS)
    phase = GaugeMetricFamily(PHASE, "1 for the node session's current phase.", labels=(*NODE_LABELS, "phase"))
    for s in live:
        for kind, count in s.console.items():
            events.add_metric((*s.labels, kind), float(count))
        samples.add_metric(s.labels, float(s.samples))
        if s.last_sample is not None:
            age.add_metric(s.labels, max(0.0, now - s.last_sample))
        progress.add_metric(s.labels, s.progress)
        done.add_metric(s.labels, s.done)
        for name in PHASES:
            phase.add_metric((*s.labels, name), 1.0 if s.phase == name else 0.0)
    yield from (events, samples, age, progress, done, phase)


REGISTRY = CollectorRegistry()
NODES = NodeMetrics()
REGISTRY.register(NODES)
RUNS = Counter("swaplab_runs", "Runs judged, by verdict.", ("lab", "kernel", "scenario", "verdict"), registry=REGISTRY)
BOOT_SECONDS = Histogram(
    "swaplab_node_boot_seconds",
    "From powering a node on to SSH answering.",
    ("lab", "node", "kernel"),
    buckets=(2, 5, 10, 15, 20, 30, 45, 60, 90, 120, 180, 240),
    registry=REGISTRY,
)
START_SKEW = Gauge(
    "swaplab_barrier_start_skew_seconds",
    "Spread of the nodes' workload start instants in the last multi-node run.",
    ("lab", "scenario"),
    registry=REGISTRY,
)
FAULT_ACTIVE = Gauge(
    "swaplab_fault_active",
    "1 while a fault this worker injected disturbs a node's NFS path (model.faults), else 0.",
    ("lab", "node", "kind"),
    registry=REGISTRY,
)
LEASES_HELD = Gauge("swaplab_leases_held", "Node leases held by this worker's tasks.", ("lab",), registry=REGISTRY)


def start_metrics_server(name: str) -> tuple[str, int]:
    """Serve /metrics (``SWAPLAB_METRICS_ADDR``:``SWAPLAB_METRICS_PORT``; port 0 picks a free
    one) and announce it to a local Prometheus through a file_sd target file."""
    addr = os.environ.get("SWAPLAB_METRICS_ADDR", "127.0.0.1")
    port = int(os.environ.get("SWAPLAB_METRICS_PORT", "0"))
    server, _thread = start_http_server(port, addr=addr, registry=REGISTRY)
    bound = int(server.server_port)
    _announce(name, f"{'127.0.0.1' if addr in ('0.0.0.0', '') else addr}:{bound}")
    log.info("metrics on http://%s:%d/metrics", addr, bound)
    return addr, bound


def targets_dir() -> Path:
    """Where file_sd target files live (``SWAPLAB_PROMETHEUS_SD_DIR``)."""
    default = cache_dir() / "prometheus" / "targets"
    return Path(os.environ.get("SWAPLAB_PROMETHEUS_SD_DIR", str(default)))


def _announce(name: str, address: str) -> None:
    directory = targets_dir()
    directory.mkdir(parents=True, exist_ok=True)
    for stale in directory.glob("*.json"):
        if not _pid_alive(stale):
            stale.unlink(missing_ok=True)  # a worker that died without saying goodbye
    target = directory / f"{_safe(name)}.{os.getpid()}.json"
    tmp = target.with_suffix(".tmp")
    tmp.write_text(json.dumps([{"targets": [address], "labels": {}}]))
    tmp.replace(target)  # Prometheus watches the directory: never show it half a file
    atexit.register(lambda: target.unlink(missing_ok=True))


def _pid_alive(path: Path) -> bool:
    pid = path.stem.rsplit(".", 1)[-1]
    return pid.isdigit() and Path(f"/proc/{pid}").exists()


def _safe(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-_" else "_" for c in name)


def count_run(lab: str, kernel: str, scenario: str, verdict: str) -> None:
    """Count a judged run. A label set seen for the first time is exported at zero first,
    and counted a few scrapes later, so Prometheus sees the increase (a series born at 1
    would show none)."""
    child = RUNS.labels(lab, kernel, scenario, verdict)
    key = (lab, kernel, scenario, verdict)
    with _SEEN_LOCK:
        first = key not in _SEEN_RUNS
        _SEEN_RUNS.add(key)
    if first:
        timer = threading.Timer(NEW_SERIES_DELAY_S, child.inc)
        timer.daemon = True
        timer.start()
    else:
        child.inc()


NEW_SERIES_DELAY_S = 3.0
_SEEN_RUNS: set[tuple[str, str, str, str]] = set()
_SEEN_LOCK = threading.Lock()
