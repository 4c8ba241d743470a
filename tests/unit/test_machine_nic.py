"""The NIC QEMU gives a lab-in-a-box machine: the one its inventory's drivers drive."""

from __future__ import annotations

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
