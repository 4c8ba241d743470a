"""What a guest can reach, as rendered: each node's NFS route from the inventory, QEMU's
restricted user network with its guestfwd relay, and the relay's command line."""

from __future__ import annotations

import shlex
from pathlib import Path

import pytest

from model.lab import NfsRoute, NodeConfig, load_lab
from model.yamlpos import SpecError
from workers.drivers.base import BootSpec, DriverError
from workers.drivers.qemu import QemuDriver
from workers.lab.nfs.relay import RelayError, relay_command

REPO = Path(__file__).resolve().parents[2]
RELAY = REPO / "workers" / "lab" / "nfs" / "relay.py"


def _inventory(tmp_path: Path, nfs: str, nodes: str, driver: str = "qemu") -> Path:
    path = tmp_path / "lab.yml"
    sizes = "swaplab_ram_mib: 256, swaplab_cpus: 1, " if driver == "qemu" else ""
    path.write_text(
        f"""\
all:
  vars: {{swaplab_lab: t}}
  children:
    nfs_server:
      hosts:
        localhost: {{swaplab_nfs: ganesha, {nfs}}}
    nodes:
      vars: {{swaplab_driver: {driver}, {sizes}ansible_host: 127.0.0.1}}
      hosts:
{nodes}"""
    )
    return path


QEMU_NODES = "        a: {ansible_port: 47001}\n        b: {ansible_port: 47002}\n        c: {ansible_port: 47003}\n"


def test_each_qemu_node_has_its_own_relay_address_and_export(tmp_path: Path) -> None:
    lab = load_lab(_inventory(tmp_path, "swaplab_nfs_port: 12060", QEMU_NODES))
    routes = [node.nfs_route for node in lab.nodes]
    assert routes == [
        NfsRoute("a", 1, "10.0.2.100", 2049, "127.0.0.2", "127.0.0.1", 12060, True),
        NfsRoute("b", 2, "10.0.2.100", 2049, "127.0.0.3", "127.0.0.1", 12060, True),
        NfsRoute("c", 3, "10.0.2.100", 2049, "127.0.0.4", "127.0.0.1", 12060, True),
    ]
    # The server is configured from the same routes.
    assert lab.nfs_settings["routes"] == {route.node: route for route in routes if route is not None}
    # Deterministic: the same inventory gives the same addresses.
    again = load_lab(_inventory(tmp_path, "swaplab_nfs_port: 12060", QEMU_NODES))
    assert [node.nfs_route for node in again.nodes] == routes


def test_a_relay_address_is_never_the_servers_own(tmp_path: Path) -> None:
    lab = load_lab(_inventory(tmp_path, "swaplab_nfs_bind: 127.0.0.3", QEMU_NODES))
    clients = [node.nfs_route.client_address for node in lab.nodes if node.nfs_route]
    assert clients == ["127.0.0.2", "127.0.0.4", "127.0.0.5"]


@pytest.mark.parametrize(
    ("address", "why"),
    [
        ("10.0.2.2", "QEMU's host address"),
        ("10.0.2.3", "cannot forward"),
        ("10.0.2.15", "cannot forward"),
        ("192.0.2.1", "cannot forward"),
    ],
)
def test_a_guest_address_qemu_cannot_forward_is_refused_at_its_line(tmp_path: Path, address: str, why: str) -> None:
    path = _inventory(tmp_path, f"swaplab_nfs_guest_address: {address}", QEMU_NODES)
    with pytest.raises(SpecError) as err:
        load_lab(path)
    text = str(err.value)
    assert f"{path}:6:" in text and "swaplab_nfs_guest_address" in text
    assert why in text and "10.0.2.100" in text


def test_an_ssh_node_mounts_directly_and_is_admitted_from_its_own_address(tmp_path: Path) -> None:
    nodes = "        s1: {ansible_host: 192.0.2.5}\n        s2: {ansible_host: 192.0.2.6, swaplab_nfs_client: 198.51.100.6}\n"
    lab = load_lab(_inventory(tmp_path, "swaplab_nfs_guest_address: 10.0.2.2, swaplab_nfs_port: 12061", nodes, "ssh"))
    s1, s2 = (node.nfs_route for node in lab.nodes)
    assert s1 == NfsRoute("s1", 1, "10.0.2.2", 12061, "192.0.2.5", "127.0.0.1", 12061, False)
    assert s2 is not None and s2.client_address == "198.51.100.6"


def _driver(tmp_path: Path, route: NfsRoute | None, workdir: str = "node") -> QemuDriver:
    node = NodeConfig("a", "t", "qemu", 256, 1, "127.0.0.1", 47001, {}, nfs_route=route)
    return QemuDriver(node, tmp_path / workdir)


ROUTE = NfsRoute("a", 1, "10.0.2.100", 2049, "127.0.0.2", "127.0.0.1", 12049, True)


def test_the_guest_network_is_restricted_with_ssh_in_and_the_nfs_relay_out(tmp_path: Path) -> None:
    driver = _driver(tmp_path, ROUTE)
    netdev = driver.netdev()
    head, guestfwd = netdev.split(",guestfwd=")
    assert head.split(",") == ["user", "id=n0", "restrict=on", "hostfwd=tcp:127.0.0.1:47001-:22"]
    forward, command = guestfwd.split("-cmd:")
    assert forward == "tcp:10.0.2.100:2049"
    words = shlex.split(command)
    assert words[1:4] == ["-I", "-S", str(RELAY)]
    assert words[4:] == [
        "--source", "127.0.0.2", "--server", "127.0.0.1:12049", "--log", str(tmp_path / "node" / "nfs-relay.log")
    ]  # fmt: skip
    assert "," not in command  # it would end QEMU's option early


def test_the_netdev_is_what_qemu_is_given(tmp_path: Path) -> None:
    driver = _driver(tmp_path, ROUTE)
    boot = BootSpec(tmp_path / "k", tmp_path / "i", "console=ttyS0", 256, 1)
    argv = driver.argv(boot, tmp_path / "console.log", "qemu-system-x86_64")
    assert argv[argv.index("-netdev") + 1] == driver.netdev()


def test_a_node_without_a_route_gets_no_forward_at_all(tmp_path: Path) -> None:
    assert _driver(tmp_path, None).netdev() == "user,id=n0,restrict=on,hostfwd=tcp:127.0.0.1:47001-:22"


@pytest.mark.parametrize("workdir", ["a,b", "a b", "a'b", "a$(id)", "a;b"])
def test_a_relay_path_qemu_cannot_carry_safely_is_refused(tmp_path: Path, workdir: str) -> None:
    with pytest.raises(DriverError, match="relay command word"):
        _driver(tmp_path, ROUTE, workdir).netdev()


@pytest.mark.parametrize(
    ("source", "server"),
    [("127.0.0.2; id", "127.0.0.1"), ("127.0.0.2", "localhost"), ("x", "127.0.0.1")],
)
def test_relay_addresses_must_be_addresses(tmp_path: Path, source: str, server: str) -> None:
    with pytest.raises(ValueError, match="does not appear to be an IP"):
        relay_command("/usr/bin/python3", source, server, 12049, tmp_path / "log")


def test_an_interpreter_path_with_shell_characters_is_refused(tmp_path: Path) -> None:
    with pytest.raises(RelayError):
        relay_command("/opt/py thon/bin/python3", "127.0.0.2", "127.0.0.1", 12049, tmp_path / "log")
