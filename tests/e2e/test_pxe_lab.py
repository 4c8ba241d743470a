"""Bare metal on the lab-in-a-box, for real: a machine that boots from the network.

``swaplab lab up`` on tests/fixtures/labs/e2e-pxe.yml boots the server VM (knfsd, and the
boot server provisioned by playbooks/pxe_server.yml), starts the machine's BMC (ipmi_sim
on loopback, its chassis a QEMU machine on the lab bridge without -kernel) and a relay to
its sshd. A campaign then powers the machine through the BMC, which PXE-boots the run's
kernel from dnsmasq, iPXE and HTTP, swaps to knfsd and passes; a BMC that does not answer
and a machine that never asks for its boot files end as infra-errors naming the cause;
and the BMC's password is nowhere it must not be. With ``-s`` it prints what it measured.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from model.lab import load_lab
from tests.conftest import require_tools
from tests.e2e.stack import Lab as Stack
from workers.bmc.base import PowerState
from workers.bmc.credentials import lab_credentials_file, load_credentials
from workers.bmc.ipmi import IpmiBmc
from workers.bmc.simulator import recorded_alive
from workers.lab import labbox
from workers.loopback import tcp_listening

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(1800)]
REPO = Path(__file__).resolve().parents[2]
INVENTORY = REPO / "tests" / "fixtures" / "labs" / "e2e-pxe.yml"
SWAPLAB = REPO / ".venv" / "bin" / "swaplab"
BMC_DIR = Path.home() / ".cache" / "swaplab" / "labs" / "e2epxe" / "machines" / "node1" / "bmc"
measured: dict[str, Any] = {}

CAMPAIGN = f"""\
name: pxe-smoke
description: one machine PXE-boots the run's kernel, swaps to knfsd and verifies every page
lab: {json.dumps(str(INVENTORY))}
kernels:
  - package: linux-image-amd64
nodes: 1
node:
  ram_mib: 256
  sysctl: {{vm.min_free_kbytes: 16384}}
nfs:
  version: "4.1"
  mount_options: [hard, timeo=600]
swap:
  size_mib: 384
workloads:
  - name: overcommit
    mib: 320
    passes: 1
    timeout_s: 300
"""


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    require_tools(("redis-server", "prometheus", "ipmi_sim", "qemu-system-x86_64", "mmdebstrap"))
    the_stack = Stack(tmp_path_factory.mktemp("pxe"), ["control", "lab.e2epxe"], [INVENTORY])
    began = time.monotonic()
    up = subprocess.run(
        [str(SWAPLAB), "lab", "up", "--json", "-i", str(INVENTORY)], capture_output=True, text=True, timeout=1200
    )
    measured["lab up"] = f"{time.monotonic() - began:.0f} s"
    assert up.returncode == 0, up.stderr[-3000:]
    the_stack.up_report = json.loads(up.stdout)  # type: ignore[attr-defined]
    the_stack.up_progress = up.stderr  # type: ignore[attr-defined]
    the_stack.start()
    try:
        yield the_stack
    finally:
        the_stack.stop()
        if "booted now" in the_stack.up_report["server_vm"]:  # type: ignore[attr-defined]  # ours to take down
            subprocess.run([str(SWAPLAB), "lab", "down", "-i", str(INVENTORY)], capture_output=True, timeout=300)
        print("\n  measured: " + "; ".join(f"{k}: {v}" for k, v in measured.items()), flush=True)


@pytest.fixture(scope="module")
def campaign_result(stack: Stack, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    campaign = tmp_path_factory.mktemp("pxe-campaign") / "pxe-smoke.yaml"
    campaign.write_text(CAMPAIGN)
    began = time.monotonic()
    proc = stack.cli("run", "--json", str(campaign), timeout=1200)
    measured["PXE campaign"] = f"{time.monotonic() - began:.0f} s"
    assert proc.returncode == 0, proc.stderr[-4000:]
    result: dict[str, Any] = json.loads(proc.stdout)
    result["progress"] = proc.stderr
    return result


def test_lab_up_started_the_bmc_the_relay_and_the_boot_server(stack: Stack) -> None:
    progress = stack.up_progress  # type: ignore[attr-defined]
    if "booting" in progress:  # this lab up started them (else an earlier one did)
        assert "BMC of node1 on 127.0.0.1:17261" in progress, progress[-3000:]
        assert "SSH relay 127.0.0.1:17262 -> 10.78.0.11:22" in progress and "pxe_server.yml" in progress
    assert _bmc_power() is PowerState.OFF  # the BMC answers with the lab's credentials
    assert tcp_listening(17262)  # the relay to the machine's sshd
    assert _server("systemctl is-active dnsmasq swaplab-boot-http").split() == ["active", "active"]
    assert lab_credentials_file("e2epxe").stat().st_mode & 0o777 == 0o600


def test_the_machine_pxe_booted_the_runs_kernel_and_passed(campaign_result: dict[str, Any]) -> None:
    assert campaign_result["verdict"] == "pass", campaign_result.get("runs")
    [run] = campaign_result["runs"]
    [node] = run["nodes"]
    boot = node["boot"]
    assert boot["path"] == "pxe" and boot["mac"] == "52:54:00:78:00:11", boot
    assert boot["bmc_actions"][:2] == ["next boot: network (PXE)", "power on"], boot
    assert len(boot["kernel_sha256"]) == 64 and boot["served_from"].startswith("http://10.78.0.1:8069/runs/")
    # The machine's own uname says it runs the run's kernel (checked against the image, too).
    assert node["kernel"]["uname_r"] == node["kernel"]["kver"] and node["kernel"]["uname_v"], node["kernel"]
    assert node["data_path"].startswith("lab network 10.78.0.0/24: 10.78.0.11"), node["data_path"]
    assert node["swap_file_nonzero_pages"] > 0 and node["workload"]["bad_pages"] == 0


def _server(command: str) -> str:
    vm = labbox.server_vm(labbox.Box.of_lab(load_lab(INVENTORY)))
    assert vm is not None
    try:
        done = vm.run(command, timeout=60)
    finally:
        vm.close()
    assert done.ok, done
    return done.stdout.strip()


def _bmc_power() -> PowerState:
    creds = load_credentials("lab", "node1", lab="e2epxe")
    return IpmiBmc("127.0.0.1", creds, 17261, timeout_s=10).power_state()


def test_after_the_run_nothing_stays_published_and_the_machine_is_off(campaign_result: dict[str, Any]) -> None:
    assert _server("ls -A /srv/swaplab/boot/www/mac /srv/swaplab/boot/www/runs").split() == [
        "/srv/swaplab/boot/www/mac:",
        "/srv/swaplab/boot/www/runs:",
    ]
    assert not list(Path("/run/swaplab/boot").glob("e2epxe-*.json"))
    assert _bmc_power() is PowerState.OFF


def _infra_error(stack: Stack, tmp_path: Path) -> tuple[dict[str, Any], float]:
    campaign = tmp_path / "pxe-smoke.yaml"
    campaign.write_text(CAMPAIGN)
    began = time.monotonic()
    proc = stack.cli("run", "--json", str(campaign), timeout=900)
    took = time.monotonic() - began
    assert proc.returncode == 2, proc.stderr[-3000:]
    return json.loads(proc.stdout), took


def test_a_machine_that_never_asks_for_its_boot_files_is_an_infra_error(
    stack: Stack, campaign_result: dict[str, Any], tmp_path: Path
) -> None:
    _server("systemctl stop dnsmasq")  # no DHCP on the lab network: the firmware never gets a boot file
    try:
        result, took = _infra_error(stack, tmp_path)
    finally:
        _server("systemctl start dnsmasq")
    measured["machine that never asks"] = f"{took:.0f} s"
    [run] = result["runs"]
    [node] = run["nodes"]
    reason = json.dumps(node)
    assert node["verdict"] == "infra-error", node
    assert "never asked the boot server for its boot files within 60 s (MAC 52:54:00:78:00:11" in reason, reason
    assert _server("ls -A /srv/swaplab/boot/www/mac") == ""  # withdrawn
    assert _bmc_power() is PowerState.OFF
    health = _health(stack)  # a boot that failed for the lab's reasons counts against the node
    assert health["consecutive_boot_failures"] == 1 and "never asked" in health["last_reason"], health


def test_lab_check_finds_the_lab_fit_and_names_a_bmc_that_does_not_answer(stack: Stack) -> None:
    proc = stack.cli("lab", "check", str(INVENTORY), timeout=180)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    rows = [line for line in proc.stdout.splitlines() if line.startswith("  ")]
    assert len(rows) == 3 and all(" fit " in row for row in rows), rows
    [boot] = [row for row in rows if row.startswith("  boot server")]
    assert "DHCP and TFTP listening, boot.ipxe served over HTTP" in boot, boot
    pids = recorded_alive(BMC_DIR)
    for pid in pids:
        os.kill(pid, signal.SIGSTOP)
    try:
        stopped = stack.cli("lab", "check", str(INVENTORY), timeout=180)
    finally:
        for pid in pids:
            os.kill(pid, signal.SIGCONT)
    assert stopped.returncode == 2, stopped.stdout + stopped.stderr
    [node] = [line for line in stopped.stdout.splitlines() if line.startswith("  node")]
    assert "NOT FIT" in node and "BMC 127.0.0.1:17261" in node, node


def test_a_bmc_that_does_not_answer_is_an_infra_error(
    stack: Stack, campaign_result: dict[str, Any], tmp_path: Path
) -> None:
    # A hung BMC: its process lives (so the run's setup, which restarts a BMC that is gone,
    # leaves it) but answers nothing.
    pids = recorded_alive(BMC_DIR)
    assert pids
    for pid in pids:
        os.kill(pid, signal.SIGSTOP)
    try:
        result, took = _infra_error(stack, tmp_path)
    finally:
        for pid in pids:
            os.kill(pid, signal.SIGCONT)
    measured["BMC that does not answer"] = f"{took:.0f} s"
    [run] = result["runs"]
    [node] = run["nodes"]
    assert node["verdict"] == "infra-error", node
    assert "BMC 127.0.0.1 did not give the power state" in json.dumps(node), node
    assert took < 180  # the BMC's timeout is 10 s: no hang
    assert _bmc_power() is PowerState.OFF  # it answers again once it runs
    health = _health(stack)  # its second boot failure in a row: out of the pool until put back
    assert not health["healthy"] and "BMC 127.0.0.1" in health["last_reason"], health
    assert stack.cli("lab", "back", "node1", "-i", str(INVENTORY)).returncode == 0
    assert _health(stack)["healthy"]


def _health(stack: Stack) -> dict[str, Any]:
    proc = stack.cli("lab", "status", "--json", "-i", str(INVENTORY))
    assert proc.returncode == 0, proc.stderr
    [node] = json.loads(proc.stdout)["nodes"]
    return dict(node)


def test_no_bmc_password_in_logs_results_or_process_lists(stack: Stack, campaign_result: dict[str, Any]) -> None:
    password = lab_credentials_file("e2epxe").read_text().split("password:")[1].split()[0]
    assert len(password) >= 16
    seen = []
    for pid in (p for p in os.listdir("/proc") if p.isdigit()):
        try:
            if password.encode() in Path(f"/proc/{pid}/cmdline").read_bytes():
                seen.append(pid)
        except OSError:
            continue
    assert not seen, f"the BMC password is in the argv of {seen}"
    assert password not in campaign_result["progress"] and password not in json.dumps(campaign_result)
    result_dir = Path(campaign_result["result_dir"])
    for path in result_dir.rglob("*"):
        if path.is_file():
            assert password.encode() not in path.read_bytes(), path
    machines = Path.home() / ".cache" / "swaplab" / "labs" / "e2epxe" / "machines"
    for log in [*stack.tmp.rglob("*.log"), *machines.rglob("*.log")]:
        assert password.encode() not in log.read_bytes(), log
