"""Performance figures of one node run: what they are, and how they come from samples.

A figure is one number per node run with a unit and a direction (is higher better?),
computed from the node's own 1 Hz samples over the **workload window**: from the last
sample at or before the workload started to the first sample at or after it ended. The
same window is read back from Prometheus when the run is judged (orchestrator.evaluation),
and both values are kept, so a figure that the two sources disagree on is visible.

Rates are counter increases over the window divided by the workload's elapsed seconds on
the node's monotonic clock (host time or guest time, as the run's ``Timing`` says). Only
runs that passed contribute figures to comparisons; the others keep theirs for inspection.

The time series kept for plots (``node_series``) are the same samples as rates between
consecutive ticks, at most ``SERIES_MAX_POINTS`` points.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

MIB = 1 << 20
PAGE_SIZE = 4096
SERIES_MAX_POINTS = 600
# Node samples and Prometheus' scrapes of them may differ by one sample at each end of the
# window (the exporter serves the latest tick; scrapes are 1 s apart): within 5 %, or
# an absolute 0.01 in the figure's unit for figures near zero.
TOLERANCE_REL = 0.05
TOLERANCE_ABS = 0.01
Record = dict[str, int | float]
Better = Literal["higher", "lower"]
# Which clock a node's guest runs on. "host": the guest's clock follows the host's, and a
# host busy elsewhere slows the guest's work in it. "guest": QEMU counts instructions
# (``-icount shift=GUEST_ICOUNT_SHIFT,sleep=on``): each instruction advances the guest's
# clock by 2**shift ns whatever the host's speed, and an idle guest (waiting on NFS) sees
# real time pass. Figures of the two modes are different quantities, never compared.
Timing = Literal["host", "guest"]
TIMINGS: tuple[Timing, ...] = ("host", "guest")
# Fixed: ``shift=auto`` would track the host's speed again. At 2**5 ns an instruction a
# busy guest's clock ran 2-5x as fast as the host's on this 2-core machine (a workload of
# 165 guest seconds took 54 host seconds); an idle guest's keeps real time.
GUEST_ICOUNT_SHIFT = 5
# The most guest seconds a host second was measured to hold. Timers the guest's kernel
# judges by are stretched by this much on guest time, so none fires sooner in host time.
GUEST_PACE_MAX = 5
# The kernel's default kernel.hung_task_timeout_secs (Debian's too).
HUNG_TASK_TIMEOUT_S = 120


def timing_label(timing: Timing) -> str:
    """The mode as records keep it: guest time names its shift (another shift is another clock)."""
    return f"guest-icount{GUEST_ICOUNT_SHIFT}" if timing == "guest" else "host"


def guest_clock_sysctl(timing: Timing) -> dict[str, int]:
    """The node sysctls a mode needs under the campaign's own (which win).

    On guest time a task blocked 120 guest seconds may have waited only 24 host seconds:
    the hung-task report ("blocked for more than N seconds", a failing criterion) is
    pushed out to N x GUEST_PACE_MAX guest seconds, at least N host seconds.
    """
    return {"kernel.hung_task_timeout_secs": HUNG_TASK_TIMEOUT_S * GUEST_PACE_MAX} if timing == "guest" else {}


@dataclass(frozen=True)
class Figure:
    """One figure: its name, unit, direction, and what it is computed from."""

    name: str
    unit: str
    better: Better
    title: str
    # Counter sample key whose increase over the window is the numerator (None: special).
    counter: str | None
    scale: float = 1.0  # numerator units per counter unit
    per: str = "second"  # denominator: "second" of the window, or another counter's increase


FIGURES: tuple[Figure, ...] = (
    Figure("swap_out_mibps", "MiB/s", "higher", "swap-out throughput", "pswpout", PAGE_SIZE / MIB),
    Figure("swap_in_mibps", "MiB/s", "higher", "swap-in throughput", "pswpin", PAGE_SIZE / MIB),
    Figure("workload_wall_s", "s", "lower", "workload wall time", None),
    Figure("psi_full_share", "ratio", "lower", "PSI memory full share", "psi_full_seconds"),
    Figure("allocstall_per_s", "1/s", "lower", "allocation stalls", "allocstall"),
    Figure("direct_throttle_per_s", "1/s", "lower", "direct-reclaim throttling", "pgscan_direct_throttle"),
    Figure("majfault_per_s", "1/s", "lower", "major faults", "pgmajfault"),
    Figure(
        "nfs_retrans_per_call",
        "ratio",
        "lower",
        "NFS RPC retransmissions per call",
        "nfs_rpc_retrans",
        per="nfs_rpc_calls",
    ),
    Figure("tcp_retrans_per_s", "segments/s", "lower", "TCP retransmitted segments", "tcp_retrans_segs"),
)
FIGURE_NAMES = tuple(figure.name for figure in FIGURES)
BY_NAME = {figure.name: figure for figure in FIGURES}


@dataclass(frozen=True)
class Window:
    """The workload window in host time (epoch seconds) and the samples bounding it."""

    start: float
    end: float
    first: Record
    last: Record

    @property
    def seconds(self) -> float:
        return self.end - self.start


def host_seconds(record: Record) -> float | None:
    """When the worker received a sample, in host epoch seconds."""
    value = record.get("host_time_ns")
    return None if value is None else float(value) / 1e9


def workload_window(samples: Sequence[Record], started_s: float | None, elapsed_s: float | None) -> Window | None:
    """The samples bounding a workload that started at ``started_s`` (host time) and ran
    ``elapsed_s`` host seconds; None without a workload or two bounding samples."""
    if started_s is None or elapsed_s is None or elapsed_s <= 0:
        return None
    return window_between(samples, started_s, started_s + elapsed_s)


def window_between(samples: Sequence[Record], start_s: float, end_s: float) -> Window | None:
    """The last sample at or before ``start_s`` and the first at or after ``end_s`` (host
    receive times); None without both."""
    timed = [(t, record) for record in samples if (t := host_seconds(record)) is not None]
    before = [pair for pair in timed if pair[0] <= start_s]
    after = [pair for pair in timed if pair[0] >= end_s]
    if not before or not after:
        return None
    (t0, first), (t1, last) = before[-1], after[0]
    return Window(t0, t1, first, last) if t1 > t0 else None


def increase(window: Window, key: str) -> float | None:
    """A counter's increase over the window; None when either bound lacks it."""
    if key not in window.first or key not in window.last:
        return None
    return float(window.last[key]) - float(window.first[key])


def figure_value(figure: Figure, window: Window, elapsed_s: float | None) -> float | None:
    """One figure over the window (None: not measurable, e.g. no NFS calls at all)."""
    if figure.counter is None:
        return elapsed_s
    numerator = increase(window, figure.counter)
    if numerator is None:
        return None
    if figure.per == "second":
        # Over the workload's own duration on the node's monotonic clock, not the window's
        # host seconds: the window is rounded out to whole ticks (up to 2 s more of a 20 s
        # workload) and host receive times carry the host's delays. The counters did not move
        # in those extra seconds: the workload had not started, or had ended.
        seconds = elapsed_s if elapsed_s is not None and elapsed_s > 0 else window.seconds
        return numerator * figure.scale / seconds
    denominator = increase(window, figure.per)
    return None if not denominator else numerator * figure.scale / denominator


def figures_over(window: Window | None, elapsed_s: float | None) -> dict[str, float | None]:
    """Every figure over ``window``; the rates are None without one."""
    if window is None:
        return {figure.name: (elapsed_s if figure.counter is None else None) for figure in FIGURES}
    return {figure.name: figure_value(figure, window, elapsed_s) for figure in FIGURES}


def node_figures(
    samples: Sequence[Record], started_s: float | None, elapsed_s: float | None
) -> dict[str, float | None]:
    """Every figure of one node run from its samples; the rates are None without a workload window."""
    return figures_over(workload_window(samples, started_s, elapsed_s), elapsed_s)


def agrees(node: float | None, prometheus: float | None, figure: Figure) -> bool | None:
    """Whether Prometheus' value matches the node's within TOLERANCE (None: nothing to compare)."""
    if node is None or prometheus is None or figure.counter is None:
        return None
    return abs(node - prometheus) <= max(TOLERANCE_REL * max(abs(node), abs(prometheus)), TOLERANCE_ABS)


SERIES_KEYS = (
    "t",
    "swap_out_mibps",
    "swap_in_mibps",
    "mem_free_mib",
    "mem_available_mib",
    "swap_used_mib",
    "psi_full_avg10",
    "psi_some_avg10",
)


def node_series(samples: Sequence[Record], started_s: float | None) -> dict[str, list[float]]:
    """Per-tick series for plots: t in seconds since the workload started (or the first sample)."""
    timed = [(t, record) for record in samples if (t := host_seconds(record)) is not None]
    series: dict[str, list[float]] = {key: [] for key in SERIES_KEYS}
    if len(timed) < 2:
        return series
    origin = started_s if started_s is not None else timed[0][0]
    step = max(1, -(-(len(timed) - 1) // SERIES_MAX_POINTS))
    picked = timed[::step]
    for (t0, before), (t1, now) in itertools.pairwise(picked):
        dt = t1 - t0
        series["t"].append(round(t1 - origin, 3))
        for key, counter in (("swap_out_mibps", "pswpout"), ("swap_in_mibps", "pswpin")):
            moved = float(now.get(counter, 0)) - float(before.get(counter, 0))
            series[key].append(round(moved * PAGE_SIZE / MIB / dt, 3) if dt > 0 else 0.0)
        for key, gauge in (
            ("mem_free_mib", "mem_free_bytes"),
            ("mem_available_mib", "mem_available_bytes"),
            ("swap_used_mib", "swap_used_bytes"),
        ):
            series[key].append(round(float(now.get(gauge, 0)) / MIB, 2))
        for key in ("psi_full_avg10", "psi_some_avg10"):
            series[key].append(float(now.get(key, 0.0)))
    return series
