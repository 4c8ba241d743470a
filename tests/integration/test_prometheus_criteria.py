"""Criteria against a real Prometheus scraping a real /metrics endpoint, without guests:
the PromQL traps the evaluator must not fall into, each shown in isolation.

The node sessions are driven by hand through the exporter (what a worker's node session
does from its sampler); Prometheus is Debian's, started like ``swaplab run`` starts it.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from model.runspec import NodeResult
from orchestrator.criteria import Criterion, Outcome, Severity, builtin_criteria
from orchestrator.evaluation import RunWindow, evaluate_node
from orchestrator.prometheus import PrometheusApi, PrometheusError
from orchestrator.services import LocalPrometheus
from tests.conftest import free_port, require_tools
from workers import exporter

pytestmark = pytest.mark.integration
LAB = "itest"


@pytest.fixture(scope="module")
def prometheus(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PrometheusApi]:
    require_tools(("prometheus",))
    tmp = tmp_path_factory.mktemp("prometheus")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("SWAPLAB_PROMETHEUS_SD_DIR", str(tmp / "targets"))
        exporter.start_metrics_server("itest")
        # Its admin API on: deleting series is how these tests prove a missing series is invalid.
        server = LocalPrometheus(
            f"http://127.0.0.1:{free_port()}", data_dir=tmp, targets=tmp / "targets", admin_api=True
        )
        server.start()
        try:
            yield server.api
        finally:
            server.stop()


class Session:
    """One node session as the exporter sees it, with the window it would record."""

    def __init__(self, api: PrometheusApi, node: str, kernel: str = "6.1.0-56-amd64") -> None:
        self.api, self.node = api, node
        self.series = exporter.NODES.begin(LAB, node, kernel, "pressure")
        self.started = time.time()
        self.ended = 0.0

    def wait_scraped(self, value: float = 0.0, timeout_s: float = 30.0) -> None:
        """Until Prometheus holds the current value of the node's OOM counter."""
        query = f'swaplab_node_oom_kills_total{{lab="{LAB}",node="{self.node}"}}'
        deadline = time.monotonic() + timeout_s
        while [v for _, v in self.api.query(query, time.time())] != [value]:
            assert time.monotonic() < deadline, f"Prometheus never scraped {query} = {value}"
            time.sleep(0.2)

    def finish(self) -> None:
        exporter.NODES.finish(self.series, wait_s=10)
        self.ended = time.time()

    def result(self) -> NodeResult:
        labels = dict(zip(exporter.NODE_LABELS, self.series.labels, strict=True))
        return NodeResult(
            run_id="r001", node=self.node, metrics_labels=labels, metrics_from=self.started, metrics_to=self.ended
        )

    def judge(self, *names: str, extra: list[Criterion] | None = None) -> dict[str, tuple[Outcome, float | None]]:
        window = RunWindow(self.started, self.ended)
        wanted = [c for c in builtin_criteria(1) if c.name in names] + (extra or [])
        return {r.name: (r.outcome, r.value) for r in evaluate_node(wanted, self.api, self.result(), window)}


# Twice: the first session of a module meets a Prometheus still slow to scrape, which once
# hid that a window rounded down to whole seconds could start after the zero baseline.
@pytest.mark.parametrize("attempt", range(2))
def test_an_oom_kill_in_the_first_second_fails(prometheus: PrometheusApi, attempt: int) -> None:
    session = Session(prometheus, f"oom-early{attempt}")
    session.wait_scraped(0.0)  # born at zero before the node booted: the baseline exists
    session.series.update_sample({"oom_kill": 1, "pswpout": 10, "pswpin": 10})
    session.wait_scraped(1.0)
    session.finish()
    outcome, value = session.judge("no_oom_kill")["no_oom_kill"]
    assert outcome is Outcome.FAIL and value is not None and value >= 1


def test_without_the_zero_baseline_plain_increase_would_miss_it(prometheus: PrometheusApi) -> None:
    # The trap the exporter avoids: a series whose first sample already counts the OOM.
    session = Session(prometheus, "oom-trap")
    session.series.update_sample({"oom_kill": 1})
    session.wait_scraped(1.0)
    time.sleep(2)
    session.finish()
    assert session.judge("no_oom_kill")["no_oom_kill"] == (Outcome.PASS, 0.0)


def test_an_earlier_session_of_the_node_does_not_leak_into_the_window(prometheus: PrometheusApi) -> None:
    earlier = Session(prometheus, "reused")
    earlier.wait_scraped(0.0)
    earlier.series.update_sample({"oom_kill": 3, "pswpout": 10**6})
    earlier.wait_scraped(3.0)
    earlier.finish()
    time.sleep(1.1)  # the next run of a node starts later than the previous one's final scrape
    later = Session(prometheus, "reused")
    later.wait_scraped(0.0)
    later.series.update_sample({"oom_kill": 0, "pswpout": 256})
    time.sleep(2)
    later.finish()
    judged = later.judge("no_oom_kill", "swap_out_used")
    assert judged["no_oom_kill"] == (Outcome.PASS, 0.0)
    _outcome, swapped = judged["swap_out_used"]
    assert swapped is not None and swapped <= 256 * 4096 * 1.5  # not the earlier 4 GB


def test_a_metric_that_does_not_exist_is_invalid_not_pass(prometheus: PrometheusApi) -> None:
    session = Session(prometheus, "no-metric")
    session.wait_scraped(0.0)
    session.finish()
    typo = Criterion(
        "typo", "increase(swaplab_node_oom_kill_total{ {{ sel }} }[{{ window }}])", "==", 0, Severity.ERROR, ""
    )
    assert session.judge(extra=[typo])["typo"] == (Outcome.INVALID, None)


def test_a_deleted_series_is_invalid_not_pass(prometheus: PrometheusApi) -> None:
    session = Session(prometheus, "deleted")
    session.wait_scraped(0.0)
    time.sleep(1.5)
    session.finish()
    assert session.judge("no_oom_kill")["no_oom_kill"][0] is Outcome.PASS
    prometheus.delete_series('{__name__=~"swaplab_node_.+",node="deleted"}', session.started - 60, session.ended + 60)
    assert session.judge("no_oom_kill")["no_oom_kill"] == (Outcome.INVALID, None)


def test_a_kernel_release_written_as_promql_judges_its_own_series(prometheus: PrometheusApi) -> None:
    """An ssh node's ``uname -r`` is its kernel label: one that would close the string and
    add ``or vector(0)`` must still be judged on the node's own series (an OOM kill fails)."""
    hostile = 'x"}[1s]) or vector(0) or max_over_time(foo{a="'
    session = Session(prometheus, "hostile", kernel=hostile)
    session.wait_scraped(0.0)
    session.series.update_sample({"oom_kill": 1})
    session.wait_scraped(1.0)
    session.finish()
    templated = [
        Criterion(
            name,
            f"max_over_time(swaplab_node_oom_kills_total{{{labels}}}[{{{{ window }}}}])",
            "==",
            0,
            Severity.ERROR,
            "",
        )
        for name, labels in (("by_kernel", 'kernel="{{ kernel }}",node="{{ node }}"'), ("by_session", " {{ sel }} "))
    ]
    assert session.judge(extra=templated) == {"by_kernel": (Outcome.FAIL, 1.0), "by_session": (Outcome.FAIL, 1.0)}


def test_an_unreachable_prometheus_makes_every_criterion_invalid(tmp_path: Path) -> None:
    session_result = NodeResult(
        run_id="r001",
        node="n",
        metrics_labels={"lab": LAB, "node": "n", "kernel": "k", "scenario": "s"},
        metrics_from=1.0,
        metrics_to=100.0,
    )
    dead = PrometheusApi(f"http://127.0.0.1:{free_port()}", timeout_s=2)
    judged = evaluate_node(builtin_criteria(1), dead, session_result, RunWindow(1.0, 100.0))
    assert {r.outcome for r in judged} == {Outcome.INVALID}
    assert "did not answer" in judged[0].detail


def test_the_embedded_prometheus_keeps_its_admin_api_closed(tmp_path: Path) -> None:
    # Anyone on the host could otherwise delete the series a later `swaplab check` judges from.
    server = LocalPrometheus(f"http://127.0.0.1:{free_port()}", data_dir=tmp_path, targets=tmp_path / "targets")
    server.start()
    try:
        with pytest.raises(PrometheusError):
            server.api.delete_series('{__name__="up"}', time.time() - 60, time.time())
    finally:
        server.stop()
