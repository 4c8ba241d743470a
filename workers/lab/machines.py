"""A lab-in-a-box's bare-metal machines: what ``labbox.up`` starts for its pxe nodes.

Per node: an ``ipmi_sim`` BMC on this host's loopback (its chassis powers a QEMU machine
on the lab's bridge: ``workers.lab.pxe_machine``; its SOL is the machine's serial port),
and a relay from ``127.0.0.1:<ansible_port>`` to the node's sshd on the lab network
(``workers.lab.ns_relay``). All run detached with their pids recorded, so any later
process finds them, and ``down`` stops them (a machine never outlives its BMC). Their
credentials are the lab's own, generated once (``workers.bmc.credentials``, source
``lab``). The boot server is the server VM, provisioned by ``playbooks/pxe_server.yml``.
"""

from __future__ import annotations

import ipaddress
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

from model.lab import LabMachine
from model.paths import cache_dir, private_dir
from workers.bmc.base import BmcCredentials, BmcError
from workers.bmc.credentials import ensure_lab_credentials
from workers.bmc.simulator import BmcSimulator, SimulatedBmc, recorded_alive, stop_recorded
from workers.lab import network
from workers.loopback import free_tcp_port, tcp_listening
from workers.process import record_pid, recorded_pid, stop_recorded_pid

Progress = Callable[[str], None]
REPO = Path(__file__).resolve().parents[2]
_RELAY_START_S = 10.0


class MachinesError(RuntimeError):
    """A machine's BMC or relay could not be started: an infra-error."""


def machine_dir(lab: str, node: str) -> Path:
    return cache_dir("labs", lab, "machines", node)


def up(lab: str, inventory: Path, machines: tuple[LabMachine, ...], progress: Progress) -> list[str]:
    """Start what is not running of each machine's BMC and relay; what was started."""
    if not machines:
        return []
    credentials = ensure_lab_credentials(lab)
    started = []
    for machine in machines:
        if not ipaddress.ip_address(machine.bmc_address).is_loopback:
            raise MachinesError(
                f"lab {lab}: {machine.node}'s simulated BMC must listen on loopback, not {machine.bmc_address}"
            )
        where = private_dir(machine_dir(lab, machine.node))
        if not recorded_alive(where / "bmc"):
            _start_bmc(lab, inventory, machine, where, credentials)
            started.append(f"BMC of {machine.node} on {machine.bmc_address}:{machine.bmc_port}")
        if not _relay_alive(where):
            _start_relay(lab, machine, where)
            started.append(f"SSH relay 127.0.0.1:{machine.ssh_port} -> {machine.address}:22")
    for line in started:
        progress(line)
    return started


def down(lab: str) -> list[str]:
    """Stop every machine of the lab, its BMC and its relay; what was stopped."""
    root = cache_dir("labs", lab, "machines")
    stopped = []
    for where in sorted(p for p in root.iterdir() if p.is_dir()):
        if stop_recorded(where / "bmc"):
            stopped.append(f"BMC and machine of {where.name}")
        if _stop_relay(where):
            stopped.append(f"SSH relay of {where.name}")
    return stopped


def _start_bmc(lab: str, inventory: Path, machine: LabMachine, where: Path, credentials: BmcCredentials) -> None:
    serial_port, vm_port = free_tcp_port(), free_tcp_port()
    machine_json = where / "machine.json"
    machine_json.write_text(
        json.dumps(
            {
                "inventory": str(inventory.resolve()),
                "node": machine.node,
                "serial_port": serial_port,
                "vm_port": vm_port,
            }
        )
    )
    bmc_dir = where / "bmc"
    shutil.rmtree(bmc_dir / "machine", ignore_errors=True)  # an old power state is not this one's
    bmc = SimulatedBmc(machine.node, machine.bmc_address, machine.bmc_port, credentials, bmc_dir, serial_port, vm_port)
    argv = [sys.executable, "-m", "workers.lab.pxe_machine", str(machine_json)]
    try:
        BmcSimulator(bmc, argv, detach=True).start()
    except BmcError as err:
        raise MachinesError(f"lab {lab}: {err}") from None


def _start_relay(lab: str, machine: LabMachine, where: Path) -> None:
    argv = [
        sys.executable, "-m", "workers.lab.ns_relay",
        str(machine.ssh_port), network.namespace(lab), machine.address, "22",
    ]  # fmt: skip
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    with open(where / "relay.log", "ab") as log:
        proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=log, stderr=log, env=env, start_new_session=True)
    record_pid(where / "relay.pid", proc.pid)
    deadline = time.monotonic() + _RELAY_START_S
    while not tcp_listening(machine.ssh_port):
        if proc.poll() is not None or time.monotonic() > deadline:
            raise MachinesError(f"lab {lab}: the SSH relay of {machine.node} did not listen on {machine.ssh_port}")
        time.sleep(0.05)


def _relay_alive(where: Path) -> bool:
    return recorded_pid(where / "relay.pid") is not None


def _stop_relay(where: Path) -> bool:
    return stop_recorded_pid(where / "relay.pid", signal.SIGTERM, 5.0)
