"""``swaplab lab check``: is a lab fit to run campaigns? One probe per part, nothing changed.

The inventory is validated first (by the caller, with the same model as every worker).
Then each part is asked, read-only, with a bound on every probe:

- the NFS server: ganesha installed and, when it runs, serving from a directory it can
  export (a run starts it when it does not); knfsd: the lab-in-a-box is up, knfsd has
  threads, and every node's export is listed for that node's address alone;
- the boot server (labs of pxe nodes): dnsmasq and the HTTP service active, DHCP and TFTP
  listening, boot.ipxe served — probed on the server;
- each node: a QEMU node's emulator and accelerator exist and its RAM fits the host; an
  SSH node answers over SSH with its own key and pinned host key; a pxe node's BMC
  answers with its credentials and says the machine's power.

A part that is not fit says what to do about it. Nothing here starts, stops or writes.
"""

from __future__ import annotations

import os
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from model.lab import Lab, NodeConfig, PxeOptions
from workers.bmc.base import BmcError
from workers.bmc.credentials import CredentialsError, load_credentials
from workers.bmc.ipmi import IpmiBmc
from workers.drivers import make_driver
from workers.drivers.ssh import SshDriver
from workers.lab import boot_server
from workers.lab.boot_files import BootFilesError
from workers.lab.nfs import NfsServerError, make_nfs_server
from workers.lab.nfs.knfsd import KnfsdServer
from workers.lab.server_vm import ServerVmError
from workers.node_ssh import NodeShell, NodeUnreachable

PROBE_TIMEOUT_S = 20.0


@dataclass(frozen=True)
class Probe:
    """One part of the lab, and whether it is fit (``detail`` says why, or what to do)."""

    part: str
    target: str
    fit: bool
    detail: str

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def check_lab(lab: Lab, inventory: Path) -> list[Probe]:
    """Every part of ``lab`` probed: its NFS server and boot server first, then its nodes in
    inventory order (a pxe node: its BMC)."""
    boot = [_boot_probe(lab, inventory)] if lab.boot_server is not None else []
    return [_nfs_probe(lab, inventory), *boot, *(_node_probe(lab, node) for node in lab.nodes)]


def _boot_probe(lab: Lab, inventory: Path) -> Probe:
    """dnsmasq (DHCP 67, TFTP 69) and the boot files' HTTP service answering, probed on the server."""
    assert lab.boot_server is not None
    where = f"{lab.boot_server.host} {lab.boot_server.http_url}"
    try:
        run, _root, url = boot_server.access(lab.name, lab)
        done = run(
            "systemctl is-active dnsmasq swaplab-boot-http; ss -Hlnu | grep -Ec ':(67|69) '; "
            f"python3 -c \"import urllib.request as u; u.urlopen('{url}/boot.ipxe', timeout=10)\" && echo http-ok",
            None,
            PROBE_TIMEOUT_S,
        )
    except (BootFilesError, NfsServerError, ServerVmError, NodeUnreachable) as err:
        return Probe("boot server", where, False, f"{err} (swaplab lab up -i {inventory})")
    lines = done.stdout.split()
    listening = int(lines[2]) if len(lines) > 2 and lines[2].isdigit() else 0
    if lines[:2] != ["active", "active"] or "http-ok" not in lines or listening < 2:
        return Probe("boot server", where, False, f"not serving (dnsmasq, TFTP or HTTP): swaplab lab up -i {inventory}")
    return Probe("boot server", where, True, "DHCP and TFTP listening, boot.ipxe served over HTTP")


def _nfs_probe(lab: Lab, inventory: Path) -> Probe:
    probe = _knfsd_probe if lab.nfs_backend == "knfsd" else _ganesha_probe
    try:
        return probe(lab, inventory)
    except NfsServerError as err:
        return Probe("nfs server", lab.nfs_backend, False, str(err))


def _ganesha_probe(lab: Lab, inventory: Path) -> Probe:
    server = make_nfs_server(lab.nfs_backend, lab.name, lab.nfs_settings)
    where = server.where()
    if shutil.which("ganesha.nfsd") is None and not os.path.exists("/usr/bin/ganesha.nfsd"):
        return Probe("nfs server", where, False, "ganesha.nfsd is not installed (scripts/setup)")
    if not server.is_serving():
        return Probe("nfs server", where, True, f"not running: a run starts it (or swaplab lab up -i {inventory})")
    return Probe("nfs server", where, True, f"serving {len(lab.nodes)} node export(s)")


def _knfsd_probe(lab: Lab, inventory: Path) -> Probe:
    server = make_nfs_server(lab.nfs_backend, lab.name, lab.nfs_settings)
    assert isinstance(server, KnfsdServer)
    where = server.where()
    if not server.is_serving():
        return Probe(
            "nfs server",
            where,
            False,
            f"the lab-in-a-box is down or knfsd does not serve: swaplab lab up -i {inventory}",
        )
    listed = server.exports_listed()
    missing = [node.name for node in lab.nodes if not _exported_to(listed, server.node_export(node.name).path, node)]
    if missing:
        return Probe(
            "nfs server",
            where,
            False,
            f"no export for {', '.join(missing)} (swaplab lab up -i {inventory} provisions them)",
        )
    return Probe("nfs server", where, True, f"serving; {len(lab.nodes)} export(s), each to its node's address alone")


def _exported_to(exportfs_v: str, path: str, node: NodeConfig) -> bool:
    """``exportfs -v`` lists ``path`` for the node's address/32 (or the bare address)."""
    if node.nfs_route is None:
        return False
    address = node.nfs_route.client_address
    words = exportfs_v.split()
    for at, word in enumerate(words[:-1]):
        if word == path and words[at + 1].split("(")[0] in (f"{address}/32", address):
            return True
    return False


def _node_probe(lab: Lab, node: NodeConfig) -> Probe:
    target = f"{node.name} ({node.driver})"
    if node.driver == "qemu":
        problem = _qemu_problem(node)
        return Probe(
            "node", target, problem is None, problem or "emulator and accelerator present; its RAM fits this host"
        )
    if node.driver == "ssh":
        return _ssh_probe(node, target)
    if node.driver == "pxe":
        return _bmc_probe(node, target)
    return Probe("node", target, False, f"no probe for driver {node.driver!r}")


def _qemu_problem(node: NodeConfig) -> str | None:
    binary = str(node.options.get("qemu_binary", "qemu-system-x86_64"))
    if shutil.which(binary) is None:
        return f"{binary} is not installed (scripts/setup)"
    if node.options.get("accel") == "kvm" and not os.access("/dev/kvm", os.R_OK | os.W_OK):
        return "accel kvm, but /dev/kvm is missing or not usable"
    need = node.ram_mib or 0
    have = _host_memory_mib()
    if need > have:
        return f"needs {need} MiB of RAM; this host has {have} MiB"
    return None


def _host_memory_mib() -> int:
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemTotal:"):
            return int(line.split()[1]) // 1024
    return 0


def _ssh_probe(node: NodeConfig, target: str) -> Probe:
    driver = make_driver(node, Path("/nonexistent"))
    assert isinstance(driver, SshDriver)
    ssh = driver.ssh_target()
    try:
        shell = NodeShell.connect(ssh)
        try:
            done = shell.run("uname -r", timeout=PROBE_TIMEOUT_S)
        finally:
            shell.close()
    except NodeUnreachable as err:
        return Probe("node", target, False, f"no SSH: {err}")
    if not done.ok:
        return Probe(
            "node", target, False, f"SSH at {ssh.where} answers, but `uname -r` failed: {done.stderr.strip()[-200:]}"
        )
    return Probe("node", target, True, f"answers over SSH at {ssh.where}; kernel {done.stdout.strip()}")


def _bmc_probe(node: NodeConfig, target: str) -> Probe:
    """The node's BMC answers with its credentials and says the machine's power."""
    options = PxeOptions.model_validate(node.options)
    where = f"BMC {options.bmc_address}:{options.bmc_port}"
    try:
        creds = load_credentials(options.bmc_credentials, node.name, lab=node.lab)
        state = IpmiBmc(options.bmc_address, creds, options.bmc_port, min(options.bmc_timeout_s, 20)).power_state()
    except (CredentialsError, BmcError) as err:
        return Probe("node", target, False, f"{where}: {err}")
    return Probe("node", target, True, f"{where} answers; power {state}")
