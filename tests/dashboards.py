"""The Grafana dashboards in deploy/grafana/dashboards, read the way Grafana reads them.

Unit tests use this to check every query without a server; after a real end-to-end run,
the same helpers turn each panel's query into plain PromQL for a real Prometheus::

    values = {"lab": "local", "node": ["n1", "n2"], "kernel": "6.1.0-18-amd64"}
    for path in dashboard_files():
        for title, query in dashboard_queries(path):
            promql = render(query, values, range_s=run_seconds)
            ...  # query_range(promql, start=run_start, end=run_end): require a finite value

``render`` substitutes the dashboard variables and Grafana's built-ins the way Grafana's
Prometheus data source does for a multi-value/"Include All" variable (every swaplab
variable is one; the unit tests hold the dashboards to that):

- ``$var``, ``${var}``, ``[[var]]`` and ``${var:regex}``: each value regex-escaped for a
  PromQL string (``6.1.0`` -> ``6\\\\.1\\\\.0``), several values joined as ``(a|b)``;
- ``${var:raw}``/``${var:text}`` as is, ``${var:pipe}`` joined by ``|``, ``${var:csv}`` by ``,``;
- the value ``ALL`` (``"$__all"``, Grafana's "All") becomes the dashboards' ``allValue``,
  ``.*``, unescaped;
- ``$__interval``, ``$__rate_interval``, ``$__range`` (with their ``_ms``, and ``$__range_s``)
  from the range and the provisioned data source's scrape interval (``timeInterval``), as
  Grafana computes them; pass the run's length as range_s.

A variable's ``label_values(metric{...}, label)`` query renders to the PromQL selector
``metric{...}``, which returns the series the variable's values come from;
``label_values_selector`` tells such a query apart for a caller that prefers the series API.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parents[1]
DASHBOARDS = REPO / "deploy" / "grafana" / "dashboards"
DATASOURCE = REPO / "deploy" / "grafana" / "provisioning" / "datasources" / "prometheus.yml"
DATASOURCE_UID = "swaplab-prometheus"
# Grafana's "All" option; the dashboards' variables declare allValue ALL_VALUE for it.
ALL = "$__all"
ALL_VALUE = ".*"
# Roughly a panel's width in pixels: Grafana's maxDataPoints, which sets $__interval.
MAX_DATA_POINTS = 1000
VARIABLE_TITLE_PREFIX = "variable "
# An annotation's query has data only while what it marks happens (a fault): no data is normal.
ANNOTATION_TITLE_PREFIX = "annotation "

Json = dict[str, Any]

# ${var} / ${var:format}, [[var]] / [[var:format]], $var -- in that order of preference.
_REFERENCE = re.compile(r"\$\{(\w+)(?::(\w+))?\}|\[\[(\w+)(?::(\w+))?\]\]|\$(\w+)")
# What Grafana's prometheusSpecialRegexEscape escapes (and backslash, first).
_REGEX_SPECIAL = re.compile(r"[$^*{}\[\]+?.()|]")
_LABEL_VALUES = re.compile(r"^\s*label_values\((?P<args>.*)\)\s*$", re.DOTALL)
_QUERY_RESULT = re.compile(r"^\s*query_result\((?P<expr>.*)\)\s*$", re.DOTALL)


def duration_s(text: str) -> int:
    """Whole seconds of a Prometheus/Grafana duration such as ``1s``, ``15s``, ``1m``, ``1h``."""
    match = re.fullmatch(r"(\d+)(ms|s|m|h|d)", text.strip())
    if match is None:
        raise ValueError(f"not a duration: {text!r}")
    value, unit = int(match.group(1)), match.group(2)
    if unit == "ms":
        return max(1, math.ceil(value / 1000))
    return value * {"s": 1, "m": 60, "h": 3600, "d": 86400}[unit]


def datasource_scrape_interval_s(path: Path = DATASOURCE) -> int:
    """The provisioned data source's scrape interval (``jsonData.timeInterval``), in seconds:
    what Grafana bases ``$__interval`` and ``$__rate_interval`` on."""
    data = yaml.safe_load(path.read_text())
    (source,) = [s for s in data["datasources"] if s.get("uid") == DATASOURCE_UID]
    return duration_s(str(source.get("jsonData", {}).get("timeInterval", "15s")))


SCRAPE_INTERVAL_S = datasource_scrape_interval_s()


def dashboard_files() -> list[Path]:
    """Every dashboard JSON file Grafana provisions, sorted."""
    return sorted(DASHBOARDS.glob("*.json"))


def load(path: Path) -> Json:
    """One dashboard, as parsed JSON."""
    data = json.loads(path.read_text())
    if not isinstance(data, dict):
        raise ValueError(f"{path}: a dashboard is a JSON object")
    return data


def iter_panels(dashboard: Json) -> Iterator[Json]:
    """Every panel, rows included, and the panels nested in (collapsed) rows."""

    def walk(panels: list[Json]) -> Iterator[Json]:
        for panel in panels:
            yield panel
            yield from walk(panel.get("panels", []))

    yield from walk(dashboard.get("panels", []))


def variables(dashboard: Json) -> list[Json]:
    """The dashboard's templating variables."""
    return list(dashboard.get("templating", {}).get("list", []))


def variable_query(variable: Json) -> str | None:
    """A query variable's query string (Grafana stores it as a string or an object)."""
    query = variable.get("query")
    if isinstance(query, dict):
        query = query.get("query")
    return query if isinstance(query, str) and query.strip() else None


def dashboard_queries(path: Path) -> list[tuple[str, str]]:
    """(panel title, expr) for every target of every panel, then ("variable NAME", query)
    for every query variable and ("annotation NAME", expr) for every Prometheus annotation.
    Rows' nested panels are included; rows have no targets."""
    dashboard = load(path)
    queries: list[tuple[str, str]] = []
    for panel in iter_panels(dashboard):
        for target in panel.get("targets", []):
            expr = target.get("expr")
            if isinstance(expr, str) and expr.strip():
                queries.append((str(panel.get("title", "")), expr))
    for variable in variables(dashboard):
        if variable.get("type") == "query" and (query := variable_query(variable)) is not None:
            queries.append((VARIABLE_TITLE_PREFIX + str(variable.get("name")), query))
    for annotation in dashboard.get("annotations", {}).get("list", []):
        expr = annotation.get("expr")
        if isinstance(expr, str) and expr.strip():
            queries.append((ANNOTATION_TITLE_PREFIX + str(annotation.get("name")), expr))
    return queries


def label_values_selector(query: str) -> tuple[str, str] | None:
    """(series selector, label) of a ``label_values(selector, label)`` variable query, else
    None. The selector may still hold variables: pass it through ``render``."""
    match = _LABEL_VALUES.match(query)
    if match is None:
        return None
    args = match.group("args")
    selector, comma, label = args.rpartition(",")
    if not comma or not re.fullmatch(r"\s*\w+\s*", label) or not selector.strip():
        raise ValueError(f"label_values without a series selector cannot be checked in PromQL: {query!r}")
    return selector.strip(), label.strip()


def intervals(range_s: int, scrape_interval_s: int = SCRAPE_INTERVAL_S) -> dict[str, str]:
    """Grafana's built-in time variables for a dashboard range of range_s seconds."""
    if range_s <= 0:
        raise ValueError("range_s must be positive")
    interval_s = max(scrape_interval_s, math.ceil(range_s / MAX_DATA_POINTS))
    rate_interval_s = max(interval_s + scrape_interval_s, 4 * scrape_interval_s)
    return {
        "__interval": f"{interval_s}s",
        "__interval_ms": str(interval_s * 1000),
        "__rate_interval": f"{rate_interval_s}s",
        "__rate_interval_ms": str(rate_interval_s * 1000),
        "__range": f"{range_s}s",
        "__range_s": str(range_s),
        "__range_ms": str(range_s * 1000),
    }


def _regex_escape(value: str) -> str:
    # Escaped for a regex inside a PromQL double-quoted string: hence two backslashes.
    return _REGEX_SPECIAL.sub(lambda m: "\\\\" + m.group(0), value.replace("\\", "\\\\\\\\"))


def _format(name: str, value: str | list[str], fmt: str | None) -> str:
    values = [value] if isinstance(value, str) else list(value)
    if not values:
        raise ValueError(f"variable {name!r} has no value")
    if ALL in values:
        return ALL_VALUE
    if fmt in (None, "regex"):
        escaped = [_regex_escape(v) for v in values]
        return escaped[0] if len(escaped) == 1 else "(" + "|".join(escaped) + ")"
    if fmt in ("raw", "text"):
        return ",".join(values)
    if fmt == "pipe":
        return "|".join(values)
    if fmt == "csv":
        return ",".join(values)
    raise ValueError(f"variable format {fmt!r} of {name!r} is not supported")


def render(
    expr: str,
    variables: Mapping[str, str | list[str]],
    range_s: int,
    scrape_interval_s: int = SCRAPE_INTERVAL_S,
) -> str:
    """expr with every Grafana variable and built-in substituted: plain PromQL.

    A ``label_values(selector, label)`` query becomes ``selector``; ``query_result(expr)``
    becomes ``expr``. A variable missing from ``variables`` is an error, never left in.
    """
    builtins = intervals(range_s, scrape_interval_s)

    def substitute(match: re.Match[str]) -> str:
        name = match.group(1) or match.group(3) or match.group(5)
        fmt = match.group(2) or match.group(4)
        if name in builtins:
            if fmt is not None:
                raise ValueError(f"built-in ${name} takes no format")
            return builtins[name]
        if name not in variables:
            raise KeyError(f"no value for variable ${name} in {expr!r}")
        return _format(name, variables[name], fmt)

    selector = label_values_selector(expr)
    if selector is not None:
        expr = selector[0]
    elif (match := _QUERY_RESULT.match(expr)) is not None:
        expr = match.group("expr")
    return _REFERENCE.sub(substitute, expr)
