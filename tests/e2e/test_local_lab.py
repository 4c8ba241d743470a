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

import base64
import itertools
import json
import os
import re
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import paramiko
import pytest

from model.criteria import BUILTIN_CRITERION_NAMES
from model.figures import FIGURE_NAMES, GUEST_ICOUNT_SHIFT, GUEST_PACE_MAX, HUNG_TASK_TIMEOUT_S
from model.paths import cache_dir
from model.state import embedded_redis_dir
from orchestrator.prometheus import PrometheusApi
from orchestrator.services import LocalPrometheus
from tests import dashboards
from tests.conftest import require_tools
from workers.image import lab_keys

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


@pytest.fixture
def prometheus() -> Iterator[PrometheusApi]:
    """The Prometheus ``swaplab run`` used (its TSDB is kept), running again for queries.

    Per test: a ``swaplab run`` of a later fixture stops the local services it finds."""
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
            if title.startswith(dashboards.ANNOTATION_TITLE_PREFIX):
                continue  # it marks faults; the smoke run has none (the stall run's test queries it)
            promql = dashboards.render(query, values, range_s=int(end - start))
            series = prometheus.query_range(promql, start, end, step_s=2)
            if not any(v == v for _labels, points in series for _t, v in points):  # v == v: not NaN
                empty.append(f"{path.name}: {title}: {promql}")
    assert not empty, "queries without data:\n" + "\n".join(empty)


def test_an_impossible_threshold_fails_with_exit_code_3_naming_it(
    smoke: tuple[int, dict[str, Any], str], prometheus: PrometheusApi
) -> None:
    # The smoke run judged again with a threshold no node can meet: the same judgement and
    # exit codes as `swaplab run`, without a run of its own.
    code, result = check(smoke[1]["campaign_id"], "--criteria", str(FIXTURES / "criteria" / "impossible.yaml"))
    assert (code, result["verdict"]) == (3, "fail")
    criteria = criteria_of(result)
    assert criteria["swap_out_peak_rate"]["outcome"] == "fail"
    assert 0 < criteria["swap_out_peak_rate"]["value"] < 10 * 2**30
    assert all(criteria[name]["outcome"] == "pass" for name in BUILTIN)
    assert criteria["retrans_ratio"]["value"] is not None  # a warning, judged with data
    assert any(r.startswith("swap_out_peak_rate (error)") for r in only_node(result)["reasons"])


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


# -- faults: the NFS server stalls mid swap-out, and later restarts ----------------------------------


@pytest.fixture(scope="module")
def stall(tmp_path_factory: pytest.TempPathFactory) -> tuple[int, dict[str, Any], str]:
    return run_campaign(REPO / "campaigns" / "faults.yaml", tmp_path_factory.mktemp("stall"))


def samples_of(result: dict[str, Any]) -> list[dict[str, Any]]:
    path = Path(result["result_dir"]) / "r001" / "node1" / "samples.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_a_ganesha_stall_mid_swap_out_is_recovered_with_its_recovery_time(
    stall: tuple[int, dict[str, Any], str],
) -> None:
    code, result, progress = stall
    assert (code, result["verdict"]) == (0, "pass"), only_node(result)["reasons"]
    node = only_node(result)
    fault = node["faults"][0]
    assert fault["kind"] == "server-stall" and fault["node"] == "node1" and not fault["missed"]
    assert 14.5 <= fault["ended_at"] - fault["started_at"] <= 18
    assert fault["swap_out_mibps_before"] > 0  # swap-out was under way: the fault hit it
    assert fault["recovery_s"] is not None and 0 <= fault["recovery_s"] < 60
    check = {c["name"]: c for c in node["checks"]}["fault_1"]
    assert check["outcome"] == "pass" and f"recovered {fault['recovery_s']:.1f} s after its end" in check["detail"]
    assert "fault 1: server-stall on server after 24 MiB swapped out for 15 s began" in progress
    assert result["runs"][0]["settings"]["faults"] == [
        "server-stall on server after 24 MiB swapped out for 15 s",
        "memory-squeeze of 48 MiB on node-1 after 160 MiB swapped out for 60 s",
        "server-restart on server after 240 MiB swapped out for 1 s",
    ]


def test_a_ganesha_restart_mid_swap_out_is_recovered_through_its_grace_period(
    stall: tuple[int, dict[str, Any], str],
) -> None:
    _, result, progress = stall
    node = only_node(result)
    restart = node["faults"][2]
    assert restart["kind"] == "server-restart" and not restart["missed"], restart
    assert restart["swap_out_mibps_before"] > 0  # it hit swap-out under way
    assert restart["recovery_s"] is not None and 0 <= restart["recovery_s"] < 60, restart
    check = {c["name"]: c for c in node["checks"]}["fault_3"]
    assert check["outcome"] == "pass", check
    # The restarted server began in its grace period and the node reclaimed its open
    # swap file in it: otherwise the kernel loses the file's state and swap writes fail.
    log = Path(result["result_dir"], "r001", "node1", "nfs-server.log").read_text(errors="replace")
    assert "NFS Server Now IN GRACE" in log, log[-2000:]
    assert re.search(r"reclaim complete\([1-9]", log), log[-2000:]  # ganesha counted the node's reclaim
    assert not [e for e in node["console_events"] if e["kind"] in ("swap_write_error", "oops")]
    assert "fault 3: server-restart on server after 240 MiB swapped out for 1 s began" in progress
    # The campaign's criterion on the phase after the restart: judged over that window alone.
    after = criteria_of(result)["swap_out_after_restart"]
    assert after["outcome"] == "pass" and after["detail"].endswith("(after fault 3)"), after


def test_a_memory_squeeze_beside_the_workload_got_its_pages_back_intact(
    stall: tuple[int, dict[str, Any], str],
) -> None:
    _, result, _ = stall
    node = only_node(result)
    squeeze = node["faults"][1]
    assert squeeze["kind"] == "memory-squeeze" and not squeeze["missed"] and squeeze["swap_out_mibps_before"] > 0
    assert squeeze["ended_at"] - squeeze["started_at"] < 55, squeeze  # its hog finished: the fault ended then
    log = Path(result["result_dir"], "r001", "node1", "squeeze-2.log").read_text()
    [done] = [
        dict(word.split("=") for word in line.split()[1:]) for line in log.splitlines() if line.startswith("done ")
    ]
    assert (done["pages"], done["bad"]) == (str(48 * 256), "0"), log[-500:]  # every page read back as written
    assert {c["name"]: c["outcome"] for c in node["checks"]}["fault_2"] == "pass"


def test_swap_out_stood_still_while_ganesha_was_stopped_and_resumed_after(
    stall: tuple[int, dict[str, Any], str],
) -> None:
    _, result, _ = stall
    fault = only_node(result)["faults"][0]
    at = [(s["host_time_ns"] / 1e9, s["pswpout"]) for s in samples_of(result) if "host_time_ns" in s]
    during = [out for t, out in at if fault["started_at"] + 1 <= t <= fault["ended_at"] - 0.5]
    before_end = [out for t, out in at if t < fault["ended_at"]]
    after = [out for t, out in at if fault["ended_at"] <= t <= fault["ended_at"] + 10]
    if len(during) >= 2:
        assert max(during) - min(during) <= 64, during  # a few pages in flight at most
    else:
        # The sampler's own allocations reclaim through the stalled server, so it may fall
        # silent for the whole window (it ticks every second otherwise): that is the stall too.
        gaps = [
            b - a for (a, _), (b, _) in itertools.pairwise(at) if a < fault["ended_at"] and b > fault["started_at"] + 1
        ]
        assert max(gaps) >= 2.5, gaps
    assert max(after) - max(before_end) > 256, after  # more than a MiB once it answered again


def test_the_fault_is_a_series_the_node_dashboard_draws(
    stall: tuple[int, dict[str, Any], str], prometheus: PrometheusApi
) -> None:
    _, result, _ = stall
    fault = only_node(result)["faults"][0]
    node = json.loads((REPO / "deploy" / "grafana" / "dashboards" / "swaplab-node.json").read_text())
    [annotation] = [a for a in node["annotations"]["list"] if a.get("name") == "Faults"]
    promql = dashboards.render(annotation["expr"], {"lab": "local", "node": "node1"}, range_s=60)
    series = prometheus.query_range(promql, fault["started_at"] - 5, fault["ended_at"] + 5, step_s=1)
    active = [v for labels, points in series if labels.get("kind") == "server-stall" for _t, v in points if v == v]
    assert len(active) >= 2, series


def test_a_stall_longer_than_the_hung_task_timeout_shows_hung_tasks_the_campaign_expects(
    stall: tuple[int, dict[str, Any], str],
) -> None:
    _, result, _ = stall
    node = only_node(result)
    fault = node["faults"][0]  # 15 s, with kernel.hung_task_timeout_secs = 5
    assert fault["kind"] == "server-stall" and not fault["missed"] and fault["swap_out_mibps_before"] > 0, fault
    window = (fault["started_at"], fault["ended_at"] + fault["grace_s"])
    hung = [e for e in node["console_events"] if e["kind"] == "hung_task"]
    inside = [e for e in hung if window[0] <= e["host_time_s"] <= window[1]]
    # The kernel reports only tasks in TASK_UNINTERRUPTIBLE (its check uses "==" to skip the
    # TASK_KILLABLE waits of NFS): whether a stall yields messages depends on where the
    # blocked tasks wait. Usually some do (kcompactd, dropbear); a run where all waited
    # killably printed none, and swap-out stood still through the stall all the same.
    if inside:
        blocked = [int(re.search(r"blocked for more than (\d+) seconds", e["text"]).group(1)) for e in inside]  # type: ignore[union-attr]
        assert min(blocked) >= 5 and max(blocked) <= 15 + 30, blocked  # past the timeout, within the fault + grace
    assert {c["name"]: c["outcome"] for c in node["checks"]}["fault_1"] == "pass"
    assert criteria_of(result)["no_hung_task"]["outcome"] == "pass"  # excused: each inside a fault's window
    # The sampler may fall silent for a whole stall: only a silence outside the windows counts.
    alive = criteria_of(result)["node_alive"]
    assert alive["outcome"] == "pass" and "outside 3 fault window(s)" in alive["detail"], alive


def once_it_reports(results: Path, pattern: str, done: threading.Event) -> Path | None:
    """The workload log matching ``pattern`` once its workload reported progress (None: the campaign ended)."""
    while not done.is_set():
        logs = list(results.glob(pattern))
        if logs and "progress" in logs[0].read_text(errors="replace"):
            return logs[0]
        time.sleep(0.5)
    return None


def stop_the_hog_once_it_reports(results: Path, done: threading.Event) -> None:
    """SIGSTOP the first run's workload (not the sampler) once it reported progress."""
    keys = lab_keys("local")
    if once_it_reports(results, "stalled-hog-*/r001/node1/workload.log", done) is None:
        return
    client = paramiko.SSHClient()
    key_type, blob = keys.host_public.split()[:2]
    client.get_host_keys().add("[127.0.0.1]:17221", key_type, paramiko.Ed25519Key(data=base64.b64decode(blob)))
    client.set_missing_host_key_policy(paramiko.RejectPolicy())
    client.connect("127.0.0.1", port=17221, username="root", key_filename=str(keys.client_private),
                   look_for_keys=False, allow_agent=False, timeout=20)  # fmt: skip
    # The node image has ps but no pkill: the workload by its command line, never the sampler.
    stop = 'ps -eo pid=,args= | while read pid args; do case "$args" in "/usr/bin/swaplab-node hog"*) kill -STOP $pid && echo $pid;; esac; done'
    _in, out, _err = client.exec_command(stop)
    STOPPED.append(out.read().decode())
    client.close()
    # The second run (on whichever node was free): its guest frozen whole (QMP stop) once
    # its workload reports.
    log = once_it_reports(results, "stalled-hog-*/r002/*/workload.log", done)
    if log is None:
        return
    with socket.socket(socket.AF_UNIX) as sock:
        sock.connect(f"/run/swaplab/qmp/swaplab-local-{log.parent.name}/qmp.sock")
        reader = sock.makefile("r")
        reader.readline()  # the greeting
        for execute in ("qmp_capabilities", "stop"):
            sock.sendall(json.dumps({"execute": execute}).encode() + b"\n")
            reply: dict[str, Any] = {}
            while "return" not in reply and "error" not in reply:  # events may come first
                reply = json.loads(reader.readline())
        FROZEN.append(reply)


STOPPED: list[str] = []
FROZEN: list[dict[str, Any]] = []


@pytest.fixture(scope="module")
def stalled(tmp_path_factory: pytest.TempPathFactory) -> tuple[int, dict[str, Any], str]:
    results, done = tmp_path_factory.mktemp("stalled"), threading.Event()
    stopper = threading.Thread(target=stop_the_hog_once_it_reports, args=(results, done), daemon=True)
    stopper.start()
    try:
        return run_campaign(FIXTURES / "campaigns" / "stalled-hog.yaml", results)
    finally:
        done.set()
        stopper.join(30)


def test_a_workload_that_stops_progressing_ends_as_stalled_long_before_its_timeout(
    stalled: tuple[int, dict[str, Any], str],
) -> None:
    code, result, _ = stalled
    assert STOPPED and STOPPED[0].strip(), "the test never stopped the workload"
    first, _, third = result["runs"]
    [node] = first["nodes"]
    assert (code, first["verdict"]) == (1, "fail")
    failure = node["failure"]
    assert failure["cause"] == "kernel" and failure["reason"].startswith("stalled: no progress for "), failure
    assert "while the node answered" in failure["reason"] and "MiB out" in failure["reason"]
    assert node["phases_s"]["workload"] < 120  # the bound is 20 s; the timeout 600 s
    # The node was released and the campaign went on: the next run on it passed.
    assert third["verdict"] == "pass", third["nodes"][0]["reasons"]


def test_a_frozen_guest_is_a_kernel_hang_that_says_how_long_it_was_silent(
    stalled: tuple[int, dict[str, Any], str],
) -> None:
    _, result, _ = stalled
    assert FROZEN == [{"return": {}}], "the test never froze the guest"
    frozen = result["runs"][1]
    [node] = frozen["nodes"]
    assert frozen["verdict"] == "fail"
    failure = node["failure"]
    assert failure["cause"] == "kernel" and not failure["takes_node_out"], failure  # its QEMU is killed
    assert "node stopped answering while its machine and the NFS server were up (hang)" in failure["reason"]
    silent = int(re.search(r"silent for (\d+) s", failure["reason"]).group(1))  # type: ignore[union-attr]
    assert 30 <= silent < 120, failure  # the silence bound, and the probe that found it dead
    assert not node["reasons"][0].startswith("stalled"), node["reasons"]  # answered nothing: no watchdog
