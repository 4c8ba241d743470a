"""A lab-in-a-box as the inventory describes it: each node's address on the lab network
(the same plan the workers build the network from), what an inventory may not say, the
NIC and QMP socket QEMU is given, and what the knfsd backend reads from the server."""

from __future__ import annotations

import ipaddress
from pathlib import Path

import pytest

from model.lab import NfsRoute, load_lab
from model.yamlpos import SpecError
from workers.drivers.base import BootSpec
from workers.drivers.qemu import QemuDriver
from workers.lab import network
from workers.lab.labbox import Box, plan
from workers.lab.nfs import make_nfs_server
from workers.lab.nfs.knfsd import KnfsdServer, export_options

REPO = Path(__file__).resolve().parents[2]
TWO_NODES = "        node1: {ansible_port: 47001}\n        node2: {ansible_port: 47002}\n"


def _inventory(tmp_path: Path, server: str = "", nodes: str = "", driver: str = "qemu") -> Path:
    path = tmp_path / "box.yml"
    sizes = "swaplab_ram_mib: 256, swaplab_cpus: 1, " if driver == "qemu" else ""
    path.write_text(
        f"""\
all:
  vars: {{swaplab_lab: box}}
  children:
    nfs_server:
      hosts:
        server: {{swaplab_nfs: knfsd{server}}}
    nodes:
      vars: {{swaplab_driver: {driver}, {sizes}ansible_host: 127.0.0.1}}
      hosts:
{nodes or TWO_NODES}"""
    )
    return path


def test_nodes_get_addresses_from_11_up_and_the_server_is_1(tmp_path: Path) -> None:
    lab = load_lab(_inventory(tmp_path, ", swaplab_nfs_subnet: 10.88.0.0/24"))
    routes = [node.nfs_route for node in lab.nodes]
    assert routes == [
        NfsRoute("node1", 1, "10.88.0.1", 2049, "10.88.0.11", "10.88.0.1", 2049, False, "10.88.0.0/24"),
        NfsRoute("node2", 2, "10.88.0.1", 2049, "10.88.0.12", "10.88.0.1", 2049, False, "10.88.0.0/24"),
    ]
    assert all(route is not None and route.lab_network and not route.relayed for route in routes)
    # The workers build the network from the same plan: addresses agree, MACs are stable.
    net = plan(Box.of_lab(lab))
    assert [(port.name, str(port.address)) for port in net.ports] == [
        ("server", "10.88.0.1"),
        ("node1", "10.88.0.11"),
        ("node2", "10.88.0.12"),
    ]
    assert net.port("node1").mac == network.port_mac("box", ipaddress.IPv4Address("10.88.0.11"))


def test_the_shipped_netlab_inventory_is_a_knfsd_lab_on_its_own_network() -> None:
    lab = load_lab(REPO / "inventory" / "netlab.yml")
    assert lab.nfs_backend == "knfsd" and [node.name for node in lab.nodes] == ["node1", "node2"]
    server = make_nfs_server(lab.nfs_backend, lab.name, lab.nfs_settings)
    assert isinstance(server, KnfsdServer)
    assert server.node_export("node2").path == "/srv/swaplab/exports/node2"
    assert server.data_path("node1") == "lab network 10.77.0.0/24: 10.77.0.11 (tap-node1) -> knfsd 10.77.0.1:2049"


@pytest.mark.parametrize(
    ("setting", "message"),
    [
        (", swaplab_nfs_subnet: 8.8.8.0/24", "must be a private IPv4 network"),
        (", swaplab_nfs_subnet: 10.0.0.0/8", "from /16 to /27"),
        (", swaplab_nfs_subnet: nonsense", "is not an IPv4 network"),
        (", swaplab_nfs_export_dir: 'exports; rm -rf /'", "should match pattern"),
        (", swaplab_nfs_sync: 'yes'", "valid boolean"),
        (", ansible_port: '22; id'", "valid integer"),
        (", ansible_host: '-oProxyCommand=id'", "should match pattern"),
        (", ansible_connection: winrm", "'local' or 'ssh'"),
    ],
)
def test_a_wrong_server_setting_is_refused_at_its_line(tmp_path: Path, setting: str, message: str) -> None:
    with pytest.raises(SpecError) as refused:
        load_lab(_inventory(tmp_path, setting))
    [issue] = refused.value.issues
    assert issue.line == 6 and message in issue.message, issue


def test_a_node_name_too_long_for_its_tap_is_refused(tmp_path: Path) -> None:
    with pytest.raises(SpecError) as refused:
        load_lab(_inventory(tmp_path, nodes="        node-twelve-ch: {ansible_port: 47001}\n"))
    assert "too long" in str(refused.value) and "tap-<name>" in str(refused.value)


def test_nodes_swaplab_does_not_boot_cannot_join_a_lab_network(tmp_path: Path) -> None:
    with pytest.raises(SpecError) as refused:
        load_lab(_inventory(tmp_path, driver="ssh"))
    assert "a ssh node cannot be put on a lab network" in str(refused.value)


def test_a_lab_network_node_gets_its_tap_and_mac_and_a_private_qmp_socket(tmp_path: Path) -> None:
    lab = load_lab(_inventory(tmp_path))
    driver = QemuDriver(lab.node("node2"), tmp_path / "node2")
    driver._tap_fd = 7  # what power_on opens in the lab's namespace
    argv = driver.argv(BootSpec(tmp_path / "k", tmp_path / "i", "console=ttyS0", 256, 1), tmp_path / "c.log", "qemu")
    mac = network.port_mac("box", ipaddress.IPv4Address("10.77.0.12"))
    assert argv[argv.index("-netdev", argv.index("-netdev") + 1) + 1] == "tap,id=lab,fd=7"
    assert f"virtio-net-pci,netdev=lab,mac={mac},romfile=" in argv
    assert argv[argv.index("-qmp") + 1] == "unix:/run/swaplab/qmp/swaplab-box-node2/qmp.sock,server=on,wait=off"
    # Its user network keeps SSH in and has no NFS relay: NFS goes over the lab network.
    assert "guestfwd" not in driver.netdev()


@pytest.mark.parametrize(
    ("mac", "address"),
    [("02:00:00:00:00:0b; reboot", "10.77.0.11/24"), ("02:00:00:00:00:0b", "10.77.0.11/24; reboot"), ("", "")],
)
def test_the_guest_link_command_takes_only_a_mac_and_an_address(mac: str, address: str) -> None:
    with pytest.raises((network.LabNetworkError, ValueError)):
        network.guest_link_command(mac, address)


def test_export_options_are_read_from_exportfs_as_it_wraps_long_paths() -> None:
    listed = (
        "/srv/swaplab/exports/node1\n\t\t10.77.0.11/32(sync,wdelay,hide,no_subtree_check,sec=sys,rw,no_root_squash)\n"
        "/srv/swaplab/exports/node10\t10.77.0.20/32(async,rw)\n"
    )
    assert export_options(listed, "/srv/swaplab/exports/node1").startswith("10.77.0.11/32(sync,")
    assert export_options(listed, "/srv/swaplab/exports/node10") == "10.77.0.20/32(async,rw)"
    assert export_options(listed, "/srv/swaplab/exports/node2") == ""


def test_a_boot_server_group_on_a_lab_of_qemu_nodes_is_refused(tmp_path: Path) -> None:
    path = _inventory(tmp_path)
    text = path.read_text().replace(
        "  children:\n", "  children:\n    boot_server:\n      hosts:\n        server: {}\n", 1
    )
    path.write_text(text)
    with pytest.raises(SpecError) as err:
        load_lab(path)
    [issue] = err.value.issues
    assert (issue.line, issue.field) == (4, "all.children.boot_server")
    assert issue.message == "a boot server is for pxe nodes; this lab's are qemu nodes"
    assert load_lab(_inventory(tmp_path)).boot_server is None
