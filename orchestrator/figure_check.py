"""A node run's figures checked against Prometheus over the same workload window.

The node computed its figures from its own samples (model.figures). Here the counters
Prometheus scraped from the worker's exporter are read at the two ends of that window and
the same formulas applied; both values go into result.json, with whether they agree.

Each query is an instant query ``SCRAPE_LAG_S`` after a window end: the exporter serves a
tick from the moment it arrives, and scrapes are 1 s apart, so the last scrape before
that instant is the first one that saw the bounding tick.
"""

from __future__ import annotations

from typing import Any

from model.figures import BY_NAME, FIGURES, Window, agrees, figures_over
from model.runspec import NodeResult
from orchestrator.prometheus import PrometheusApi, PrometheusError
from workers.exporter import NODE_COUNTERS

SCRAPE_LAG_S = 0.95
# Exported counter -> (sample key, scale): one exported name per sample key, the unscaled one.
_BY_KEY = {key: (name, scale) for name, (key, scale, _help) in NODE_COUNTERS.items() if scale == 1}
_NEEDED = sorted({key for f in FIGURES for key in (f.counter, f.per) if key and key in _BY_KEY})


def counters_query(selector: str) -> str:
    """One query for every counter the figures need, of one node's series."""
    names = "|".join(_BY_KEY[key][0] for key in _NEEDED)
    return f'{{__name__=~"({names})_total",{selector}}}'


def prometheus_figures(api: PrometheusApi, result: NodeResult, selector: str) -> dict[str, float | None]:
    """The node's figures recomputed from Prometheus; every rate None when it cannot answer."""
    if result.figures_from is None or result.figures_to is None or not selector:
        return dict.fromkeys(BY_NAME)
    try:
        first = _record(api, selector, result.figures_from)
        last = _record(api, selector, result.figures_to)
    except PrometheusError:
        return dict.fromkeys(BY_NAME)
    window = Window(result.figures_from, result.figures_to, first, last)
    return figures_over(window, result.workload.elapsed_s)


def _record(api: PrometheusApi, selector: str, at: float) -> dict[str, int | float]:
    by_name = {name: key for key, (name, _scale) in _BY_KEY.items()}
    record: dict[str, int | float] = {}
    for labels, value in api.query(counters_query(selector), at + SCRAPE_LAG_S):
        key = by_name.get(labels.get("__name__", "").removesuffix("_total"))
        if key is not None:
            record[key] = record.get(key, 0) + value  # one series per worker, if a lease moved
    return record


def figure_entries(result: NodeResult, prometheus: dict[str, float | None]) -> dict[str, dict[str, Any]]:
    """result.json's figures of one node: value, unit, direction, Prometheus' value, agreement."""
    entries = {}
    for figure in FIGURES:
        value = result.figures.get(figure.name)
        from_prometheus = prometheus.get(figure.name) if figure.counter is not None else None
        entries[figure.name] = {
            "value": value,
            "unit": figure.unit,
            "better": figure.better,
            "prometheus": from_prometheus,
            "agrees": agrees(value, from_prometheus, figure),
        }
    return entries
