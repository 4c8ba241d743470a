"""A lab's long-lived parts on this host: its network, its server VM and that server's
provisioning — brought up together, once per lab start, and taken down together.

``up`` is idempotent and safe from several processes at once (a lock per lab): it builds
or repairs the lab network (namespace, bridge, taps, anti-spoofing rules), then finds the
server VM another process started (``ServerVm.adopt``) or boots one from the cached
server image with a NIC on the lab's bridge and a data disk, gives that NIC the server's
lab address, mounts the data disk under the export directory, and runs
``playbooks/nfs_server.yml`` through ansible-runner (one export per node, to its address
alone). The playbook runs once per VM boot: a marker in the VM's run directory says it
did. ``down`` powers the VM off and removes the network; what it leaves is nothing.

Everything comes from the lab model (``model.lab``): the node names, the subnet, the
export directory and its options were validated when the inventory was read.
"""

from __future__ import annotations

import contextlib
import fcntl
import ipaddress
import json
import os
import shlex
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from model.lab import BootServer, KnfsdSettings, Lab, LabMachine, NfsRoute
from model.paths import cache_dir
from workers.image import lab_keys
from workers.lab import boot_server, machines, network
from workers.lab.network import LabNetwork
from workers.lab.provision import PlaybookRun, run_playbook
from workers.lab.server_image import build_server_image
from workers.lab.server_vm import DATA_LABEL, ServerVm, ServerVmError

Progress = Callable[[str], None]
PLAYBOOK = Path(__file__).resolve().parents[2] / "playbooks" / "nfs_server.yml"
SERVER_PORT = "server"  # the server's name on the lab network (its tap is tap-server)
DATA_MOUNT = "/srv/swaplab"  # where the data disk is mounted; the export directory lies under it
PROVISIONED = "provisioned.json"
BOOT_PROVISIONED = "boot-provisioned.json"
_DERIVED = ("routes", "machines", "boot_server", "inventory")  # what load_lab adds to the settings


class LabBoxError(RuntimeError):
    """The lab's network, server VM or provisioning could not be brought up: an infra-error."""


@dataclass(frozen=True)
class LabUp:
    """What ``up`` found or did, for people and for ``--json``."""

    lab: str
    namespace: str
    server_address: str
    ssh: str
    server_pid: int | None
    booted: bool  # this call booted the VM (else it was running)
    provisioned: PlaybookRun | None  # this call ran the playbook (else it had run since the boot)
    seconds: float


@dataclass(frozen=True)
class Box:
    """A lab-in-a-box as its inventory describes it: its name, knfsd settings and routes."""

    name: str
    settings: KnfsdSettings
    routes: dict[str, NfsRoute]
    # Its pxe nodes' machines, their boot server and the inventory (for the machines'
    # QEMU, which reads it); none on a lab of QEMU guests only.
    machines: tuple[LabMachine, ...] = ()
    boot_server: BootServer | None = None
    inventory: Path | None = None

    @classmethod
    def of(cls, lab: str, settings: Mapping[str, Any]) -> Box:
        """From the NFS settings ``model.lab.load_lab`` made (validated again: cheap)."""
        routes = {name: route for name, route in settings.get("routes", {}).items() if isinstance(route, NfsRoute)}
        own = {key: value for key, value in settings.items() if key not in _DERIVED}
        machines = tuple(m for m in settings.get("machines", ()) if isinstance(m, LabMachine))
        boot = settings.get("boot_server")
        inventory = settings.get("inventory")
        return cls(
            lab,
            KnfsdSettings.model_validate(own),
            routes,
            machines,
            boot if isinstance(boot, BootServer) else None,
            inventory if isinstance(inventory, Path) else None,
        )

    @classmethod
    def of_lab(cls, lab: Lab) -> Box:
        if lab.nfs_backend != "knfsd":
            raise LabBoxError(f"lab {lab.name} has no lab network (its NFS backend is {lab.nfs_backend})")
        return cls.of(lab.name, lab.nfs_settings)


def plan(box: Box) -> LabNetwork:
    """The lab network as the inventory's routes describe it: the server at .1, nodes .11 up."""
    subnet = ipaddress.IPv4Network(box.settings.subnet)
    macs = {node: route.mac for node, route in box.routes.items() if route.mac}
    net = network.lab_network(box.name, list(box.routes), SERVER_PORT, subnet, macs)
    for node, route in box.routes.items():  # one derivation of the addresses, checked rather than trusted
        if str(net.port(node).address) != route.client_address:
            raise LabBoxError(f"lab {box.name}: node {node}'s lab address disagrees with the network plan")
    return net


def run_dir(box: Box) -> Path:
    return cache_dir("labs", box.name, "server-vm")


def logs_dir(box: Box) -> Path:
    """Where the lab's provisioning artifacts are kept."""
    return cache_dir("labs", box.name, "ansible")


def server_vm(box: Box) -> ServerVm | None:
    """The lab's running server VM (started by any process), or None."""
    return ServerVm.adopt(lab_keys(box.name), run_dir(box), box.name)


@contextlib.contextmanager
def _locked(box: Box) -> Iterator[None]:
    with (cache_dir("labs", box.name) / ".labbox.lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield


def up(box: Box, progress: Progress = lambda line: None) -> LabUp:
    """Bring the lab's network, server VM and provisioning up (what is up stays as it is)."""
    began = time.monotonic()
    with _locked(box):
        net = plan(box)
        network.up(net)
        vm = server_vm(box)
        booted = vm is None
        if vm is None:
            vm = _boot(box, net, progress)
        try:
            provisioned = None if _provisioned(vm) else _provision(box, vm, net, progress)
            if box.machines:
                _boot_server_up(box, vm, net, progress)
                assert box.inventory is not None
                machines.up(box.name, box.inventory, box.machines, progress)
            pid = vm.pid
        finally:
            vm.close()
    return LabUp(
        lab=box.name,
        namespace=net.namespace,
        server_address=str(net.port(SERVER_PORT).address),
        ssh=" ".join(shlex.quote(arg) for arg in vm.ssh_argv()),
        server_pid=pid,
        booted=booted,
        provisioned=provisioned,
        seconds=round(time.monotonic() - began, 1),
    )


def down(box: Box) -> list[str]:
    """Power the server VM off and remove the lab network; what was stopped, for people."""
    stopped = []
    with _locked(box):
        stopped += machines.down(box.name)
        vm = server_vm(box)
        if vm is not None:
            vm.stop()
            stopped.append(f"server VM of lab {box.name}")
        (run_dir(box) / PROVISIONED).unlink(missing_ok=True)
        if box.name in network.leftovers():
            network.down(box.name)
            stopped.append(f"network namespace {network.namespace(box.name)}")
    return stopped


def is_up(box: Box) -> bool:
    """The server VM runs and was provisioned since it booted."""
    vm = server_vm(box)
    return vm is not None and _provisioned(vm)


# -- booting the server ---------------------------------------------------------------------------


def _boot(box: Box, net: LabNetwork, progress: Progress) -> ServerVm:
    settings = box.settings
    keys = lab_keys(box.name)
    image = build_server_image(keys, progress)
    progress(f"server image {image.key[:12]} ({image.state}, kernel {image.kernel_release})")
    port = net.port(SERVER_PORT)
    tap = network.open_tap(net, port, inheritable=True)
    (run_dir(box) / PROVISIONED).unlink(missing_ok=True)
    vm = ServerVm(
        image, keys, run_dir(box), name=box.name, ram_mib=settings.ram_mib, data_disk_mib=settings.data_disk_mib,
        extra_netdev_args=[
            "-netdev", f"tap,id=lab,fd={tap}",
            "-device", f"virtio-net-pci,netdev=lab,mac={port.mac},romfile=",
        ],
        pass_fds=(tap,),
    )  # fmt: skip
    try:
        vm.start()
    finally:
        os.close(tap)  # QEMU holds its own copy now (or never started)
    try:
        progress(f"server VM booting (TCG, {settings.ram_mib} MiB); its console: {vm.console_log}")
        progress(f"server VM answers SSH after {vm.wait_ready():.0f} s")
        _configure_lab_side(vm, port, net, settings)
    except BaseException:
        vm.stop()
        raise
    return vm


def _configure_lab_side(vm: ServerVm, port: network.Port, net: LabNetwork, settings: KnfsdSettings) -> None:
    """The server's lab NIC (found by its MAC) at .1, and the data disk under the exports."""
    if not settings.export_dir.startswith(DATA_MOUNT + "/"):
        raise LabBoxError(f"lab {net.lab}: the export directory must lie under {DATA_MOUNT} (the VM's data disk)")
    script = (
        "set -e\n"
        + network.guest_link_command(port.mac, f"{port.address}/{net.subnet.prefixlen}")
        + f"mkdir -p {DATA_MOUNT}\n"
        + f"mountpoint -q {DATA_MOUNT} || mount LABEL={DATA_LABEL} {DATA_MOUNT}\n"
    )
    done = vm.run(script, timeout=60)
    if not done.ok:
        raise LabBoxError(f"server VM of lab {net.lab}: lab NIC or data disk: {(done.stderr or done.stdout).strip()}")


# -- provisioning ------------------------------------------------------------------------------------


def _boot_server_up(box: Box, vm: ServerVm, net: LabNetwork, progress: Progress) -> None:
    """The server VM as the machines' boot server: its playbook once per VM boot."""
    marker = vm.run_dir / BOOT_PROVISIONED
    with contextlib.suppress(OSError, ValueError):
        if json.loads(marker.read_text()).get("pid") == vm.pid:
            return
    assert box.boot_server is not None  # a lab with machines has one (checked by the model)
    port = net.port(SERVER_PORT)
    found = vm.run(f'for d in /sys/class/net/*; do [ "$(cat $d/address)" = {port.mac} ] && basename $d; done; true')
    interface = found.stdout.strip()
    if not found.ok or not interface:
        raise LabBoxError(f"server VM of lab {box.name}: no NIC with the lab MAC {port.mac}")
    nodes = [(m.node, m.mac, m.address) for m in box.machines]
    extravars = boot_server.playbook_vars(box.boot_server, box.settings.subnet, interface, nodes)
    done = boot_server.provision(vm.ansible_vars(), extravars, logs_dir(box), progress)
    marker.write_text(json.dumps({"pid": vm.pid, "at": time.time(), "changed": done.changed}) + "\n")


def _provisioned(vm: ServerVm) -> bool:
    """The playbook ran against this boot of the VM (its marker names the VM's pid)."""
    try:
        marker = json.loads((vm.run_dir / PROVISIONED).read_text())
    except (OSError, ValueError):
        return False
    return isinstance(marker, dict) and marker.get("pid") == vm.pid


def _provision(box: Box, vm: ServerVm, net: LabNetwork, progress: Progress) -> PlaybookRun:
    settings = box.settings
    inventory = {"nfs_server": {"hosts": {SERVER_PORT: vm.ansible_vars()}}}
    extravars = {
        "swaplab_nfs_export_dir": settings.export_dir,
        "swaplab_nfs_nodes": [{"name": port.name, "address": str(port.address)} for port in net.nodes],
        "swaplab_nfs_sync": settings.sync,
        "swaplab_nfs_update_cache": settings.update_cache,
    }
    progress(f"provisioning the NFS server with {PLAYBOOK.name} (ansible-runner)")
    done = run_playbook(PLAYBOOK, inventory, logs_dir(box), extravars, progress=progress)
    progress(f"provisioned in {done.seconds:.0f} s ({done.changed} changed); artifacts: {done.artifacts}")
    marker = {"pid": vm.pid, "at": time.time(), "changed": done.changed, "artifacts": str(done.artifacts)}
    (vm.run_dir / PROVISIONED).write_text(json.dumps(marker) + "\n")
    return done


__all__ = ["LabBoxError", "LabUp", "ServerVmError", "down", "is_up", "plan", "server_vm", "up"]
