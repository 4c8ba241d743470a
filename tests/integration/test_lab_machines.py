"""A lab-in-a-box's machines brought up and down without the server VM: the BMC answers
with the lab's generated credentials (power off until someone powers it), the relay
listens on its loopback port, a second ``up`` starts nothing, ``down`` leaves nothing."""

from __future__ import annotations

import ipaddress
import subprocess
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace

import pytest

from model.lab import LabMachine, NodeConfig
from tests.conftest import free_port, free_udp_port, require_tools
from workers.bmc.base import PowerState
from workers.bmc.credentials import lab_credentials_file, load_credentials
from workers.bmc.ipmi import IpmiBmc
from workers.bmc.simulator import recorded_alive
from workers.lab import check, machines, network
from workers.loopback import tcp_listening
from workers.process import recorded_pid, start_ticks

pytestmark = pytest.mark.integration
LAB = "machtest"


@pytest.fixture
def lab_network() -> Iterator[None]:
    require_tools(("ipmi_sim", "ip", "nft"))
    net = network.lab_network(
        LAB, ["node1"], "server", ipaddress.IPv4Network("10.79.0.0/24"), {"node1": "52:54:00:79:00:11"}
    )
    network.up(net)  # nft takes the machine's DHCP rule and the relay's own
    lab_credentials_file(LAB).unlink(missing_ok=True)
    try:
        yield
    finally:
        machines.down(LAB)
        network.down(LAB)
        lab_credentials_file(LAB).unlink(missing_ok=True)


def test_machines_come_up_once_answer_and_go_away(lab_network: None, tmp_path: Path) -> None:
    machine = LabMachine("node1", "52:54:00:79:00:11", "127.0.0.1", free_udp_port(), free_port(), "10.79.0.11", 256)
    inventory = tmp_path / "inventory.yml"  # read by the machine's QEMU on power on only
    inventory.write_text("")
    started = machines.up(LAB, inventory, (machine,), progress=lambda line: None)
    assert started == [
        f"BMC of node1 on 127.0.0.1:{machine.bmc_port}",
        f"SSH relay 127.0.0.1:{machine.ssh_port} -> 10.79.0.11:22",
    ]
    assert lab_credentials_file(LAB).stat().st_mode & 0o777 == 0o600
    bmc = IpmiBmc("127.0.0.1", load_credentials("lab", "node1", lab=LAB), machine.bmc_port, timeout_s=10)
    assert bmc.power_state() is PowerState.OFF
    assert tcp_listening(machine.ssh_port)
    assert machines.up(LAB, inventory, (machine,), progress=lambda line: None) == []  # already up
    where = machines.machine_dir(LAB, "node1")
    relay = recorded_pid(where / "relay.pid")
    assert relay is not None
    assert machines.down(LAB) == ["BMC and machine of node1", "SSH relay of node1"]
    assert not recorded_alive(where / "bmc") and start_ticks(relay) is None
    assert not tcp_listening(machine.ssh_port), _listener(machine.ssh_port)


def _listener(port: int) -> str:
    """Who listens on ``port``: what a failure shows when it is not the relay it stopped."""
    return subprocess.run(["ss", "-ltnpH", f"sport = :{port}"], capture_output=True, text=True).stdout


def test_lab_check_names_a_pxe_nodes_bmc_answering_and_not(lab_network: None, tmp_path: Path) -> None:
    machine = LabMachine("node1", "52:54:00:79:00:11", "127.0.0.1", free_udp_port(), free_port(), "10.79.0.11", 256)
    node = NodeConfig(
        "node1", LAB, "pxe", 256, 1, "127.0.0.1", machine.ssh_port,
        {"mac": machine.mac, "bmc_address": "127.0.0.1", "bmc_port": machine.bmc_port, "bmc_credentials": "lab",
         "bmc_timeout_s": 3},
    )  # fmt: skip
    machines.up(LAB, tmp_path / "inventory.yml", (machine,), progress=lambda line: None)
    probe = check._node_probe(SimpleNamespace(), node)  # type: ignore[arg-type]
    assert probe.fit and probe.detail == f"BMC 127.0.0.1:{machine.bmc_port} answers; power off", probe
    machines.down(LAB)
    probe = check._node_probe(SimpleNamespace(), node)  # type: ignore[arg-type]
    assert not probe.fit and probe.detail.startswith(f"BMC 127.0.0.1:{machine.bmc_port}: "), probe


def test_a_lab_with_a_machine_has_a_management_address_and_rules_for_dhcp_and_the_relay(lab_network: None) -> None:
    ns = network.namespace(LAB)
    addresses = subprocess.run(
        ["ip", "-n", ns, "-4", "-o", "addr", "show", "dev", "br0"], capture_output=True, text=True
    )
    assert "10.79.0.254/24" in addresses.stdout, addresses.stdout
    rules = subprocess.run(["ip", "netns", "exec", ns, "nft", "list", "ruleset"], capture_output=True, text=True).stdout
    assert "ip saddr 0.0.0.0 ip daddr 255.255.255.255 udp sport 68 udp dport 67 accept" in rules, rules
    assert "ip saddr 10.79.0.254 ip daddr 10.79.0.11 tcp dport 22 accept" in rules, rules
