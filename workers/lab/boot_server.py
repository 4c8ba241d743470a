"""The lab's boot server, provisioned by ``playbooks/pxe_server.yml`` through ansible-runner.

On a lab-in-a-box it is the server VM (the NFS server's), serving on its lab NIC: dnsmasq
hands each pxe node its fixed address by MAC and iPXE over TFTP, and a small HTTP service
serves ``boot.ipxe``, the per-MAC scripts swaplab publishes for a run, and the run's kernel
and initrd. The playbook's variables are built here from the lab model, so nothing reaches
it that the inventory's validation did not see.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from model.lab import BootServer, Lab
from workers.lab.boot_files import BootFilesError, Ran, Runner
from workers.lab.provision import PlaybookRun, run_playbook

Progress = Callable[[str], None]
PLAYBOOK = Path(__file__).resolve().parents[2] / "playbooks" / "pxe_server.yml"
BOOT_HOST = "boot"  # the boot server's name in the inventory ansible-runner is given


def playbook_vars(
    boot: BootServer, subnet: str, interface: str, machines: Sequence[tuple[str, str, str]]
) -> dict[str, Any]:
    """The playbook's variables: the server's place on the lab network and each machine's
    (name, MAC, lab address)."""
    network = ipaddress.IPv4Network(subnet)
    settings = boot.settings
    return {
        "swaplab_boot_root": settings.root,
        "swaplab_boot_address": boot.address,
        "swaplab_boot_network": str(network.network_address),
        "swaplab_boot_netmask": str(network.netmask),
        "swaplab_boot_interface": settings.interface or interface,
        "swaplab_boot_http_port": settings.http_port,
        "swaplab_boot_nodes": [{"name": name, "mac": mac, "address": address} for name, mac, address in machines],
    }


def provision(
    host_vars: Mapping[str, str], extravars: Mapping[str, Any], artifacts: Path, progress: Progress = lambda line: None
) -> PlaybookRun:
    """Run the boot server's playbook against the host Ansible reaches with ``host_vars``."""
    inventory = {"boot_server": {"hosts": {BOOT_HOST: dict(host_vars)}}}
    progress(f"provisioning the boot server with {PLAYBOOK.name} (ansible-runner)")
    done = run_playbook(PLAYBOOK, inventory, artifacts, extravars, progress=progress)
    progress(f"boot server provisioned in {done.seconds:.0f} s ({done.changed} changed)")
    return done


def access(lab_name: str, lab: Lab | None = None) -> tuple[Runner, str, str]:
    """How a worker reaches the boot server of a lab (the one it serves by that name, or
    ``lab``): a command runner, the served root and the URL nodes fetch from. A
    lab-in-a-box's is its server VM."""
    from workers.lab import labbox  # the lab's VM machinery, only when a pxe node boots
    from workers.labs import served_lab

    lab = lab if lab is not None else served_lab(lab_name)
    boot = lab.boot_server
    if boot is None:
        raise BootFilesError(f"lab {lab_name} has no boot server")
    if not (boot.shared_with_nfs and lab.nfs_backend == "knfsd"):
        raise BootFilesError(
            f"lab {lab_name}: a boot server on a host of its own is not supported yet (the lab-in-a-box's server VM is)"
        )
    vm = labbox.server_vm(labbox.Box.of_lab(lab))
    if vm is None:
        raise BootFilesError(f"lab {lab_name} is down: swaplab lab up -i {lab.inventory}")

    def run(command: str, stdin: bytes | None, timeout: float) -> Ran:
        done = vm.run(command, timeout=timeout, stdin=stdin)
        return Ran(done.ok, done.stdout, done.stderr)

    return run, boot.settings.root, boot.http_url


def leftover_runner(lab_name: str) -> Runner | None:
    """The boot server of a lab whose publication a dead worker left: None when the lab is
    down (the server VM, and what it served, went with it). Raises BootFilesError when this
    worker cannot tell (a lab it does not serve): the journal entry stays for one that can."""
    from workers.lab import labbox
    from workers.labs import LabNotServed, served_lab

    try:
        lab = served_lab(lab_name)
    except LabNotServed as err:
        raise BootFilesError(str(err)) from None
    if lab.boot_server is not None and labbox.server_vm(labbox.Box.of_lab(lab)) is None:
        return None
    return access(lab_name, lab)[0]
