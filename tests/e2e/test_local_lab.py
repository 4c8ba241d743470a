"""End to end on the embedded default lab: real QEMU guests, real nfs-ganesha, real SSH.

Each campaign runs once (module fixture) through the real ``swaplab run`` command and
serves several assertions.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import require_tools

pytestmark = pytest.mark.e2e
REPO = Path(__file__).resolve().parents[2]
MIB = 2**20


SWAPLAB = Path(sys.executable).with_name("swaplab")


@pytest.fixture(scope="module", autouse=True)
def lab_nfs_server_stopped_afterwards() -> Iterator[None]:
    # The lab's NFS server outlives runs by design; the test suite leaves nothing running.
    yield
    subprocess.run([str(SWAPLAB), "nfs", "stop"], check=True, capture_output=True, timeout=60)


def run_campaign(name: str, results: Path) -> tuple[int, dict[str, Any], str]:
    require_tools()
    env = {**os.environ, "SWAPLAB_RESULTS": str(results)}
    proc = subprocess.run(
        [str(SWAPLAB), "run", "--json", str(REPO / "campaigns" / f"{name}.yaml")],
        capture_output=True,
        text=True,
        env=env,
        timeout=900,
    )
    sys.stderr.write(proc.stderr)  # progress, shown by pytest when a test fails
    return proc.returncode, json.loads(proc.stdout), proc.stderr


@pytest.fixture(scope="module")
def smoke(tmp_path_factory: pytest.TempPathFactory) -> tuple[int, dict[str, Any], str]:
    return run_campaign("smoke", tmp_path_factory.mktemp("smoke"))


@pytest.fixture(scope="module")
def oom(tmp_path_factory: pytest.TempPathFactory) -> tuple[int, dict[str, Any], str]:
    return run_campaign("oom", tmp_path_factory.mktemp("oom"))


def only_node(result: dict[str, Any]) -> dict[str, Any]:
    [run] = result["runs"]
    [node] = run["nodes"]
    return node


def test_smoke_passes_with_exit_code_0(smoke: tuple[int, dict[str, Any], str]) -> None:
    code, result, _ = smoke
    assert (code, result["verdict"]) == (0, "pass"), only_node(result)["reasons"]
    assert {c["name"]: c["outcome"] for c in only_node(result)["checks"]}["swap_used"] == "pass"


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


def test_oom_campaign_fails_with_exit_code_1(oom: tuple[int, dict[str, Any], str]) -> None:
    code, result, _ = oom
    assert (code, result["verdict"]) == (1, "fail")


def test_oom_evidence_is_the_console_line_and_the_counter(oom: tuple[int, dict[str, Any], str]) -> None:
    node = only_node(oom[1])
    oom_lines = [e["text"] for e in node["console_events"] if e["kind"] == "oom_kill"]
    assert any("Out of memory: Killed process" in line for line in oom_lines)
    checks = {c["name"]: c for c in node["checks"]}
    assert checks["no_oom_kill"]["outcome"] == "fail"
    assert checks["oom_kill_counter"]["outcome"] == "fail"
    assert "increased by 0" not in checks["oom_kill_counter"]["detail"]
