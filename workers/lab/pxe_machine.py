"""A lab-in-a-box machine that boots as bare metal does: from its NIC, powered by its BMC.

QEMU with one e1000e NIC on the lab's bridge and no ``-kernel``: SeaBIOS hands over to the
iPXE in the NIC's option ROM (Debian's ipxe-qemu), which asks the lab's DHCP for what to
boot. Its serial port connects to the serial hub of the machine's simulated BMC, which
serves it as Serial-over-LAN. Nothing else reaches the machine: no QMP, no monitor, no user
network. This process is what the BMC's chassis program starts on power on and kills on
power off (``workers.bmc.chassis``); it opens the node's tap inside the lab's namespace and
becomes QEMU (exec), so the pid the chassis recorded is the machine's.

    python -m workers.lab.pxe_machine MACHINE_JSON

MACHINE_JSON (written by swaplab in the BMC's root-only directory) names the inventory, the
node and the serial port; the MAC, the tap, RAM and CPUs come from the validated lab model.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from model.lab import load_lab
from model.yamlpos import SpecError
from workers.lab import network

DEFAULT_RAM_MIB = 512
# The NICs a lab-in-a-box machine can have, by the kernel module that drives them: QEMU's
# model, whose option ROM is iPXE (ipxe-qemu). A machine gets the first its inventory's
# swaplab_nic_drivers names, else e1000e (a NIC real diskless nodes have).
NIC_MODELS = {"e1000e": "e1000e", "e1000": "e1000", "virtio_net": "virtio-net-pci"}
DEFAULT_NIC_MODEL = "e1000e"


def nic_model(nic_drivers: list[str]) -> str:
    """QEMU's NIC for a machine whose inventory names ``nic_drivers``."""
    return next((NIC_MODELS[name] for name in nic_drivers if name in NIC_MODELS), DEFAULT_NIC_MODEL)


class MachineFile(BaseModel):
    """What swaplab wrote for the chassis program: which node of which lab, and its serial port."""

    model_config = ConfigDict(extra="forbid")
    inventory: str = Field(pattern=r"^/.{0,4000}$")
    node: str = Field(pattern=r"^[a-z][a-z0-9-]{0,62}$")
    serial_port: int = Field(ge=1024, le=65535)
    vm_port: int | None = Field(default=None, ge=1024, le=65535)


def machine_argv(
    name: str,
    mac: str,
    ram_mib: int,
    cpus: int,
    serial_port: int,
    tap_fd: int,
    nic: str = DEFAULT_NIC_MODEL,
    vm_port: int | None = None,
) -> list[str]:
    """QEMU for one machine: network boot first, its serial console a local telnet listener."""
    argv = [
        "qemu-system-x86_64",
        "-accel", "tcg",
        "-name", name,
        "-m", f"{ram_mib}M",
        "-smp", str(cpus),
        # -nographic: no VGA, and SeaBIOS (and iPXE through it) print on the serial port,
        # as a server's BIOS console redirection does. Nothing goes to stdio: the monitor is
        # off and the serial port is given below.
        "-nographic",
        "-monitor", "none",
        "-boot", "n",
        "-netdev", f"tap,id=lab,fd={tap_fd}",
        "-device", f"{nic},netdev=lab,mac={mac}",
        # The serial port connects to the BMC's serial hub, and again if the hub restarts.
        "-chardev", f"socket,id=serial0,host=127.0.0.1,port={serial_port},reconnect=1",
        "-serial", "chardev:serial0",
        "-device", "virtio-rng-pci",
    ]  # fmt: skip
    if vm_port is not None:
        # The BMC in band, as a server's: a KCS interface whose other end is the simulator.
        argv += [
            "-chardev", f"socket,id=ipmi0,host=127.0.0.1,port={vm_port},reconnect=1",
            "-device", "ipmi-bmc-extern,id=bmc0,chardev=ipmi0",
            "-device", "isa-ipmi-kcs,bmc=bmc0",
        ]  # fmt: skip
    return argv


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print("usage: python -m workers.lab.pxe_machine MACHINE_JSON", file=sys.stderr)
        return 2
    try:
        machine = MachineFile.model_validate(json.loads(Path(argv[0]).read_text()))
        lab = load_lab(Path(machine.inventory))
        node = lab.node(machine.node)
    except (OSError, ValueError, ValidationError, SpecError, KeyError) as err:
        print(f"pxe_machine: {argv[0]}: {err}", file=sys.stderr)
        return 2
    route = node.nfs_route
    if route is None or not route.lab_network:
        print(f"pxe_machine: node {node.name} of lab {lab.name} is not on a lab network", file=sys.stderr)
        return 2
    port, net = network.node_port(lab.name, route)
    fd = network.open_tap(net, port, inheritable=True)
    named = node.options.get("nic_drivers")
    args = machine_argv(
        f"swaplab-pxe-{lab.name}-{node.name}",
        port.mac,
        node.ram_mib or DEFAULT_RAM_MIB,
        node.cpus or 1,
        machine.serial_port,
        fd,
        nic_model([str(name) for name in named] if isinstance(named, list) else []),
        machine.vm_port,
    )
    os.execvp(args[0], args)  # the machine is this process from here on


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
