"""Labs of pxe nodes as the inventory describes them: machines with a MAC and a BMC that
boot from the lab's boot server, and every way such an inventory can be wrong, each named
by file, line and key."""

from __future__ import annotations

from pathlib import Path

import pytest

from model.campaign import load_campaign
from model.lab import DEFAULT_NIC_DRIVERS, load_lab
from model.yamlpos import SpecError

NODE1 = "node1: {ansible_host: 127.0.0.1, ansible_port: 17241, swaplab_mac: '52:54:00:00:00:11', swaplab_bmc_address: 127.0.0.1, swaplab_bmc_port: 19623}"
NODE2 = "node2: {ansible_host: 127.0.0.1, ansible_port: 17242, swaplab_mac: '52:54:00:00:00:12', swaplab_bmc_address: 127.0.0.1, swaplab_bmc_port: 19624}"
BOOT = """    boot_server:
      hosts:
        server: {}
"""


def _inventory(
    tmp_path: Path,
    nodes: tuple[str, ...] = (NODE1, NODE2),
    boot: str = BOOT,
    group: str = "swaplab_bmc_credentials: env, ",
    nfs: str = "knfsd",
) -> Path:
    path = tmp_path / "hw.yml"
    hosts = "".join(f"        {node}\n" for node in nodes)
    path.write_text(
        f"""\
all:
  vars: {{swaplab_lab: hw}}
  children:
{boot}    nfs_server:
      hosts:
        server: {{swaplab_nfs: {nfs}}}
    nodes:
      vars: {{swaplab_driver: pxe, {group}swaplab_ram_mib: 192}}
      hosts:
{hosts}"""
    )
    return path


def _problems(path: Path) -> list[str]:
    with pytest.raises(SpecError) as err:
        load_lab(path)
    return [f"{issue.line}: {issue.field}: {issue.message}" for issue in err.value.issues]


def test_a_pxe_lab_has_its_nodes_on_the_lab_network_and_a_boot_server(tmp_path: Path) -> None:
    lab = load_lab(_inventory(tmp_path))
    assert lab.boots_kernels and lab.power_control and lab.lab_network
    node = lab.node("node1")
    assert node.options["mac"] == "52:54:00:00:00:11" and node.options["bmc_port"] == 19623
    assert node.nfs_route is not None and node.nfs_route.client_address == "10.77.0.11"
    assert lab.boot_server is not None and lab.boot_server.shared_with_nfs
    # One VM is both servers on a lab-in-a-box: the boot server is the lab network's .1.
    assert lab.boot_server.http_url == "http://10.77.0.1:8069"
    assert DEFAULT_NIC_DRIVERS[0] == "e1000e"


def test_a_pxe_node_without_a_mac_is_named_with_its_line(tmp_path: Path) -> None:
    problems = _problems(_inventory(tmp_path, (NODE1, NODE2.replace("swaplab_mac: '52:54:00:00:00:12', ", ""))))
    assert problems == ["14: all.children.nodes.hosts.node2: needs 'swaplab_mac' (driver pxe)"]


def test_a_bmc_without_credentials_is_an_error_on_each_node(tmp_path: Path) -> None:
    problems = _problems(_inventory(tmp_path, group=""))
    assert problems == [
        "13: all.children.nodes.hosts.node1: needs 'swaplab_bmc_credentials' (driver pxe)",
        "14: all.children.nodes.hosts.node2: needs 'swaplab_bmc_credentials' (driver pxe)",
    ]


def test_credentials_are_named_by_their_source_never_given(tmp_path: Path) -> None:
    problems = _problems(_inventory(tmp_path, group="swaplab_bmc_credentials: hunter2, "))
    assert problems == [
        "11: all.children.nodes.vars.swaplab_bmc_credentials: 'hunter2' must be 'env', 'lab' (a lab-in-a-box's) or the absolute path of "
        "a credentials file (got 'hunter2')"
    ]


def test_a_mac_used_twice_names_both_nodes(tmp_path: Path) -> None:
    problems = _problems(_inventory(tmp_path, (NODE1, NODE2.replace(":12'", ":11'"))))
    assert problems == ["14: all.children.nodes.hosts.node2.swaplab_mac: node2 has the MAC 52:54:00:00:00:11 of node1"]


def test_a_bmc_used_twice_names_both_nodes(tmp_path: Path) -> None:
    problems = _problems(_inventory(tmp_path, (NODE1, NODE2.replace("19624", "19623"))))
    assert problems == [
        "14: all.children.nodes.hosts.node2.swaplab_bmc_address: node2 has the BMC 127.0.0.1:19623 of node1"
    ]


@pytest.mark.parametrize(
    ("mac", "why"),
    [("52-54-00-00-00-11", "should match pattern"), ("52:54:00:00:00:1G", "should match pattern")],
)
def test_a_mac_must_be_written_as_six_lowercase_pairs(tmp_path: Path, mac: str, why: str) -> None:
    [problem] = _problems(_inventory(tmp_path, (NODE1.replace("52:54:00:00:00:11", mac),)))
    assert problem.startswith("13: all.children.nodes.hosts.node1.swaplab_mac:") and why in problem


def test_pxe_nodes_need_a_boot_server(tmp_path: Path) -> None:
    assert _problems(_inventory(tmp_path, boot="")) == [
        "7: all.children.nodes: pxe nodes boot from the lab's boot server: the inventory needs one host under "
        "boot_server"
    ]


def test_pxe_nodes_need_a_lab_network(tmp_path: Path) -> None:
    [problem] = _problems(_inventory(tmp_path, nfs="ganesha"))
    assert "reaches NFS over the lab network only: the lab needs swaplab_nfs: knfsd" in problem


def test_a_boot_server_setting_is_checked_and_named(tmp_path: Path) -> None:
    boot = BOOT.replace("server: {}", "server: {swaplab_boot_dhcp: relay, swaplab_boot_port: 80}")
    assert _problems(_inventory(tmp_path, boot=boot)) == [
        "6: all.children.boot_server.hosts.server.swaplab_boot_dhcp: Input should be 'server' (got 'relay')",
        "6: all.children.boot_server.hosts.server.swaplab_boot_port: unknown setting; allowed: swaplab_boot_dhcp, "
        "swaplab_boot_http_port, swaplab_boot_interface, swaplab_boot_address, swaplab_boot_root",
    ]


def test_a_boot_server_elsewhere_needs_its_address(tmp_path: Path) -> None:
    boot = BOOT.replace("server: {}", "boot: {ansible_host: 192.0.2.10}")
    [problem] = _problems(_inventory(tmp_path, boot=boot))
    assert problem == (
        "6: all.children.boot_server.hosts.boot: needs 'swaplab_boot_address': the boot server's address on the "
        "lab network"
    )
    boot = BOOT.replace("server: {}", "boot: {ansible_host: 192.0.2.10, swaplab_boot_address: 10.77.0.2}")
    lab = load_lab(_inventory(tmp_path, boot=boot))
    assert lab.boot_server is not None and not lab.boot_server.shared_with_nfs
    assert lab.boot_server.http_url == "http://10.77.0.2:8069"


def test_a_lab_of_qemu_nodes_has_no_boot_server(tmp_path: Path) -> None:
    path = tmp_path / "box.yml"
    path.write_text(
        "all:\n  children:\n" + BOOT + "    nfs_server:\n      hosts:\n        server: {swaplab_nfs: knfsd}\n"
        "    nodes:\n      vars: {swaplab_driver: qemu, swaplab_ram_mib: 256, swaplab_cpus: 1, ansible_host: 127.0.0.1}\n"
        "      hosts:\n        node1: {ansible_port: 47001}\n"
    )
    assert _problems(path) == ["3: all.children.boot_server: a boot server is for pxe nodes; this lab's are qemu nodes"]


def test_a_link_fault_on_a_lab_of_machines_is_refused_until_it_can_spare_their_ssh(tmp_path: Path) -> None:
    inventory = _inventory(tmp_path)
    campaign = tmp_path / "c.yaml"
    campaign.write_text(
        f"name: c\nlab: {inventory}\nkernels:\n  - package: linux-image-amd64\nnode: {{ram_mib: 128}}\n"
        "swap: {size_mib: 256}\n"
        "workloads:\n  - {name: w, mib: 192, passes: 1}\n"
        "faults:\n  - {kind: loss, target: node-1, percent: 2, at_s: 5, for_s: 5}\n"
    )
    with pytest.raises(SpecError) as err:
        load_campaign(campaign)
    [issue] = err.value.issues
    assert issue.field.startswith("faults") and issue.field.endswith("kind"), issue
    assert "pxe nodes' one NIC carries SSH too" in issue.message


def test_the_example_lab_of_real_machines_validates() -> None:
    lab = load_lab(Path(__file__).resolve().parents[2] / "inventory" / "example-lab.yml")
    assert [node.driver for node in lab.nodes] == ["pxe", "pxe", "pxe"]
    assert lab.boot_server is not None and not lab.boot_server.shared_with_nfs
    assert lab.boot_server.address == "10.20.0.2" and lab.nfs_backend == "knfsd"
    macs = [node.options["mac"] for node in lab.nodes]
    assert len(set(macs)) == 3 and all(node.ram_mib for node in lab.nodes)
