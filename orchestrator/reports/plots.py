"""The HTML report's plots: matplotlib figures drawn on the Agg canvas into PNG bytes.

Each plot is a ``Figure`` attached to its own ``FigureCanvasAgg``: the backend is chosen
explicitly per figure and pyplot's global state is never touched, so rendering works
without a display and in a worker thread next to other plotting code.
"""

from __future__ import annotations

import io
import math
from collections.abc import Sequence

from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from orchestrator.reports.view import FigureSpec, Reference, Side

DPI = 96
# Colour-blind safe (Okabe-Ito); the same meaning keeps the same colour on every plot.
BLUE, ORANGE, GREEN, VERMILION, PURPLE, GREY = "#0072B2", "#E69F00", "#009E73", "#D55E00", "#CC79A7", "#999999"
# Baseline reference lines, in order (the HTML legend beside a plot uses the same colours).
REFERENCE_COLOURS = (ORANGE, GREEN, PURPLE, VERMILION)


def reference_colour(index: int) -> str:
    """The colour of a plot's ``index``-th baseline reference line."""
    return REFERENCE_COLOURS[index % len(REFERENCE_COLOURS)]


def swap_plot(series: dict[str, list[float]], title: str) -> bytes | None:
    """Swap-out and swap-in MiB/s over the workload; None without samples."""
    t = series.get("t") or []
    if not t:
        return None
    fig = _figure(5.8, 3.0)
    ax = fig.add_subplot()
    _line(ax, t, series.get("swap_out_mibps"), "swap out", VERMILION)
    _line(ax, t, series.get("swap_in_mibps"), "swap in", BLUE)
    _style(ax, title, "MiB/s")
    ax.set_xlabel("seconds since the workload started")
    return _png(fig)


def memory_plot(series: dict[str, list[float]], title: str) -> bytes | None:
    """Free, available and swapped memory over the workload, with PSI under it."""
    t = series.get("t") or []
    if not t:
        return None
    fig = _figure(5.8, 3.6)
    memory, psi = fig.subplots(2, 1, sharex=True, height_ratios=(3, 2))
    _line(memory, t, series.get("mem_free_mib"), "free", GREEN)
    _line(memory, t, series.get("mem_available_mib"), "available", BLUE)
    _line(memory, t, series.get("swap_used_mib"), "swap used", VERMILION)
    _style(memory, title, "MiB")
    _line(psi, t, series.get("psi_full_avg10"), "full", PURPLE)
    _line(psi, t, series.get("psi_some_avg10"), "some", ORANGE)
    _style(psi, None, "PSI avg10 %")
    psi.set_xlabel("seconds since the workload started")
    return _png(fig)


def distribution_plot(
    spec: FigureSpec,
    groups: Sequence[tuple[Side, list[float], list[float]]],
    references: Sequence[Reference] = (),
) -> bytes | None:
    """One figure over the runs x nodes of each side (kernel, variant): a box and the
    points of passing runs, grey crosses for the others (shown, never compared), and each
    baseline's median as a dashed line across the plot; None without values."""
    if not groups:
        return None
    fig = _figure(3.9, 2.9)
    ax = fig.add_subplot()
    for x, (_, passed, others) in enumerate(groups):
        if len(passed) > 1:
            ax.boxplot([passed], positions=[x], widths=0.5, showfliers=False, medianprops={"color": BLUE})
        ax.scatter(_spread(x, len(passed)), passed, color=BLUE, s=18, zorder=3)
        ax.scatter(_spread(x, len(others)), others, color=GREY, marker="x", s=22, zorder=3)
    for index, reference in enumerate(references):
        ax.axhline(reference.value, color=reference_colour(index), linestyle="--", linewidth=1.2, zorder=2)
        ax.annotate(
            _short(reference.label, 30),
            (1, reference.value),
            xycoords=("axes fraction", "data"),
            xytext=(-2, 2),
            textcoords="offset points",
            ha="right",
            va="bottom",
            fontsize=6,
            color=reference_colour(index),
        )
    ax.set_xticks(range(len(groups)), ["\n".join(_short(part) for part in side) for side, _, _ in groups], fontsize=7)
    ax.set_xlim(-0.6, len(groups) - 0.4)
    arrow = "\u2191" if spec.better == "higher" else "\u2193"
    _style(ax, f"{spec.title} {arrow}", spec.unit, legend=False)
    ax.title.set_fontsize(8)
    return _png(fig)


def _figure(width: float, height: float) -> Figure:
    fig = Figure(figsize=(width, height), dpi=DPI, layout="constrained")
    FigureCanvasAgg(fig)  # the Agg backend, explicitly (no display; see the module doc)
    return fig


def _png(fig: Figure) -> bytes:
    out = io.BytesIO()
    # No "Software" tag: the same record gives the same bytes on any matplotlib version.
    fig.savefig(out, format="png", metadata={"Software": None})
    return out.getvalue()


def _line(ax: Axes, t: list[float], values: list[float] | None, label: str, color: str) -> None:
    """One series against time; skipped when the node never sampled it."""
    if not values or all(math.isnan(v) for v in values):
        return
    n = min(len(t), len(values))
    ax.plot(t[:n], values[:n], label=label, color=color, linewidth=1.4)


def _style(ax: Axes, title: str | None, ylabel: str, legend: bool = True) -> None:
    if title:
        ax.set_title(title, fontsize=9, loc="left")
    ax.set_ylabel(ylabel, fontsize=8)
    ax.tick_params(labelsize=7)
    ax.grid(True, color="#dddddd", linewidth=0.6)
    ax.set_axisbelow(True)
    for side in ("top", "right"):
        ax.spines[side].set_visible(False)
    if legend and ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=7, frameon=False, loc="best")


def _spread(x: int, count: int) -> list[float]:
    """Points of one kernel side by side around ``x`` (a strip plot without random jitter)."""
    if count <= 1:
        return [float(x)] * count
    return [x - 0.18 + 0.36 * i / (count - 1) for i in range(count)]


def _short(kernel: str, limit: int = 22) -> str:
    return kernel if len(kernel) <= limit else kernel[: limit - 1] + "\u2026"
