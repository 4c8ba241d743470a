"""A lab-in-a-box machine as QEMU runs it: the NIC its inventory's drivers drive, and its
BMC in band (ipmi-bmc-extern) as well as over the LAN."""

from __future__ import annotations

from pathlib import Path

from workers.bmc.base import BmcCredentials
from workers.bmc.simulator import SimulatedBmc, lan_conf
from workers.lab.pxe_machine import machine_argv, nic_model


def test_a_machine_gets_the_first_nic_qemu_can_emulate_of_its_drivers() -> None:
    assert nic_model(["igb", "virtio_net", "e1000e"]) == "virtio-net-pci"
    assert nic_model(["e1000e"]) == "e1000e"


def test_a_machine_whose_drivers_qemu_cannot_emulate_gets_an_e1000e() -> None:
    assert nic_model([]) == nic_model(["ixgbe", "mlx5_core"]) == "e1000e"


def test_the_nic_carries_the_machines_mac_on_its_tap() -> None:
    argv = machine_argv("m", "52:54:00:78:00:11", 256, 1, 20000, 7, "virtio-net-pci")
    assert "virtio-net-pci,netdev=lab,mac=52:54:00:78:00:11" in argv and "tap,id=lab,fd=7" in argv
    assert "-kernel" not in argv and argv[argv.index("-boot") + 1] == "n"


def test_a_machine_with_a_vm_port_has_its_bmc_in_band() -> None:
    argv = machine_argv("m", "52:54:00:78:00:11", 256, 1, 20000, 7, vm_port=20001)
    assert "socket,id=ipmi0,host=127.0.0.1,port=20001,reconnect=1" in argv
    assert "ipmi-bmc-extern,id=bmc0,chardev=ipmi0" in argv and "isa-ipmi-kcs,bmc=bmc0" in argv
    assert not any("ipmi" in arg for arg in machine_argv("m", "52:54:00:78:00:11", 256, 1, 20000, 7))


def test_the_simulators_configuration_listens_for_the_machine_in_band(tmp_path: Path) -> None:
    bmc = SimulatedBmc("node1", "127.0.0.1", 19623, BmcCredentials("swaplab", "a1b2c3"), tmp_path, 20000, 20001)
    conf = lan_conf(bmc, hub_port=20002)
    assert "  serial kcs 127.0.0.1 20001 codec VM\n" in conf and 'sol "telnet:127.0.0.1:20002"' in conf
    assert "serial kcs" not in lan_conf(SimulatedBmc("node1", "127.0.0.1", 19623, bmc.credentials, tmp_path))
