"""The lab-in-a-box for real: a lab network, a Debian server VM running knfsd provisioned
by Ansible, and QEMU nodes swapping to it over their taps.

The session's ``lab_in_a_box`` (tests/e2e/conftest.py) is brought up by ``swaplab lab up``;
this module checks what it brought up (the server image, the VM, Ansible's provisioning
and its idempotence), runs a campaign on it (one node swaps to knfsd and passes; the
result names the server and the node's address), then does from inside a second guest
what a hostile kernel's root would (mount its neighbour's export, take its neighbour's
address, reach the server's sshd), and finally takes the lab down and looks for anything
left. With ``-s`` it prints what it measured.
"""

from __future__ import annotations

import hashlib
import ipaddress
import json
import os
import re
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import paramiko
import pytest

from model.kernel import KernelSource
from model.lab import BootServer, BootServerSettings
from tests.conftest import require_tools
from tests.e2e.conftest import LabInABox
from tests.e2e.guests import Guest, booted_guest
from tests.e2e.stack import Lab as Stack
from tests.integration.lab_frames import host_rules_and_qdiscs
from workers.faults import actions
from workers.image import NodeImage, build_node_image, lab_keys
from workers.kernel import fetch_kernel
from workers.lab import boot_server, labbox, network
from workers.lab.labbox import Box
from workers.lab.nfs import make_nfs_server
from workers.lab.provision import ProvisionError, run_playbook
from workers.lab.server_image import HOSTNAME, RECIPE_VERSION, ServerImage, build_server_image
from workers.lab.server_vm import ServerVm
from workers.loopback import port_free
from workers.process import cmdline, pid_alive

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(1500)]
REPO = Path(__file__).resolve().parents[2]
MIB = 2**20
CACHED_MAX_S = 90.0  # a cache hit resolves the package set (apt's indices, a few seconds)
GUEST_RAM_MIB = 192
BOOT_TIMEOUT_S = 180.0
measured: dict[str, Any] = {}

Fingerprint = tuple[int, int, str]


def _fingerprint(disk: Path) -> Fingerprint:
    """Size, mtime and the hash of the first MiB (superblock, group descriptors)."""
    info = disk.stat()
    with disk.open("rb") as handle:
        head = hashlib.sha256(handle.read(MIB)).hexdigest()
    return info.st_size, info.st_mtime_ns, head


@pytest.fixture(scope="module")
def box(lab_in_a_box: LabInABox) -> Box:
    return Box.of_lab(lab_in_a_box.lab)


@pytest.fixture(scope="module")
def vm(box: Box) -> Iterator[ServerVm]:
    """The lab's server VM, adopted as any worker would (this process did not start it)."""
    server = labbox.server_vm(box)
    assert server is not None, "the lab is up but its server VM is not running"
    yield server
    server.close()


@pytest.fixture(scope="module")
def image(vm: ServerVm) -> ServerImage:
    return vm.image


@pytest.fixture(scope="module")
def disk_before(image: ServerImage) -> Fingerprint:
    return _fingerprint(image.disk)


def _ok(server: ServerVm, command: str) -> str:
    result = server.run(command)
    assert result.ok, f"{command}: {result}"
    return result.stdout.strip()


# -- what `swaplab lab up` brought up ---------------------------------------------------------------


def test_lab_up_made_the_network_booted_the_server_and_provisioned_it(lab_in_a_box: LabInABox, box: Box) -> None:
    report = lab_in_a_box.report
    measured["lab up"] = f"{lab_in_a_box.up_seconds} s"
    assert report["lab"] == "e2ebox" and report["stop_with"].startswith("swaplab lab down -i ")
    assert "booted now" in report["server_vm"] and report["provisioned"] == "now", report
    assert report["provisioning"]["changed"] > 0, report  # a fresh VM: the playbook changed it
    measured["provisioning (fresh VM)"] = f"{report['provisioning']['seconds']} s"
    assert Path(report["provisioning"]["artifacts"], "stdout").is_file()
    progress = "\n".join(lab_in_a_box.progress)
    assert "ansible: task Export each node's directory to that node alone" in progress, progress
    assert "changed" in progress and "server VM answers SSH after" in progress
    assert "e2ebox" in network.leftovers()
    links = network._links(network.namespace("e2ebox"))
    assert {"br0", "tap-server", "tap-node1", "tap-node2"} <= set(links), links


def test_a_second_lab_up_finds_it_up_and_changes_nothing(lab_in_a_box: LabInABox) -> None:
    began = time.monotonic()
    proc = lab_in_a_box.cli("lab", "up", "--json", "-i", str(lab_in_a_box.inventory))
    measured["lab up, already up"] = f"{time.monotonic() - began:.1f} s"
    assert proc.returncode == 0, proc.stderr
    again = json.loads(proc.stdout)
    assert "was running" in again["server_vm"] and again["provisioned"].startswith("earlier"), again
    assert again["provisioning"] is None
    assert again["server_vm"].split()[1] == lab_in_a_box.report["server_vm"].split()[1]  # the same pid


def test_lab_check_finds_every_part_fit(lab_in_a_box: LabInABox) -> None:
    proc = lab_in_a_box.cli("lab", "check", "--json", str(lab_in_a_box.inventory), timeout=120)
    view = json.loads(proc.stdout)
    assert (proc.returncode, view["fit"]) == (0, True), view
    [server] = [part for part in view["parts"] if part["part"] == "nfs server"]
    assert "knfsd" in server["target"] and "each to its node's address alone" in server["detail"], server
    assert [part["target"] for part in view["parts"] if part["part"] == "node"] == ["node1 (qemu)", "node2 (qemu)"]


def test_the_manifest_lists_the_server_packages_with_versions(image: ServerImage) -> None:
    manifest = json.loads(image.manifest.read_text())
    assert manifest["builder"] == RECIPE_VERSION
    assert manifest["key"] == image.folder.name == image.key
    packages = manifest["packages"]
    for name in ("nfs-kernel-server", "linux-image-amd64", "openssh-server", "python3", "systemd-sysv"):
        assert packages.get(name, "")[:1].isdigit(), f"{name} has no version in the manifest: {packages.get(name)!r}"
    kernel = manifest["kernel"]
    assert kernel["package"] == f"linux-image-{kernel['release']}"
    assert packages[kernel["package"]] == kernel["version"]
    # The image's files are this user's only (the disk holds sshd's host keys).
    for path in (image.disk, image.vmlinuz, image.initrd, image.manifest):
        assert path.stat().st_mode & 0o077 == 0, f"{path} is readable by others"
    measured["server image build (cold, from its manifest)"] = f"{image.build_seconds:.0f} s"


def test_a_second_image_build_is_a_cache_hit(image: ServerImage, disk_before: Fingerprint) -> None:
    again = build_server_image(lab_keys("e2ebox"))
    measured["server image, cached"] = f"{again.seconds:.1f} s"
    assert again.state == "cached" and again.seconds < CACHED_MAX_S
    assert (again.folder, again.key, again.build_seconds) == (image.folder, image.key, image.build_seconds)
    assert _fingerprint(again.disk) == disk_before, "the cache hit rewrote the disk"


def test_the_server_runs_the_images_kernel_and_is_named_swaplab_nfs(vm: ServerVm, image: ServerImage) -> None:
    release = _ok(vm, "uname -r")
    assert release == image.kernel_release
    assert image.packages[f"linux-image-{release}"] == image.kernel_version
    assert _ok(vm, "hostname") == HOSTNAME == "swaplab-nfs"
    assert _ok(vm, "python3 --version").startswith("Python 3.11")  # Ansible's modules run with it
    assert _ok(vm, "systemctl is-enabled nfs-server") == "enabled"
    assert _ok(vm, "systemctl is-active nfs-server") == "active"


def test_the_server_has_its_lab_address_and_its_data_disk(vm: ServerVm) -> None:
    addresses = _ok(vm, "ip -4 -br addr")
    assert " 10.77.0.1/24" in addresses, addresses
    assert _ok(vm, "findmnt -n -o SOURCE,FSTYPE /srv/swaplab") == "/dev/vdb ext4"


def test_sshd_takes_the_pinned_key_and_refuses_passwords(vm: ServerVm, image: ServerImage) -> None:
    effective = _ok(vm, "sshd -T | grep -Ei '^(passwordauthentication|kbdinteractiveauthentication|permitrootlogin) '")
    assert sorted(effective.splitlines()) == [
        "kbdinteractiveauthentication no",
        "passwordauthentication no",
        "permitrootlogin without-password",
    ]
    assert vm.ssh_port is not None
    transport = paramiko.Transport(("127.0.0.1", vm.ssh_port))
    try:
        transport.start_client(timeout=30)
        server_key = transport.get_remote_server_key()
        assert f"{server_key.get_name()} {server_key.get_base64()}" == image.host_key
        with pytest.raises(paramiko.BadAuthenticationType) as offered:
            transport.auth_none("root")
        assert offered.value.allowed_types == ["publickey"]
        with pytest.raises(paramiko.AuthenticationException):
            transport.auth_password("root", "root")
    finally:
        transport.close()
    proc = subprocess.run(vm.ssh_argv("echo", "ok"), capture_output=True, text=True, timeout=60, check=False)
    assert (proc.returncode, proc.stdout) == (0, "ok\n"), proc.stderr


# -- provisioning through ansible-runner ---------------------------------------------------------------


def test_provisioning_again_changes_nothing_and_each_node_has_its_own_export(
    vm: ServerVm, box: Box, lab_in_a_box: LabInABox
) -> None:
    again = labbox._provision(box, vm, labbox.plan(box), progress=lambda line: None)
    measured["provisioning, again"] = f"{again.seconds:.1f} s"
    assert again.successful and again.changed == 0, again
    # knfsd's own view: each node's directory exported to that node's address alone, synchronously.
    exported = _ok(vm, "exportfs -s")
    for node, address in (("node1", "10.77.0.11"), ("node2", "10.77.0.12")):
        [line] = [line for line in exported.splitlines() if line.startswith(f"/srv/swaplab/exports/{node} ")]
        assert f" {address}/32(sync," in line and "no_root_squash" in line, exported
    assert "*" not in exported and "<world>" not in exported, exported
    assert _ok(vm, "stat -c %a /srv/swaplab/exports/node1") == "700"
    # Ansible's artifacts are kept with the lab's logs, without the worker's environment.
    assert (again.artifacts / "stdout").is_file()
    assert "SWAPLAB_REDIS" not in (again.artifacts / "command").read_text()


def test_a_failed_provisioning_task_names_the_host_and_the_task(vm: ServerVm, tmp_path: Path) -> None:
    _ok(vm, "touch /srv/not-a-directory")
    inventory = {"nfs_server": {"hosts": {"server": vm.ansible_vars()}}}
    extravars = {
        "swaplab_nfs_export_dir": "/srv/not-a-directory/exports",
        "swaplab_nfs_nodes": [{"name": "node1", "address": "10.77.0.11"}],
    }
    with pytest.raises(ProvisionError) as failed:
        run_playbook(labbox.PLAYBOOK, inventory, tmp_path / "artifacts", extravars)
    assert "server: task 'Create the export directory'" in str(failed.value), failed.value
    assert "/srv/swaplab/exports/node1" in _ok(vm, "exportfs -s")  # the lab's exports are untouched


def test_provisioning_refuses_a_server_whose_host_key_is_not_the_pinned_one(vm: ServerVm, tmp_path: Path) -> None:
    # ansible-runner turns host key checking off by default; swaplab turns it back on, so
    # the known_hosts file the inventory names is what Ansible trusts, not whoever answers.
    other = tmp_path / "other_ed25519"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(other)], check=True)
    target = vm.target()
    wrong = tmp_path / "known_hosts"
    wrong.write_text(f"[{target.host}]:{target.port} {other.with_suffix('.pub').read_text()}")
    host = vm.ansible_vars()
    host["ansible_ssh_common_args"] = host["ansible_ssh_common_args"].replace(str(vm.known_hosts), str(wrong))
    assert str(wrong) in host["ansible_ssh_common_args"]
    extravars = {
        "swaplab_nfs_export_dir": "/srv/swaplab/exports",
        "swaplab_nfs_nodes": [{"name": "node1", "address": "10.77.0.11"}],
    }
    with pytest.raises(ProvisionError) as refused:
        run_playbook(labbox.PLAYBOOK, {"nfs_server": {"hosts": {"server": host}}}, tmp_path / "artifacts", extravars)
    assert "Failed to connect to the host via ssh" in str(refused.value), refused.value
    [stdout] = (tmp_path / "artifacts").glob("nfs_server-*/stdout")
    assert "Host key verification failed" in stdout.read_text(), stdout.read_text()[-2000:]


def test_the_pxe_playbook_makes_the_server_a_boot_server_and_a_second_run_changes_nothing(
    vm: ServerVm, box: Box, tmp_path: Path
) -> None:
    port = labbox.plan(box).port(labbox.SERVER_PORT)
    interface = _ok(vm, network.nic_name_command(port.mac))
    boot = BootServer("server", BootServerSettings(), str(port.address), shared_with_nfs=True)
    # Two machines that do not exist: the playbook only needs their MACs and addresses.
    nodes = [(f"pxe{i}", f"52:54:00:aa:00:{i:02x}", f"10.77.0.{20 + i}") for i in (1, 2)]
    extravars = boot_server.playbook_vars(boot, "10.77.0.0/24", interface, nodes)
    first = boot_server.provision(vm.ansible_vars(), extravars, tmp_path / "artifacts")
    second = boot_server.provision(vm.ansible_vars(), extravars, tmp_path / "artifacts")
    measured["pxe playbook, first and second run"] = f"{first.seconds:.0f} s, {second.seconds:.0f} s"
    assert first.successful and first.changed > 0, first
    assert second.successful and second.changed == 0, second
    try:
        assert _ok(vm, "systemctl is-active dnsmasq swaplab-boot-http").split() == ["active", "active"]
        conf = _ok(vm, "cat /etc/dnsmasq.d/swaplab-pxe.conf")
        assert f"interface={interface}" in conf and "port=0" in conf, conf
        assert "dhcp-host=52:54:00:aa:00:01,10.77.0.21,pxe1" in conf and "dhcp-range=10.77.0.0,static" in conf, conf
        # Listening where a node's firmware asks: DHCP (67) and TFTP (69) on UDP, HTTP on the lab address.
        sockets = _ok(vm, "ss -Hlnu; ss -Hlnt")
        assert re.search(r":67\b", sockets) and re.search(r":69\b", sockets), sockets
        assert "10.77.0.1:8069" in sockets and ":53 " not in sockets, sockets  # no DNS served
        fetched = _ok(
            vm,
            "python3 -c \"import urllib.request as u; print(u.urlopen('http://10.77.0.1:8069/boot.ipxe').read().decode())\"",
        )
        assert fetched.startswith("#!ipxe") and "/mac/${net0/mac:hexhyp}.ipxe" in fetched, fetched
        assert _ok(vm, "ls /srv/swaplab/boot/tftp").split() == ["ipxe.efi", "undionly.kpxe"]
    finally:
        # The rest of the module's lab has no pxe nodes: the boot server is switched off again.
        _ok(vm, "systemctl disable --now dnsmasq swaplab-boot-http")


def test_the_cached_disk_is_not_written_by_the_guest(
    vm: ServerVm, image: ServerImage, disk_before: Fingerprint
) -> None:
    _ok(vm, "echo written > /root/written-by-the-guest && sync")
    assert _ok(vm, "cat /root/written-by-the-guest") == "written"
    assert _fingerprint(image.disk) == disk_before
    assert vm.overlay.is_file()


# -- a campaign on the lab network -------------------------------------------------------------------------


@pytest.fixture(scope="module")
def stack(lab_in_a_box: LabInABox, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    require_tools(("redis-server", "prometheus"))
    the_stack = Stack(tmp_path_factory.mktemp("labbox"), ["control", "lab.e2ebox"], [lab_in_a_box.inventory])
    the_stack.start()
    yield the_stack
    the_stack.stop()


@pytest.fixture(scope="module")
def campaign_result(stack: Stack, lab_in_a_box: LabInABox, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    text = (REPO / "campaigns" / "netlab-smoke.yaml").read_text()
    text = text.replace("../inventory/netlab.yml", str(lab_in_a_box.inventory))
    text = text.replace("ram_mib: 256", f"ram_mib: {GUEST_RAM_MIB}").replace("size_mib: 512", "size_mib: 384")
    text = text.replace("    mib: 384\n", "    mib: 288\n")
    campaign = tmp_path_factory.mktemp("labbox-campaign") / "netlab-smoke.yaml"
    # Three faults in the one run, their windows apart: the server VM paused, then loss on
    # the node's link, then its swap-out shaped (what the knfsd lab can do that the
    # embedded one cannot). Loss makes swap writeback pile up behind TCP's retransmissions:
    # 10 % for 8 s, and once in a while 3 % for 6 s, had Debian 6.1 OOM-kill the workload
    # with 75 MiB of its 140 in writeback (a kernel fail, as judged). The test wants a run that
    # survives, so its loss is mild: 1 % still retransmits many segments a second.
    # No knfsd restart here: under this pressure Debian 6.1 does not always come back from
    # one (bench/restart_recovery.py measures how often); the restart and its grace period
    # are tested below on an idle guest, and under pressure on the embedded lab (ganesha).
    campaign.write_text(text + FAULTS)
    host_before = host_rules_and_qdiscs()
    began = time.monotonic()
    proc = stack.cli("run", "--json", str(campaign), timeout=1200)
    measured["campaign on the lab network, with three faults"] = f"{time.monotonic() - began:.0f} s"
    assert proc.returncode == 0, proc.stderr[-3000:]
    result: dict[str, Any] = json.loads(proc.stdout)
    result["host rules and qdiscs unchanged"] = host_rules_and_qdiscs() == host_before
    return result


FAULTS = """\
faults:
  - kind: server-stall
    after_swapped_mib: 16
    for_s: 4
  - kind: loss
    target: node-1
    percent: 1
    after_swapped_mib: 48
    for_s: 5
  - kind: bandwidth
    target: node-1
    mbit: 8
    direction: out
    after_swapped_mib: 80
    for_s: 8
"""


def test_a_node_on_the_lab_network_swaps_to_knfsd_and_passes(campaign_result: dict[str, Any]) -> None:
    assert campaign_result["verdict"] == "pass", campaign_result.get("runs")
    [run] = campaign_result["runs"]
    [node] = run["nodes"]
    assert node["verdict"] == "pass", node
    assert node["data_path"] == "lab network 10.77.0.0/24: 10.77.0.11 (tap-node1) -> knfsd 10.77.0.1:2049"
    server = node["nfs_server"]
    assert server["backend"] == "knfsd" and server["address"] == "10.77.0.1:2049", server
    assert server["kernel"].endswith("-amd64") and server["export"] == "/srv/swaplab/exports/node1"
    assert server["export_options"].startswith("10.77.0.11/32(sync,") and "no_root_squash" in server["export_options"]
    # The node's pages really landed on the server's disk, and swap moved both ways.
    assert node["swap_file_nonzero_pages"] > 0
    assert node["swap_out_mib"] > 0 and node["swap_in_mib"] > 0


def process_state(pid: int) -> str:
    return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]


def test_the_server_vm_paused_mid_swap_out_and_the_node_recovered(campaign_result: dict[str, Any], box: Box) -> None:
    [run] = campaign_result["runs"]
    [node] = run["nodes"]
    stall, loss, _ = node["faults"]
    assert stall["kind"] == "server-stall" and not stall["missed"], stall
    assert stall["swap_out_mibps_before"] > 0 and 3.5 <= stall["ended_at"] - stall["started_at"] <= 7
    assert stall["recovery_s"] is not None, stall
    checks = {c["name"]: c for c in node["checks"]}
    assert checks["fault_1"]["outcome"] == checks["fault_2"]["outcome"] == checks["fault_3"]["outcome"] == "pass"
    assert loss["started_at"] >= stall["ended_at"]  # one after the other
    vm = labbox.server_vm(box)
    assert vm is not None and vm.pid is not None and process_state(vm.pid) != "T"  # resumed


def test_loss_on_the_nodes_link_shows_as_tcp_retransmissions_while_swap_goes_on(
    campaign_result: dict[str, Any],
) -> None:
    [run] = campaign_result["runs"]
    [node] = run["nodes"]
    loss = node["faults"][1]
    assert loss["kind"] == "loss" and loss["target"] == "node-1" and not loss["missed"], loss
    samples = [
        json.loads(line)
        for line in (Path(campaign_result["result_dir"]) / "r001" / "node1" / "samples.jsonl").read_text().splitlines()
    ]
    inside = [s for s in samples if loss["started_at"] <= s.get("host_time_ns", 0) / 1e9 <= loss["ended_at"]]
    assert len(inside) >= 3
    assert inside[-1]["tcp_retrans_segs"] > inside[0]["tcp_retrans_segs"], inside  # loss, seen by TCP
    assert inside[-1]["pswpout"] + inside[-1]["pswpin"] > inside[0]["pswpout"] + inside[0]["pswpin"]  # swap went on
    assert (node["figures"]["tcp_retrans_per_s"] or {}).get("value", 0) > 0


def test_a_shaped_link_slowed_swap_out_to_its_rate_and_it_came_back_after(campaign_result: dict[str, Any]) -> None:
    [run] = campaign_result["runs"]
    [node] = run["nodes"]
    shaped = node["faults"][2]
    assert shaped["kind"] == "bandwidth" and not shaped["missed"], shaped
    samples = [
        json.loads(line)
        for line in (Path(campaign_result["result_dir"]) / "r001" / "node1" / "samples.jsonl").read_text().splitlines()
    ]
    at = [(s["host_time_ns"] / 1e9, s["pswpout"]) for s in samples if "host_time_ns" in s]
    # After its first second (what was already queued drains), at most 8 Mbit/s = 1 MiB/s
    # of swap-out plus what one second queues: far below the rate before. The samples ride
    # the shaped link too and may arrive in bursts: 8 s leaves several seconds of them.
    inside = [(t, out) for t, out in at if shaped["started_at"] + 1 <= t <= shaped["ended_at"]]
    assert len(inside) >= 2 and inside[-1][0] - inside[0][0] >= 2, at
    rate = (inside[-1][1] - inside[0][1]) * 4096 / 2**20 / (inside[-1][0] - inside[0][0])
    print(f"bandwidth 8 Mbit/s: swap-out {rate:.2f} MiB/s shaped, {shaped['swap_out_mibps_before']:.2f} before")
    assert rate <= 2.0 and rate < shaped["swap_out_mibps_before"] / 2, (rate, shaped)
    assert shaped["recovery_s"] is not None, shaped


def test_faults_touched_only_the_lab_network_and_left_nothing(campaign_result: dict[str, Any]) -> None:
    assert campaign_result["host rules and qdiscs unchanged"]
    listed = subprocess.run(
        ["ip", "netns", "exec", "swaplab-e2ebox", "nft", "list", "tables"], capture_output=True, text=True, check=True
    ).stdout
    assert "swaplab_fault_" not in listed, listed
    journal = Path("/run/swaplab/faults")
    assert not journal.exists() or not [p for p in journal.iterdir() if campaign_result["campaign_id"] in p.name]


# -- what a guest on the lab network can do --------------------------------------------------------------


class LabGuest(Guest):
    """node2 of the lab on the lab network; it takes addresses and mounts as its root may."""

    def take_address(self, address: str) -> None:
        mac = network.port_mac("e2ebox", ipaddress.IPv4Address("10.77.0.12"))
        status, out = self.sh(f"{{ {network.guest_link_command(mac, f'{address}/24')}}} 2>&1")
        assert status == 0, out

    def mount(self, export: str, where: str) -> tuple[int, str]:
        # Soft, one try, short timeouts: a mount the network swallows must fail, not hang.
        options = "vers=4.1,proto=tcp,port=2049,addr=10.77.0.1,soft,timeo=30,retrans=1"
        return self.sh(f"mkdir -p {where} && timeout 40 mount -t nfs4 -o {options} 10.77.0.1:{export} {where} 2>&1")


@pytest.fixture(scope="module")
def node_image(campaign_result: dict[str, Any]) -> NodeImage:
    """The image the campaign's nodes booted (cached by then), for a guest of our own."""
    return build_node_image(fetch_kernel(KernelSource(package="linux-image-amd64")), lab_keys("e2ebox"))


@pytest.fixture(scope="module")
def guest(
    lab_in_a_box: LabInABox, node_image: NodeImage, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[LabGuest]:
    node = lab_in_a_box.lab.node("node2")
    where = tmp_path_factory.mktemp("labbox-guest")
    with booted_guest(node, node_image, lab_keys("e2ebox"), where, GUEST_RAM_MIB, LabGuest) as the_guest:
        assert isinstance(the_guest, LabGuest)
        the_guest.take_address("10.77.0.12")
        yield the_guest


def test_the_guest_has_a_qmp_socket_only_root_can_reach(guest: LabGuest) -> None:
    qmp = guest.driver.qmp_path
    assert qmp.is_socket()
    assert qmp.parent.stat().st_mode & 0o777 == 0o700
    # It answers: the greeting, capabilities negotiated, the VM running.
    with socket.socket(socket.AF_UNIX) as sock:
        sock.settimeout(10)
        sock.connect(str(qmp))
        replies = sock.makefile("r")
        assert "QMP" in json.loads(replies.readline())
        sock.sendall(b'{"execute": "qmp_capabilities"}\n')
        assert json.loads(replies.readline()) == {"return": {}}
        sock.sendall(b'{"execute": "query-status"}\n')
        assert json.loads(replies.readline())["return"]["status"] == "running"


def test_a_node_mounts_its_own_export_and_is_refused_its_neighbours(guest: LabGuest) -> None:
    status, out = guest.mount("/srv/swaplab/exports/node2", "/mnt/own")
    assert status == 0, f"node2 could not mount its own export: {out}"
    status, out = guest.sh("touch /mnt/own/probe && stat -c '%u:%g' /mnt/own/probe && umount /mnt/own")
    assert (status, out.strip()) == (0, "0:0"), out  # root stays root there (no_root_squash)
    status, out = guest.mount("/srv/swaplab/exports/node1", "/mnt/neighbour")
    # NFSv4's pseudo file system shows a client only the exports open to it: to node2's
    # address node1's directory does not exist at all.
    assert status != 0, f"node2 mounted node1's export: {out}"
    assert "No such file or directory" in out, out


def test_a_knfsd_restart_keeps_an_open_file_writable_through_its_grace_period(
    lab_in_a_box: LabInABox, guest: LabGuest, vm: ServerVm
) -> None:
    # What swap over NFSv4.1 relies on when its server restarts: the file it holds open
    # (state the server forgot) is reclaimed in the server's grace period, and writes through
    # the same open go on. Here without memory pressure, so that the kernel's own recovery
    # under pressure (measured in bench/restart_recovery.py) does not decide the outcome.
    options = "vers=4.1,proto=tcp,port=2049,addr=10.77.0.1,hard,timeo=50"
    status, out = guest.sh(
        f"mkdir -p /mnt/grace && mount -t nfs4 -o {options} 10.77.0.1:/srv/swaplab/exports/node2 /mnt/grace 2>&1"
    )
    assert status == 0, out
    writer = "exec 3>>/mnt/grace/held; while :; do date +%s >&3; sync; sleep 1; done"
    status, out = guest.sh(
        f"rm -f /mnt/grace/held; (sh -c '{writer}' >/dev/null 2>&1 &) ; sleep 3; cat /mnt/grace/held"
    )
    assert status == 0 and len(out.split()) >= 2, out
    lab = lab_in_a_box.lab
    restart = actions.restart("t.r001.a1.node2.restart", make_nfs_server(lab.nfs_backend, lab.name, lab.nfs_settings))
    restart.apply()  # knfsd stopped: its state is gone, its client records stay with nfsdcld
    try:
        time.sleep(2)
        restart.undo()  # started again, in its grace period
        restarted = time.time()
        held = "/srv/swaplab/exports/node2/held"
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            after = [int(s) for s in _ok(vm, f"cat {held}").split() if int(s) > restarted + 1]
            if len(after) >= 3:
                break
            time.sleep(2)
        measured["open file writable again after a knfsd restart"] = f"{(after or [0])[0] - restarted:.0f} s"
        assert len(after) >= 3, (
            f"no write through the held open file in 60 s after the restart: {_ok(vm, f'cat {held}')}"
        )
        assert "starting 90-second grace period" in _ok(vm, "journalctl -k -b --no-pager | tail -50")
    finally:
        restart.undo()
        guest.sh("pkill -f 'date +%s >&3'; umount -f /mnt/grace", timeout=30)
    status, out = guest.sh("dmesg | grep -Ei 'nfs.*(error|bad|stale)' || true")
    assert "BAD_STATEID" not in out and "I/O error" not in out, out


def test_a_node_that_takes_its_neighbours_address_reaches_nothing(guest: LabGuest) -> None:
    guest.take_address("10.77.0.11")  # node1's: the bridge drops what it sends from it
    try:
        status, out = guest.mount("/srv/swaplab/exports/node1", "/mnt/spoofed")
        assert status != 0, f"a spoofed address mounted node1's export: {out}"
        status, out = guest.sh("ping -c 2 -W 2 10.77.0.1")
        assert status != 0, f"the server answered a spoofed address: {out}"
    finally:
        guest.take_address("10.77.0.12")
    status, out = guest.sh("ping -c 2 -W 5 10.77.0.1")
    assert status == 0, f"node2's own address no longer reaches the server: {out}"


def round_trip_ms(guest: LabGuest) -> float:
    status, out = guest.sh("ping -c 3 -W 5 10.77.0.1")
    assert status == 0, out
    return max(float(ms) for ms in re.findall(r"time=([0-9.]+) ms", out))


def test_a_latency_fault_delays_what_the_server_sends_that_node_only(lab_in_a_box: LabInABox, guest: LabGuest) -> None:
    lab = lab_in_a_box.lab
    server = make_nfs_server(lab.nfs_backend, lab.name, lab.nfs_settings)
    other = actions.delay("t.r001.a1.node1.0", server, "10.77.0.11", 300)  # node1's, not this guest's
    other.apply()
    try:
        undelayed = round_trip_ms(guest)
        delay = actions.delay("t.r001.a1.node2.0", server, "10.77.0.12", 300)
        delay.apply()
        try:
            delayed = round_trip_ms(guest)
        finally:
            delay.undo()
        delay.undo()  # idempotent
    finally:
        other.undo()
    assert undelayed < 250 <= 300 <= delayed, (undelayed, delayed)  # netem in the server VM, per node
    assert round_trip_ms(guest) < 250  # and gone with the fault


def test_a_node_cannot_reach_the_servers_sshd_on_the_lab_network(guest: LabGuest) -> None:
    status, out = guest.sh("timeout 10 nc -w 5 10.77.0.1 22 </dev/null")
    assert status != 0 and "SSH-" not in out, out


# -- down ------------------------------------------------------------------------------------------------------


def test_lab_down_leaves_nothing(
    lab_in_a_box: LabInABox, vm: ServerVm, image: ServerImage, disk_before: Fingerprint, guest: LabGuest
) -> None:
    guest.driver.power_off()  # the module's own guest first: then the lab is as a run leaves it
    pid, port = vm.pid, vm.ssh_port
    assert pid is not None and port is not None
    began = time.monotonic()
    proc = lab_in_a_box.down()
    measured["lab down"] = f"{time.monotonic() - began:.1f} s"
    assert proc.returncode == 0, proc.stderr
    stopped = json.loads(proc.stdout)["stopped"]
    assert stopped == ["server VM of lab e2ebox", "network namespace swaplab-e2ebox"], stopped
    assert not pid_alive(pid)
    assert "e2ebox" not in network.leftovers()
    assert not Path("/var/run/netns/swaplab-e2ebox").exists()
    assert "swaplab-e2ebox" not in Path("/proc/self/mounts").read_text()  # the namespace's bind mount
    assert not guest.driver.qmp_path.parent.exists()
    left = [p for p in _pids() if any("e2ebox" in arg for arg in cmdline(p)) and "qemu" in " ".join(cmdline(p))]
    assert left == [], f"QEMU processes of the lab remain: {left}"
    assert port_free(port)
    for leftover in (vm.overlay, vm.data_disk, vm.state_path, vm.pid_path):
        assert not leftover.exists(), leftover
    assert _fingerprint(image.disk) == disk_before
    assert labbox.server_vm(Box.of_lab(lab_in_a_box.lab)) is None
    again = lab_in_a_box.down()
    assert again.returncode == 0 and json.loads(again.stdout)["stopped"] == []
    print("\n  measured: " + "; ".join(f"{k}: {v}" for k, v in measured.items()), flush=True)


def test_lab_check_on_a_lab_that_is_down_names_its_server_and_exits_2(lab_in_a_box: LabInABox) -> None:
    # Down already after test_lab_down_leaves_nothing; down again (idempotent) so that a
    # failure there does not show up here as a second one.
    assert lab_in_a_box.down().returncode == 0
    proc = lab_in_a_box.cli("lab", "check", str(lab_in_a_box.inventory), timeout=120)
    assert proc.returncode == 2, proc.stdout
    [row] = [line for line in proc.stdout.splitlines() if line.startswith("  nfs server")]
    assert "NOT FIT" in row and "swaplab lab up -i" in row, row


def _pids() -> list[int]:
    return [int(name) for name in os.listdir("/proc") if name.isdigit()]
