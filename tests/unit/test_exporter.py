"""The worker's /metrics, read over real HTTP and parsed by prometheus-client's own parser:
Prometheus naming, bounded labels, series born at zero and gone once scraped after the end."""

from __future__ import annotations

import json
import threading
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.samples import Sample

from workers import exporter
from workers.coordination.streams import ConsoleTail, workload_progress

ALLOWED_LABELS = {"lab", "node", "kernel", "scenario", "kind", "phase", "verdict", "le"}


@pytest.fixture(scope="module")
def metrics_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    targets = tmp_path_factory.mktemp("targets")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("SWAPLAB_PROMETHEUS_SD_DIR", str(targets))
        patch.setenv("SWAPLAB_METRICS_PORT", "0")
        _addr, port = exporter.start_metrics_server("unit-test")
        announced = json.loads(next(targets.glob("unit-test.*.json")).read_text())
        assert announced == [{"targets": [f"127.0.0.1:{port}"], "labels": {}}]
        yield f"http://127.0.0.1:{port}/metrics"


def scrape(url: str) -> list[Sample]:
    with urllib.request.urlopen(url, timeout=5) as response:
        text = response.read().decode()
    return [sample for family in text_string_to_metric_families(text) for sample in family.samples]


def node_samples(url: str, node: str) -> dict[str, float]:
    return {
        s.name + "".join(f",{k}={v}" for k, v in sorted(s.labels.items()) if k in ("kind", "phase")): s.value
        for s in scrape(url)
        if s.labels.get("node") == node
    }


def test_names_follow_prometheus_conventions_and_labels_stay_bounded(metrics_url: str) -> None:
    series = exporter.NODES.begin("lab", "n-names", "6.1.0-56-amd64", "pressure")
    series.update_sample({"pswpout": 3, "mem_free_bytes": 1024, "psi_some_seconds": 1.5})
    exporter.RUNS.labels("lab", "6.1.0-56-amd64", "pressure", "pass").inc()
    exporter.BOOT_SECONDS.labels("lab", "n-names", "6.1.0-56-amd64").observe(11.0)
    samples = scrape(metrics_url)
    names = {s.name for s in samples}
    assert names and all(name.startswith("swaplab_") for name in names)
    for sample in samples:
        assert set(sample.labels) <= ALLOWED_LABELS, sample
    assert {"swaplab_node_swap_out_bytes_total", "swaplab_node_oom_kills_total", "swaplab_runs_total"} <= names
    assert {"swaplab_node_boot_seconds_bucket", "swaplab_node_memory_free_bytes"} <= names
    # Base units: bytes from pages, seconds for PSI stall time, ratios for avg10.
    values = node_samples(metrics_url, "n-names")
    assert values["swaplab_node_swap_out_bytes_total"] == 3 * 4096
    assert values["swaplab_node_psi_memory_some_seconds_total"] == 1.5
    exporter.NODES.finish(series, wait_s=0)


def test_a_session_series_is_born_at_zero_before_the_node_reports(metrics_url: str) -> None:
    series = exporter.NODES.begin("lab", "n-zero", "6.1.0-56-amd64", "pressure")
    values = node_samples(metrics_url, "n-zero")
    assert values["swaplab_node_oom_kills_total"] == 0
    assert values["swaplab_node_console_events_total,kind=oom_kill"] == 0
    assert values["swaplab_node_phase,phase=kernel"] == 1
    assert "swaplab_node_memory_free_bytes" not in values  # a gauge has no value before a sample
    series.update_sample({"oom_kill": 1})
    series.console["oom_kill"] += 1
    values = node_samples(metrics_url, "n-zero")
    assert values["swaplab_node_oom_kills_total"] == 1
    assert values["swaplab_node_console_events_total,kind=oom_kill"] == 1
    exporter.NODES.finish(series, wait_s=0)


def test_finish_waits_for_a_scrape_of_the_final_values_then_drops_the_series(metrics_url: str) -> None:
    series = exporter.NODES.begin("lab", "n-end", "6.1.0-56-amd64", "pressure")
    scrape(metrics_url)  # someone scrapes us: finish must wait for the next scrapes
    series.update_sample({"pswpout": 99})
    seen: list[float] = []

    def prometheus() -> None:
        time.sleep(0.3)
        for _ in range(2):
            seen.append(node_samples(metrics_url, "n-end").get("swaplab_node_swap_out_pages_total", -1))

    scraper = threading.Thread(target=prometheus)
    scraper.start()
    started = time.monotonic()
    exporter.NODES.finish(series, wait_s=10)
    scraper.join()
    assert time.monotonic() - started >= 0.3
    assert seen[0] == 99  # the final value was read before the series went away
    assert "swaplab_node_swap_out_pages_total" not in node_samples(metrics_url, "n-end")


def test_a_new_session_of_a_node_replaces_the_old_one(metrics_url: str) -> None:
    old = exporter.NODES.begin("lab", "n-again", "6.1.0-56-amd64", "pressure")
    old.update_sample({"pswpout": 500})
    new = exporter.NODES.begin("lab", "n-again", "6.1.0-56-amd64", "pressure")
    assert node_samples(metrics_url, "n-again")["swaplab_node_swap_out_pages_total"] == 0
    exporter.NODES.finish(old, wait_s=0)  # the old session ending must not drop the new one
    assert "swaplab_node_swap_out_pages_total" in node_samples(metrics_url, "n-again")
    exporter.NODES.finish(new, wait_s=0)


def test_console_tail_counts_complete_new_lines_only(tmp_path: Path) -> None:
    console = tmp_path / "console.log"
    console.write_text(
        "[ 1.0] booting\n[ 2.0] Out of memory: Killed process 1 (x)\n[ 3.0] nfs: server 10.0.2.2 not resp"
    )
    tail = ConsoleTail(console)
    assert [kind.value for kind in tail.new_events()] == ["oom_kill"]
    with console.open("a") as more:
        more.write("onding, still trying\n")
    assert [kind.value for kind in tail.new_events()] == ["nfs_not_responding"]
    assert tail.new_events(final=True) == []


def test_workload_progress_counts_write_and_verify_of_every_pass() -> None:
    assert workload_progress("progress write 1 64", mib=128, passes=1) == 0.25
    assert workload_progress("progress verify 1 128", mib=128, passes=1) == 1.0
    assert workload_progress("progress write 2 0", mib=100, passes=2) == 0.5
    assert workload_progress("started 123", mib=100, passes=1) is None
