"""End to end on the embedded default lab: real QEMU guests, real nfs-ganesha, real SSH,
and a real Prometheus judging the criteria.

The smoke campaign runs on guest time (``timing: guest``: QEMU's instruction counter), so
every check of it is also that mode's end-to-end proof: it boots, swaps, verifies every
page, passes, and its figures agree with what Prometheus scraped over the same window.

Each campaign runs once (module fixture) through the real ``swaplab run`` command and
serves several assertions; ``swaplab check`` then judges the smoke run again with other
criteria, and the dashboards' queries are sent to the Prometheus that scraped it.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from model.criteria import BUILTIN_CRITERION_NAMES
from model.figures import FIGURE_NAMES, GUEST_ICOUNT_SHIFT, GUEST_PACE_MAX, HUNG_TASK_TIMEOUT_S
from model.paths import cache_dir
from model.state import embedded_redis_dir
from orchestrator.prometheus import PrometheusApi
from orchestrator.services import LocalPrometheus
from tests import dashboards
from tests.conftest import require_tools

pytestmark = pytest.mark.e2e
REPO = Path(__file__).resolve().parents[2]
FIXTURES = REPO / "tests" / "fixtures"
MIB = 2**20
BUILTIN = set(BUILTIN_CRITERION_NAMES)


SWAPLAB = Path(sys.executable).with_name("swaplab")


@pytest.fixture(scope="module", autouse=True)
def lab_nfs_server_stopped_afterwards() -> Iterator[None]:
    # The lab's NFS server outlives runs by design; the test suite leaves nothing running.
    yield
    subprocess.run([str(SWAPLAB), "nfs", "stop"], check=True, capture_output=True, timeout=60)


@pytest.fixture(scope="module", autouse=True)
def results_db(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A results database of this module's own (never the user's history in the cache)."""
    url = f"sqlite:///{tmp_path_factory.mktemp('history') / 'results.db'}"
    before = os.environ.get("SWAPLAB_DB_URL")
    os.environ["SWAPLAB_DB_URL"] = url
    yield url
    if before is None:
        os.environ.pop("SWAPLAB_DB_URL")
    else:
        os.environ["SWAPLAB_DB_URL"] = before


PROCESS_LISTS: list[str] = []  # `ps` every half second during the smoke run


def run_campaign(path: Path, results: Path, watch_processes: bool = False) -> tuple[int, dict[str, Any], str]:
    require_tools()
    env = {**os.environ, "SWAPLAB_RESULTS": str(results)}
    with subprocess.Popen(
        [str(SWAPLAB), "run", "--json", str(path)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env
    ) as proc:
        if watch_processes:
            threading.Thread(target=_sample_processes, args=(proc,), daemon=True).start()
        stdout, stderr = proc.communicate(timeout=900)
    sys.stderr.write(stderr)  # progress, shown by pytest when a test fails
    return proc.returncode, json.loads(stdout), stderr


def _sample_processes(proc: subprocess.Popen[str]) -> None:
    while proc.poll() is None:
        PROCESS_LISTS.append(subprocess.run(["ps", "-eo", "args"], capture_output=True, text=True).stdout)
        time.sleep(0.5)


@pytest.fixture(scope="module")
def smoke(tmp_path_factory: pytest.TempPathFactory) -> tuple[int, dict[str, Any], str]:
    # From a lab whose NFS server is down, as on a fresh machine: the run starts it and stops it.
    subprocess.run([str(SWAPLAB), "nfs", "stop"], check=True, capture_output=True, timeout=60)
    folder = tmp_path_factory.mktemp("smoke")
    text = (REPO / "campaigns" / "smoke.yaml").read_text().replace("../inventory/", f"{REPO}/inventory/")
    guest = folder / "smoke.yaml"
    guest.write_text(f"{text.rstrip()}\ntiming: guest\n")
    return run_campaign(guest, folder, watch_processes=True)


def nfs_serving() -> bool:
    status = subprocess.run([str(SWAPLAB), "nfs", "status", "--json"], capture_output=True, text=True, timeout=60)
    return bool(json.loads(status.stdout)["serving"])


@pytest.fixture(scope="module")
def oom(tmp_path_factory: pytest.TempPathFactory) -> tuple[int, dict[str, Any], str]:
    # The lab's NFS server is up before this run: the run must leave it up, and say so.
    subprocess.run([str(SWAPLAB), "nfs", "start"], check=True, capture_output=True, timeout=60)
    return run_campaign(FIXTURES / "campaigns" / "oom-at-start.yaml", tmp_path_factory.mktemp("oom"))


@pytest.fixture(scope="module")
def impossible(tmp_path_factory: pytest.TempPathFactory) -> tuple[int, dict[str, Any], str]:
    return run_campaign(FIXTURES / "campaigns" / "impossible.yaml", tmp_path_factory.mktemp("impossible"))


@pytest.fixture(scope="module")
def prometheus() -> Iterator[PrometheusApi]:
    """The Prometheus ``swaplab run`` used (its TSDB is kept), running again for queries."""
    server = LocalPrometheus(admin_api=True)  # one test deletes series; swaplab run never opens it
    started = not server.ready()
    if started:
        server.start()
    yield server.api
    if started:
        server.stop()


def check(cid: str, *args: str) -> tuple[int, dict[str, Any]]:
    proc = subprocess.run([str(SWAPLAB), "check", "--json", cid, *args], capture_output=True, text=True, timeout=300)
    sys.stderr.write(proc.stderr)
    return proc.returncode, json.loads(proc.stdout)


def criteria_of(result: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {c["name"]: c for c in only_node(result)["criteria"]}


def only_node(result: dict[str, Any]) -> dict[str, Any]:
    [run] = result["runs"]
    [node] = run["nodes"]
    return node


def test_smoke_passes_with_exit_code_0(smoke: tuple[int, dict[str, Any], str]) -> None:
    code, result, _ = smoke
    assert (code, result["verdict"]) == (0, "pass"), only_node(result)["reasons"]


def test_smoke_ran_on_guest_time_placed_in_host_time_by_the_worker(smoke: tuple[int, dict[str, Any], str]) -> None:
    [run] = smoke[1]["runs"]
    assert run["settings"]["timing"] == f"guest-icount{GUEST_ICOUNT_SHIFT}"
    work = only_node(smoke[1])["workload"]
    seen = (work["done_seen_host_ns"] - work["started_seen_host_ns"]) / 1e9
    # The node's clock runs at the guest's pace: its elapsed seconds are not the host's.
    assert seen > 0 and work["elapsed_s"] > 0 and work["started_host_ns"] == work["started_seen_host_ns"]
    # The start instant was kept on the worker's clock: the workload began after it, within
    # one SSH exec (a node clock running ahead would have started it early).
    lag = (work["started_seen_host_ns"] - work["start_at_host_ns"]) / 1e9
    assert 0 <= lag < 5, lag
    # The hung-task watchdog was stretched by the guest's pace, and the node took it (a
    # sysctl the node refuses fails the run).
    assert run["settings"]["sysctl"]["kernel.hung_task_timeout_secs"] == HUNG_TASK_TIMEOUT_S * GUEST_PACE_MAX
    print(f"\nguest time: {work['elapsed_s']:.1f} node s in {seen:.1f} host s, started {lag:.2f} s after the instant")


def test_smoke_verdict_comes_from_criteria_with_values(smoke: tuple[int, dict[str, Any], str]) -> None:
    criteria = criteria_of(smoke[1])
    assert set(criteria) == BUILTIN
    for criterion in criteria.values():
        assert criterion["outcome"] == "pass" and criterion["value"] is not None, criterion
    # The window's swap-out in Prometheus agrees with the node's own counters.
    node = only_node(smoke[1])
    assert criteria["swap_out_used"]["value"] / MIB == pytest.approx(node["swap_out_mib"], rel=0.1)
    assert criteria["swap_out_used"]["threshold"] == 128 * MIB
    assert smoke[1]["runs"][0]["window"]["seconds"] >= node["phases_s"]["workload"]


def test_smoke_figures_agree_with_prometheus_over_the_workload_window(smoke: tuple[int, dict[str, Any], str]) -> None:
    figures = only_node(smoke[1])["figures"]
    assert set(figures) == set(FIGURE_NAMES)
    for name, figure in figures.items():
        if name == "workload_wall_s":
            assert figure["value"] == pytest.approx(only_node(smoke[1])["workload"]["elapsed_s"])
            continue
        # Node samples vs Prometheus' scrapes of them: within model.figures' tolerance (5 %).
        assert figure["prometheus"] is not None and figure["agrees"] is True, (name, figure)
    # Per guest second (the guest's clock runs faster than the host's): about 1-2 MiB/s here.
    assert figures["swap_out_mibps"]["value"] > 0.2 and figures["swap_in_mibps"]["value"] > 0.2
    assert figures["swap_out_mibps"]["prometheus"] == pytest.approx(figures["swap_out_mibps"]["value"], rel=0.05)


def test_smoke_writes_every_report_and_stores_its_record(smoke: tuple[int, dict[str, Any], str]) -> None:
    _code, result, stderr = smoke
    folder = Path(result["result_dir"])
    for name in ("report.txt", "report.html", "junit.xml", "report.json"):
        assert (folder / name).stat().st_size > 0, name
    assert "stored in the results database" in stderr
    # `swaplab run` stopped its redis: this answer comes from the database alone.
    shown = subprocess.run([str(SWAPLAB), "show", result["campaign_id"]], capture_output=True, text=True, timeout=60)
    assert shown.returncode == 0, shown.stderr
    assert result["campaign_id"] in shown.stdout and "swaplab run" in shown.stdout
    listed = subprocess.run([str(SWAPLAB), "history", "smoke", "--json"], capture_output=True, text=True, timeout=60)
    [row] = [r for r in json.loads(listed.stdout) if r["campaign_id"] == result["campaign_id"]]
    assert row["verdict"] == "pass" and row["runs"][0]["figures"]["swap_out_mibps"] > 1


def test_the_embedded_redis_password_is_in_no_process_list_log_or_result(
    smoke: tuple[int, dict[str, Any], str],
) -> None:
    password = (embedded_redis_dir() / "password").read_text().strip()
    assert len(password) >= 32 and PROCESS_LISTS and any("redis-server" in ps for ps in PROCESS_LISTS)
    assert not [ps for ps in PROCESS_LISTS if password in ps]
    assert password not in smoke[2] and password not in json.dumps(smoke[1])
    result_dir = Path(smoke[1]["result_dir"])
    service_logs = [embedded_redis_dir() / "redis.log", cache_dir("prometheus", "19090") / "prometheus.log"]
    files = [path for path in result_dir.parent.rglob("*") if path.is_file()] + service_logs
    assert any(path.name == "worker.log" for path in files)
    leaked = [path for path in files if password.encode() in path.read_bytes()]
    assert leaked == []


def test_a_run_stops_the_nfs_server_it_started(smoke: tuple[int, dict[str, Any], str]) -> None:
    assert "stopped lab local's nfs-ganesha on 127.0.0.1:12049 (this run started it)" in smoke[2]
    assert not nfs_serving()


def test_a_run_leaves_a_serving_nfs_server_up_and_says_so(oom: tuple[int, dict[str, Any], str]) -> None:
    assert "lab local's nfs-ganesha on 127.0.0.1:12049 stays up as it was" in oom[2]
    assert nfs_serving()


def test_smoke_swapped_over_100_mib_out_and_back_in(smoke: tuple[int, dict[str, Any], str]) -> None:
    node = only_node(smoke[1])
    assert node["swap_out_mib"] >= 100
    assert node["swap_in_mib"] >= 100


def test_smoke_every_page_verified_after_swap_in(smoke: tuple[int, dict[str, Any], str]) -> None:
    workload = only_node(smoke[1])["workload"]
    assert workload["done"] and workload["exit_status"] == 0
    assert workload["bad_pages"] == 0
    assert workload["pages"] == 384 * MIB // 4096


def test_nfs_server_holds_the_guests_pages(smoke: tuple[int, dict[str, Any], str]) -> None:
    # Counted on the host in the export, past the swap header, before the file is removed.
    pages = only_node(smoke[1])["swap_file_nonzero_pages"]
    assert pages is not None and pages * 4096 >= 100 * MIB


def test_smoke_result_directory_has_the_evidence(smoke: tuple[int, dict[str, Any], str]) -> None:
    result = smoke[1]
    node_dir = Path(result["result_dir"]) / "r001" / "node1"
    console = (node_dir / "console.log").read_text(errors="replace")
    assert "swaplab: ready hostname=node1" in console
    samples = [json.loads(line) for line in (node_dir / "samples.jsonl").read_text().splitlines()]
    assert len(samples) >= 10
    assert samples[-1]["pswpout"] > samples[0]["pswpout"]
    assert (node_dir / "nfs-server.log").exists()
    assert json.loads((Path(result["result_dir"]) / "result.json").read_text())["verdict"] == "pass"


def test_smoke_reports_phase_times_and_kernel(smoke: tuple[int, dict[str, Any], str]) -> None:
    node = only_node(smoke[1])
    assert {"boot", "mount", "workload"} <= set(node["phases_s"])
    assert node["kernel"]["package"].startswith("linux-image-6.")
    assert node["kernel"]["kver"] in (Path(smoke[1]["result_dir"]) / "r001" / "node1" / "console.log").read_text(
        errors="replace"
    )


def test_smoke_recheck_with_an_added_criterion_keeps_the_verdict(smoke: tuple[int, dict[str, Any], str]) -> None:
    code, result = check(smoke[1]["campaign_id"], "--criteria", str(FIXTURES / "criteria" / "stall-limit.yaml"))
    assert (code, result["verdict"]) == (0, "pass")
    added = criteria_of(result)["psi_full_share"]
    assert added["outcome"] == "pass" and 0 <= added["value"] < 0.99
    assert set(criteria_of(result)) == BUILTIN | {"psi_full_share"} and "rechecked_at" in result


def test_smoke_recheck_with_a_metric_that_does_not_exist_is_invalid(smoke: tuple[int, dict[str, Any], str]) -> None:
    code, result = check(smoke[1]["campaign_id"], "--criteria", str(FIXTURES / "criteria" / "missing-metric.yaml"))
    assert (code, result["verdict"]) == (4, "invalid")
    typo = criteria_of(result)["oom_typo"]
    assert (typo["outcome"], typo["value"], typo["detail"]) == ("invalid", None, "no data in the run's window")


def test_every_dashboard_query_returns_data_for_the_smoke_run(
    smoke: tuple[int, dict[str, Any], str], prometheus: PrometheusApi
) -> None:
    result = smoke[1]
    node = only_node(result)
    start, end = result["started_at"], result["finished_at"] + 10  # runs are counted just after
    values = {"lab": "local", "node": "node1", "kernel": node["kernel"]["kver"]}
    empty = []
    for path in dashboards.dashboard_files():
        for title, query in dashboards.dashboard_queries(path):
            promql = dashboards.render(query, values, range_s=int(end - start))
            series = prometheus.query_range(promql, start, end, step_s=2)
            if not any(v == v for _labels, points in series for v in points):  # v == v: not NaN
                empty.append(f"{path.name}: {title}: {promql}")
    assert not empty, "queries without data:\n" + "\n".join(empty)


def test_smoke_recheck_after_its_series_were_deleted_is_invalid(
    smoke: tuple[int, dict[str, Any], str], prometheus: PrometheusApi
) -> None:
    # Runs last in this module: it deletes the smoke run's node series from the TSDB.
    window = smoke[1]["runs"][0]["window"]
    prometheus.delete_series(
        '{__name__=~"swaplab_node_.+",lab="local",node="node1"}', window["start"] - 1, window["end"] + 1
    )
    code, result = check(smoke[1]["campaign_id"])
    assert (code, result["verdict"]) == (4, "invalid")
    assert {c["outcome"] for c in criteria_of(result).values()} == {"invalid"}


def test_an_impossible_threshold_fails_with_exit_code_3_naming_it(
    impossible: tuple[int, dict[str, Any], str],
) -> None:
    code, result, _ = impossible
    assert (code, result["verdict"]) == (3, "fail")
    criteria = criteria_of(result)
    assert criteria["swap_out_peak_rate"]["outcome"] == "fail"
    assert 0 < criteria["swap_out_peak_rate"]["value"] < 10 * 2**30
    assert all(criteria[name]["outcome"] == "pass" for name in BUILTIN)
    assert criteria["retrans_ratio"]["value"] is not None  # a warning, judged with data
    assert any(r.startswith("swap_out_peak_rate (error)") for r in only_node(result)["reasons"])


def test_an_oom_kill_at_the_start_of_the_workload_fails_with_exit_code_1(
    oom: tuple[int, dict[str, Any], str],
) -> None:
    code, result, _ = oom
    assert (code, result["verdict"]) == (1, "fail")
    node = only_node(result)
    oom_lines = [e["text"] for e in node["console_events"] if e["kind"] == "oom_kill"]
    assert any("Out of memory: Killed process" in line for line in oom_lines)
    # The kill came within seconds of the start: the node's own samples say when.
    samples = (Path(result["result_dir"]) / "r001" / "node1" / "samples.jsonl").read_text().splitlines()
    first_kill = next(json.loads(line) for line in samples if json.loads(line).get("oom_kill", 0) >= 1)
    assert (first_kill["node_time_ns"] - node["workload"]["started_node_ns"]) / 1e9 < 5
    no_oom = criteria_of(result)["no_oom_kill"]
    assert no_oom["outcome"] == "fail" and no_oom["value"] >= 1
    assert {c["name"]: c["outcome"] for c in node["checks"]}["no_oom_kill"] == "fail"
