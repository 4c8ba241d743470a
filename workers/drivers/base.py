"""Node driver protocols: what a lab can do with one of its nodes.

Every driver gives SSH access to its node (``NodeAccess``). Drivers that boot the node
with the campaign's kernel also implement ``PowerControl`` (QEMU today; IPMI + PXE or
libvirt later); drivers of nodes that run already (``ssh``) do not. The node session
assembles its pipeline from what the driver implements (workers.pipeline.strategy), so a
new kind of node is a new driver and perhaps a new strategy, never an ``if`` in a step.

A driver owns one node of one lab. It knows nothing of campaigns or NFS.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Protocol, runtime_checkable

from model.lab import NodeConfig
from model.runspec import BootRecord
from workers.node_ssh import SshTarget

__all__ = ["BootSpec", "ConsoleSpec", "DriverError", "MachineState", "NodeAccess", "NodeConfig", "PowerControl"]


class DriverError(RuntimeError):
    """The lab's own machinery (QEMU, IPMI, libvirt ...) failed: an infra-error."""


class MachineState(StrEnum):
    """What the lab knows of the machine under a node, apart from its kernel."""

    RUNNING = "running"  # the machine runs (e.g. the QEMU process is alive)
    STOPPED = "stopped"  # the machine is gone (QEMU exited, power off)
    UNKNOWN = "unknown"  # no power control: only the node's own answers say anything


@dataclass(frozen=True)
class BootSpec:
    """What to boot: kernel image, initramfs, command line, and the VM size."""

    kernel: Path
    initrd: Path
    cmdline: str
    ram_mib: int
    cpus: int
    # Guest time (model.figures.Timing): the instruction counter's shift; None: host time.
    icount_shift: int | None = None


@dataclass(frozen=True)
class ConsoleSpec:
    """Where a running node's console comes from, if the lab has one for it.

    ``file``: a host file the lab's console server writes (tailed from its current end);
    ``command``: a host command whose output is the console (e.g. ipmitool sol activate).
    Neither: ``dmesg -w`` over SSH.
    """

    file: Path | None = None
    command: tuple[str, ...] = ()


@runtime_checkable
class NodeAccess(Protocol):
    """Reaching the node: every driver has this."""

    node: NodeConfig

    def machine_state(self) -> MachineState:
        """RUNNING / STOPPED when the lab can tell, UNKNOWN when it cannot."""

    def exit_reason(self) -> str | None:
        """Why the machine stopped (exit status, stderr tail), or None when it runs or is unknown."""


@runtime_checkable
class PowerControl(NodeAccess, Protocol):
    """A node swaplab boots with a kernel of the campaign's, and powers off after the run."""

    def kernel_console_args(self) -> str:
        """Kernel command-line words for this machine's console and reboot behaviour."""

    def power_on(self, boot: BootSpec, console_log: Path) -> None:
        """Start the node with ``boot``; console output goes to ``console_log``.

        Raises DriverError when the lab cannot start it (missing binary, port taken ...).
        """

    def power_off(self) -> None:
        """Stop the node now (idempotent; kills if it does not stop in time)."""

    def ssh_address(self) -> tuple[str, int]:
        """Host and port where the booted node's sshd answers, from the orchestrator's side."""

    def boot_record(self) -> BootRecord:
        """How the node was booted, for its result (what was done so far)."""


@runtime_checkable
class AlreadyRunning(NodeAccess, Protocol):
    """A node that runs before and after the run: swaplab only drives the test on it."""

    def ssh_target(self) -> SshTarget:
        """How to log in: address, user, key or agent, and how its host key is checked."""

    def console(self) -> ConsoleSpec:
        """The lab's console for the node, if it has one."""
