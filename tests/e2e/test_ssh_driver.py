"""The ``ssh`` driver end to end: a node swaplab does not boot.

The test boots a QEMU guest itself (raw qemu-system, not swaplab's driver) from an image
*without* swaplab-node, and describes it in an inventory as ``swaplab_driver: ssh`` with
its key and known_hosts. swaplab must copy its tool over (checked by hash), read the
running kernel back, pass, and leave the node as it found it, twice. Then the same kind
of node is frozen (QMP ``stop``) and killed mid-workload: with nothing on its console to
blame the kernel, both are exactly an infra-error, and the node leaves the pool.
"""

from __future__ import annotations

import json
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import paramiko
import pytest

from model.kernel import KernelSource
from tests.conftest import free_port, require_tools
from tests.e2e.stack import Lab
from workers.image import LabKeys, NodeImage, build_node_image, lab_keys
from workers.kernel import fetch_kernel

pytestmark = pytest.mark.e2e
LAB = "sshe2e"
NODE = "sshnode"
NFS_PORT = 12054
RAM_MIB = 256


class Guest:
    """A QEMU guest this test starts and controls (console file, QMP socket, SSH port)."""

    def __init__(self, image: NodeImage, keys: LabKeys, workdir: Path, port: int) -> None:
        self.image, self.keys, self.port = image, keys, port
        self.console = workdir / "console.log"
        self.qmp_path = workdir / "qmp.sock"
        self.workdir = workdir
        self.proc: subprocess.Popen[bytes] | None = None

    def boot(self) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.console.unlink(missing_ok=True)
        cmdline = (
            "console=ttyS0 panic=-1 printk.time=1 mitigations=off zswap.enabled=0 "
            f"swaplab.hostname={NODE} swaplab.nfs4_id=test-{LAB}-{NODE}-{time.time_ns()}"
        )
        argv = [
            "qemu-system-x86_64", "-accel", "tcg", "-name", f"test-{LAB}-{NODE}", "-m", f"{RAM_MIB}M", "-smp", "1",
            "-display", "none", "-no-reboot", "-kernel", str(self.image.kernel), "-initrd", str(self.image.initrd),
            "-append", cmdline, "-serial", f"file:{self.console}", "-monitor", "none",
            "-qmp", f"unix:{self.qmp_path},server=on,wait=off",
            "-netdev", f"user,id=n0,hostfwd=tcp:127.0.0.1:{self.port}-:22",
            "-device", "virtio-net-pci,netdev=n0,romfile=", "-device", "virtio-rng-pci",
        ]  # fmt: skip
        self.proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, start_new_session=True)
        deadline = time.monotonic() + 120
        while "swaplab: ready" not in self._console_text():
            assert self.proc.poll() is None, f"guest exited: {self._console_text()[-2000:]}"
            assert time.monotonic() < deadline, "guest never got ready"
            time.sleep(0.5)
        self.sh("true")  # sshd answers

    def _console_text(self) -> str:
        return self.console.read_text(errors="replace") if self.console.exists() else ""

    def sh(self, command: str) -> str:
        """Run a command as root over the test's own SSH session."""
        client = paramiko.SSHClient()
        client.set_missing_host_key_policy(paramiko.AutoAddPolicy())  # the test's own check, not swaplab's
        deadline = time.monotonic() + 60
        while True:
            try:
                client.connect("127.0.0.1", self.port, "root", key_filename=str(self.keys.client_private), timeout=5,
                               look_for_keys=False, allow_agent=False)  # fmt: skip
                break
            except (OSError, paramiko.SSHException):
                assert time.monotonic() < deadline, "guest SSH did not answer"
                time.sleep(1)
        try:
            _stdin, stdout, _stderr = client.exec_command(command, timeout=60)
            return str(stdout.read().decode().strip())
        finally:
            client.close()

    def qmp(self, command: str) -> dict[str, Any]:
        with socket.socket(socket.AF_UNIX) as sock:
            sock.connect(str(self.qmp_path))
            reader = sock.makefile("r")
            reader.readline()  # greeting
            for execute in ("qmp_capabilities", command):
                sock.sendall(json.dumps({"execute": execute}).encode() + b"\n")
                reply: dict[str, Any] = {}
                while "return" not in reply and "error" not in reply:  # events may come first
                    reply = json.loads(reader.readline())
            return reply

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


@pytest.fixture(scope="module")
def keys() -> LabKeys:
    require_tools()
    return lab_keys(LAB)


@pytest.fixture(scope="module")
def image(keys: LabKeys) -> NodeImage:
    kernel = fetch_kernel(KernelSource(package="linux-image-amd64"))
    return build_node_image(kernel, keys, with_node_tool=False)


@pytest.fixture(scope="module")
def guest(image: NodeImage, keys: LabKeys, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Guest]:
    the_guest = Guest(image, keys, tmp_path_factory.mktemp("guest"), free_port())
    the_guest.boot()
    yield the_guest
    the_guest.kill()


def write_inventory(folder: Path, guest: Guest, keys: LabKeys) -> Path:
    """The lab as its workers know it: the guest as an ssh node, with its key and host key."""
    known_hosts = folder / "known_hosts"
    known_hosts.write_text(f"[127.0.0.1]:{guest.port} {keys.host_public}\n")
    inventory = folder / "inventory.yml"
    inventory.write_text(
        f"""\
all:
  vars: {{swaplab_lab: {LAB}}}
  children:
    nfs_server:
      hosts:
        localhost: {{swaplab_nfs: ganesha, swaplab_nfs_bind: 127.0.0.1, swaplab_nfs_port: {NFS_PORT},
                     swaplab_nfs_guest_address: 10.0.2.2}}
    nodes:
      hosts:
        {NODE}:
          swaplab_driver: ssh
          ansible_host: 127.0.0.1
          ansible_port: {guest.port}
          ansible_user: root
          swaplab_ssh_key: {keys.client_private}
          swaplab_known_hosts: {known_hosts}
"""
    )
    return inventory


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory, guest: Guest, keys: LabKeys) -> Iterator[Lab]:
    require_tools(("redis-server", "qemu-system-x86_64", "ganesha.nfsd", "prometheus"))
    folder = tmp_path_factory.mktemp("ssh-stack")
    the_stack = Lab(folder, ["control", f"lab.{LAB}"], [write_inventory(folder, guest, keys)])
    the_stack.start()
    yield the_stack
    the_stack.cli("nfs", "stop", "-i", str(the_stack.tmp / "inventory.yml"))
    the_stack.stop()


@pytest.fixture(scope="module")
def campaign(stack: Lab, image: NodeImage) -> Path:
    path = stack.tmp / "attach.yaml"
    path.write_text(
        f"""\
name: attach
lab: {stack.tmp / "inventory.yml"}
kernels:
  - running: "{image.kver}"
nodes: 1
node: {{sysctl: {{vm.min_free_kbytes: 16384}}}}
swap: {{size_mib: 512}}
workloads:
  - {{name: attach, mib: 320, timeout_s: 240}}
"""
    )
    return path


def _clean_state(guest: Guest) -> dict[str, str]:
    """What a run must leave as it found: swaps, mounts, processes, the tool, a sysctl."""
    return {
        "swaps": guest.sh("tail -n +2 /proc/swaps"),
        "mounts": guest.sh("grep -c swaplab /proc/mounts; true"),
        "processes": guest.sh("pgrep -x swaplab-node; true"),
        "tool": guest.sh("ls /run/swaplab 2>&1; true"),
        "min_free_kbytes": guest.sh("sysctl -n vm.min_free_kbytes"),
    }


@pytest.fixture(scope="module")
def two_runs(stack: Lab, guest: Guest, campaign: Path) -> dict[str, Any]:
    assert guest.sh("ls /usr/bin/swaplab-node 2>&1; true").endswith("No such file or directory")
    before = _clean_state(guest)
    runs = []
    for _ in range(2):
        proc = stack.cli("submit", "--wait", "--json", str(campaign), timeout=600)
        runs.append((proc.returncode, json.loads(proc.stdout), _clean_state(guest)))
    return {"before": before, "runs": runs, "release": guest.sh("uname -r"), "version": guest.sh("uname -v")}


def _only_node(result: dict[str, Any]) -> dict[str, Any]:
    [run] = result["runs"]
    [node] = run["nodes"]
    return dict(node)


def test_a_node_swaplab_did_not_boot_passes_with_its_kernel_read_back(two_runs: dict[str, Any]) -> None:
    code, result, _ = two_runs["runs"][0]
    node = _only_node(result)
    assert (code, node["verdict"]) == (0, "pass"), node["reasons"]
    assert node["kernel"]["kver"] == two_runs["release"]
    assert node["kernel"]["version"] == two_runs["version"]
    assert node["console_source"].startswith("kernel log over ssh")  # the inventory names no lab console
    assert node["ram_mib"] < RAM_MIB and node["planned_overcommit_mib"] == 320 - node["ram_mib"]  # its MemTotal
    assert node["swap_out_mib"] > 64 and node["swap_in_mib"] > 64
    assert {c["outcome"] for c in node["criteria"]} == {"pass"}


def test_the_node_is_left_as_it_was_found(two_runs: dict[str, Any]) -> None:
    before = two_runs["before"]
    assert before["swaps"] == "" and before["processes"] == ""
    for _code, result, after in two_runs["runs"]:
        assert after == before
        assert _only_node(result)["left_clean"] is True


def test_a_second_run_on_the_same_node_passes_too(two_runs: dict[str, Any]) -> None:
    code, result, _ = two_runs["runs"][1]
    assert (code, _only_node(result)["verdict"]) == (0, "pass")


def test_lab_check_finds_the_node_answering_with_its_kernel(stack: Lab, two_runs: dict[str, Any]) -> None:
    proc = stack.cli("lab", "check", "--json", str(stack.tmp / "inventory.yml"))
    view = json.loads(proc.stdout)
    assert (proc.returncode, view["fit"]) == (0, True), view
    [node] = [part for part in view["parts"] if part["part"] == "node"]
    assert node["target"] == f"{NODE} (ssh)" and node["detail"].endswith(f"kernel {two_runs['release']}"), node


def _health(stack: Lab) -> dict[str, Any]:
    status = json.loads(stack.cli("lab", "status", "--json", "-i", str(stack.tmp / "inventory.yml")).stdout)
    [row] = status["nodes"]
    return dict(row)


def test_a_frozen_node_is_an_infra_error_and_leaves_the_pool(
    stack: Lab, guest: Guest, campaign: Path, two_runs: dict[str, Any]
) -> None:
    cid = stack.submit(campaign)
    stack.wait_for_phase(cid, "workload", node=NODE)
    time.sleep(3)  # into the swapping
    assert guest.qmp("stop") == {"return": {}}
    proc = stack.cli("watch", "--json", cid, timeout=300)
    node = _only_node(json.loads(proc.stdout))
    assert proc.returncode == 2 and node["verdict"] == "infra-error"
    failure = node["failure"]
    assert failure["cause"] == "infra" and failure["takes_node_out"] is True
    assert "stopped answering" in failure["reason"]
    assert node["left_clean"] is False and node["cleanup_problems"]  # could not be cleaned: said so
    assert _health(stack)["healthy"] is False
    # Without power control it stays out until a person says it is back.
    refused = stack.cli("submit", "--wait", "--json", str(campaign), timeout=120)
    assert refused.returncode == 2 and "healthy node" in refused.stdout


def test_a_killed_node_is_an_infra_error(
    stack: Lab, guest: Guest, campaign: Path, image: NodeImage, keys: LabKeys
) -> None:
    guest.kill()
    guest.boot()  # a fresh machine on the same address
    assert stack.cli("lab", "back", NODE, "-i", str(stack.tmp / "inventory.yml")).returncode == 0
    assert _health(stack)["healthy"] is True
    cid = stack.submit(campaign)
    stack.wait_for_phase(cid, "workload", node=NODE)
    time.sleep(3)
    guest.kill()
    proc = stack.cli("watch", "--json", cid, timeout=300)
    node = _only_node(json.loads(proc.stdout))
    assert proc.returncode == 2 and node["verdict"] == "infra-error", node["reasons"]
    assert node["failure"]["cause"] == "infra" and "stopped answering" in node["failure"]["reason"]
    assert _health(stack)["healthy"] is False
