"""Performance figures from a node's samples over the workload window."""

from __future__ import annotations

import pytest

from model.figures import FIGURE_NAMES, MIB, PAGE_SIZE, SERIES_MAX_POINTS, node_figures, node_series, workload_window
from model.runspec import NodeResult


def _tick(t: float, **counters: float) -> dict[str, float]:
    return {"host_time_ns": int(t * 1e9), **counters}


SAMPLES = [
    _tick(99.5, pswpout=0, pswpin=0, psi_full_seconds=0.0, nfs_rpc_calls=10, nfs_rpc_retrans=0, tcp_retrans_segs=0),
    _tick(100.5, pswpout=100, pswpin=0, psi_full_seconds=0.1, nfs_rpc_calls=20, nfs_rpc_retrans=0, tcp_retrans_segs=1),
    _tick(
        110.5,
        pswpout=2660,
        pswpin=512,
        psi_full_seconds=2.1,
        nfs_rpc_calls=1010,
        nfs_rpc_retrans=5,
        tcp_retrans_segs=21,
    ),
    _tick(
        111.5,
        pswpout=2660,
        pswpin=512,
        psi_full_seconds=2.1,
        nfs_rpc_calls=1010,
        nfs_rpc_retrans=5,
        tcp_retrans_segs=21,
    ),
]


def test_the_window_is_bounded_by_the_samples_around_the_workload() -> None:
    window = workload_window(SAMPLES, started_s=100.0, elapsed_s=10.0)
    assert window is not None
    assert (window.start, window.end) == (99.5, 110.5)


def test_rates_are_window_increases_over_the_workloads_own_seconds() -> None:
    # The window spans 11 s of ticks around a 10 s workload: the rate is over the 10 s the
    # node measured, so rounding the window out to whole ticks does not dilute it.
    figures = node_figures(SAMPLES, started_s=100.0, elapsed_s=10.0)
    assert set(figures) == set(FIGURE_NAMES)
    assert figures["swap_out_mibps"] == pytest.approx(2660 * PAGE_SIZE / MIB / 10.0)
    assert figures["swap_in_mibps"] == pytest.approx(512 * PAGE_SIZE / MIB / 10.0)
    assert figures["psi_full_share"] == pytest.approx(2.1 / 10.0)
    assert figures["nfs_retrans_per_call"] == pytest.approx(5 / 1000)
    assert figures["tcp_retrans_per_s"] == pytest.approx(21 / 10.0)
    assert figures["workload_wall_s"] == 10.0
    assert figures["allocstall_per_s"] is None  # not sampled: unknown, never 0


def test_no_workload_window_means_no_rates() -> None:
    figures = node_figures(SAMPLES, started_s=None, elapsed_s=None)
    assert all(value is None for value in figures.values())
    # a workload that outlived the sampler has no closing sample
    assert workload_window(SAMPLES, started_s=100.0, elapsed_s=30.0) is None


def test_no_nfs_calls_is_no_ratio_rather_than_a_division_by_zero() -> None:
    flat = [_tick(t, nfs_rpc_calls=5, nfs_rpc_retrans=0) for t in (0.0, 5.0)]
    assert node_figures(flat, started_s=0.0, elapsed_s=4.0)["nfs_retrans_per_call"] is None


def test_series_are_rates_between_ticks_and_bounded() -> None:
    series = node_series(SAMPLES, started_s=100.0)
    assert series["t"] == [0.5, 10.5, 11.5]
    assert series["swap_out_mibps"][1] == pytest.approx(2560 * PAGE_SIZE / MIB / 10.0)
    many = [_tick(float(t), pswpout=t) for t in range(5000)]
    long = node_series(many, started_s=0.0)
    assert 0 < len(long["t"]) <= SERIES_MAX_POINTS
    assert len({len(points) for points in long.values()}) == 1


def test_a_node_result_refuses_unknown_figures_and_oversized_series() -> None:
    NodeResult.model_validate({"run_id": "r001", "node": "n1", "figures": {"swap_out_mibps": 1.0}})
    with pytest.raises(ValueError, match="unknown figure"):
        NodeResult.model_validate({"run_id": "r001", "node": "n1", "figures": {"bogus": 1.0}})
    with pytest.raises(ValueError, match="more than"):
        NodeResult.model_validate({"run_id": "r001", "node": "n1", "series": {"t": [0.0] * (SERIES_MAX_POINTS + 1)}})
