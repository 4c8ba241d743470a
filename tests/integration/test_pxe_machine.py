"""A lab-in-a-box machine powered through its BMC boots its NIC's firmware, seen over SOL.

Real parts only: a lab network (namespace, bridge, tap), ipmi_sim as the machine's BMC,
the chassis program starting ``workers.lab.pxe_machine`` (QEMU with an e1000e NIC on the
lab's bridge, no kernel), IPMI power on with the next boot device PXE, and the machine's
serial console read over Serial-over-LAN: iPXE (the NIC's option ROM) announces itself
and asks DHCP for an address on the lab network (no one answers yet), with the node's MAC. Power off
leaves no QEMU behind, and neither does stopping the BMC.
"""

from __future__ import annotations

import json
import os
import secrets
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from model.lab import Lab, load_lab
from tests.conftest import free_port, free_udp_port, require_tools, unavailable
from workers.bmc.base import BmcCredentials, BootDevice, PowerState
from workers.bmc.ipmi import IpmiBmc
from workers.bmc.simulator import BmcSimulator, SimulatedBmc
from workers.bmc.sol import SolConsole
from workers.lab import labbox, network
from workers.process import start_ticks

LAB = f"pxe{os.getpid() % 100000}"


@pytest.fixture
def lab(tmp_path: Path) -> Iterator[Lab]:
    require_tools(("ip", "nft", "ipmi_sim", "qemu-system-x86_64"))
    if os.geteuid() != 0 or not os.path.exists("/dev/net/tun"):
        unavailable("the lab network needs root and /dev/net/tun")
    inventory = tmp_path / "lab.yml"
    inventory.write_text(
        f"""\
all:
  vars: {{swaplab_lab: {LAB}}}
  children:
    nfs_server:
      hosts:
        server: {{swaplab_nfs: knfsd, swaplab_nfs_subnet: 10.79.0.0/24}}
    nodes:
      hosts:
        node1: {{swaplab_driver: qemu, swaplab_ram_mib: 256, swaplab_cpus: 1, ansible_host: 127.0.0.1, ansible_port: {free_port()}}}
"""
    )
    the_lab = load_lab(inventory)
    net = labbox.plan(labbox.Box.of_lab(the_lab))
    network.up(net)
    try:
        yield the_lab
    finally:
        network.down(the_lab.name)


def test_power_on_boots_the_nics_firmware_seen_over_sol_and_power_off_leaves_nothing(lab: Lab, tmp_path: Path) -> None:
    serial_port, vm_port = free_port(), free_port()
    creds = BmcCredentials("swaplab", secrets.token_urlsafe(12))
    bmc_dir = tmp_path / "bmc"
    machine_file = tmp_path / "machine.json"
    machine = {"inventory": str(lab.inventory), "node": "node1", "serial_port": serial_port, "vm_port": vm_port}
    machine_file.write_text(json.dumps(machine))
    sim = BmcSimulator(
        SimulatedBmc("node1", "127.0.0.1", free_udp_port(), creds, bmc_dir, serial_port, vm_port),
        [sys.executable, "-m", "workers.lab.pxe_machine", str(machine_file)],
    )
    sim.start()
    bmc = IpmiBmc(sim.bmc.host, creds, sim.bmc.port, timeout_s=20)
    received: list[bytes] = []
    sol = SolConsole(sim.bmc.host, sim.bmc.port, creds, received.append)
    route = lab.node("node1").nfs_route
    assert route is not None
    mac = network.node_port(lab.name, route)[0].mac
    try:
        sol.start()  # before power on: the BMC passes on only what comes while SOL is active
        bmc.boot_next(BootDevice.PXE)
        bmc.power_on()
        pid = sim.machine_pid()
        assert pid is not None
        deadline = time.monotonic() + 15  # the wrapper becomes QEMU (exec): the same pid
        while b"qemu-system-x86_64" not in _read(Path(f"/proc/{pid}/cmdline")) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert b"e1000e" in _read(Path(f"/proc/{pid}/cmdline")), (bmc_dir / "machine" / "machine.log").read_text()
        deadline = time.monotonic() + 90
        while b"Configuring (net0" not in b"".join(received) and time.monotonic() < deadline:
            assert start_ticks(pid) is not None, (bmc_dir / "machine" / "machine.log").read_text()[-2000:]
            time.sleep(0.5)
        console = b"".join(received).decode(errors="replace")
        # The NIC's own firmware, on the lab's bridge with the lab's MAC for the node, asking DHCP.
        assert "iPXE" in console and f"Configuring (net0 {mac})" in console, console[-2000:] or sol.state
        assert bmc.power_state() is PowerState.ON
        # Its BMC in band too: QEMU's ipmi-bmc-extern is connected to the simulator.
        assert b"ipmi-bmc-extern" in _read(Path(f"/proc/{pid}/cmdline"))
        assert _connected(pid, vm_port), f"the machine is not connected to its BMC's port {vm_port}"
        bmc.power_off()
        assert bmc.power_state() is PowerState.OFF and start_ticks(pid) is None
        assert sim.actions() == ["boot pxe", "power 1", "power 0"]
    finally:
        sol.stop()
        sim.stop()
    assert not [p for p in Path("/proc").glob("[0-9]*/cmdline") if f"swaplab-pxe-{LAB}-".encode() in _read(p)]


def _connected(pid: int, port: int) -> bool:
    """Whether process ``pid`` has a TCP connection to 127.0.0.1:``port``."""
    out = subprocess.run(
        ["ss", "-Htnp", "state", "established", "dst", f"127.0.0.1:{port}"], capture_output=True, text=True, check=False
    ).stdout
    return f"pid={pid}," in out


def _read(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError:
        return b""
