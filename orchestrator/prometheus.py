"""A small client for the Prometheus HTTP API: instant queries at a given time.

Only what evaluation needs; errors come back as ``PrometheusError`` with Prometheus's own
message (a bad query names its parse error, a dead server its address).
"""

from __future__ import annotations

import json
import os
import urllib.error
import urllib.parse
import urllib.request
from typing import Any

from model.paths import cache_root

DEFAULT_PROMETHEUS_URL = "http://127.0.0.1:19090"


def prometheus_url() -> str:
    """The Prometheus the verdicts are judged by (``SWAPLAB_PROMETHEUS_URL``)."""
    return os.environ.get("SWAPLAB_PROMETHEUS_URL", DEFAULT_PROMETHEUS_URL).rstrip("/")


class PrometheusError(RuntimeError):
    """Prometheus could not answer a query."""


class PrometheusUnreachable(PrometheusError):
    """No answer at all: asking again right away is pointless."""


class PrometheusApi:
    """Instant queries against one Prometheus server."""

    def __init__(self, url: str | None = None, timeout_s: float = 10.0) -> None:
        self.url = (url or prometheus_url()).rstrip("/")
        self.timeout_s = timeout_s
        self._vouched = False

    def query(self, expr: str, at: float) -> list[tuple[dict[str, str], float]]:
        """Evaluate ``expr`` at epoch time ``at``: one (labels, value) per series."""
        data = self._get("/api/v1/query", {"query": expr, "time": f"{at:.3f}"})
        kind, result = data["resultType"], data["result"]
        if kind == "scalar":
            return [({}, float(result[1]))]
        if kind != "vector":
            raise PrometheusError(f"expected an instant vector or scalar, got a {kind}")
        return [(dict(item["metric"]), float(item["value"][1])) for item in result]

    def query_range(
        self, expr: str, start: float, end: float, step_s: float
    ) -> list[tuple[dict[str, str], list[tuple[float, float]]]]:
        """Evaluate ``expr`` from start to end every ``step_s``: each series' (time, value) points."""
        params = {"query": expr, "start": f"{start:.3f}", "end": f"{end:.3f}", "step": f"{step_s}"}
        data = self._get("/api/v1/query_range", params)
        return [(dict(item["metric"]), [(float(t), float(v)) for t, v in item["values"]]) for item in data["result"]]

    def ready(self) -> bool:
        """True when the server answers /-/ready."""
        try:
            with urllib.request.urlopen(f"{self.url}/-/ready", timeout=2) as response:
                return bool(response.status == 200)
        except (OSError, urllib.error.URLError):
            return False

    def delete_series(self, match: str, start: float, end: float) -> None:
        """Admin API: delete samples of ``match`` between start and end (needs --web.enable-admin-api)."""
        query = urllib.parse.urlencode({"match[]": match, "start": f"{start:.3f}", "end": f"{end:.3f}"})
        request = urllib.request.Request(f"{self.url}/api/v1/admin/tsdb/delete_series?{query}", method="POST")
        try:
            with urllib.request.urlopen(request, timeout=self.timeout_s):
                pass
        except (OSError, urllib.error.URLError) as err:
            raise PrometheusError(f"{self.url}: delete_series: {err}") from err

    def _get(self, path: str, params: dict[str, str]) -> dict[str, Any]:
        if not self._vouched:
            _vouch_for_embedded(self.url)
            self._vouched = True
        address = f"{self.url}{path}?{urllib.parse.urlencode(params)}"
        try:
            with urllib.request.urlopen(address, timeout=self.timeout_s) as response:
                body = json.loads(response.read())
        except urllib.error.HTTPError as err:
            body = _error_body(err)
        except (OSError, urllib.error.URLError, json.JSONDecodeError) as err:
            raise PrometheusUnreachable(f"Prometheus at {self.url} did not answer: {err}") from err
        if body.get("status") != "success":
            raise PrometheusError(f"{body.get('errorType', 'error')}: {body.get('error', body)}")
        data: dict[str, Any] = body["data"]
        return data


def _vouch_for_embedded(url: str) -> None:
    """Before the embedded Prometheus is asked anything: its port must be held by the
    Prometheus swaplab started (its pid file, this user), or nobody. Whoever else holds
    127.0.0.1:19090 could answer every criterion; then none is asked (they are invalid)."""
    if "SWAPLAB_PROMETHEUS_URL" in os.environ or url != DEFAULT_PROMETHEUS_URL:
        return  # a Prometheus the lab configured: its operators vouch for it
    from orchestrator.listeners import our_process, stranger_on  # /proc reading, only here

    port = urllib.parse.urlparse(url).port or 19090
    pid = our_process(cache_root() / "prometheus" / str(port) / "prometheus.pid", "prometheus")
    stranger = stranger_on(port, pid)
    if stranger is not None:
        raise PrometheusUnreachable(f"127.0.0.1:{port} is held by {stranger}, not by the Prometheus swaplab started")


def _error_body(err: urllib.error.HTTPError) -> dict[str, Any]:
    try:
        body: dict[str, Any] = json.loads(err.read())
        return body
    except (OSError, json.JSONDecodeError):
        return {"status": "error", "errorType": f"HTTP {err.code}", "error": err.reason}
