"""The node driver protocol: how a lab powers a diskless node with a given kernel.

A driver owns one node of one lab. It knows nothing of campaigns or NFS; it boots what it
is given, says where the node's SSH answers, captures the console and powers off.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Protocol


class DriverError(RuntimeError):
    """The lab's own machinery (QEMU, IPMI, libvirt ...) failed: an infra-error."""


@dataclass(frozen=True)
class BootSpec:
    """What to boot: kernel image, initramfs, command line, and the VM size."""

    kernel: Path
    initrd: Path
    cmdline: str
    ram_mib: int
    cpus: int


@dataclass(frozen=True)
class NodeConfig:
    """A node as the lab inventory describes it (driver-specific keys in ``options``)."""

    name: str
    lab: str
    driver: str
    ram_mib: int
    cpus: int
    ssh_host: str
    ssh_port: int
    options: dict[str, str | int | bool]


class NodeDriver(Protocol):
    """Power and console of one node."""

    def power_on(self, boot: BootSpec, console_log: Path) -> None:
        """Start the node with ``boot``; console output goes to ``console_log``.

        Raises DriverError when the lab cannot start it (missing binary, port taken ...).
        """

    def is_running(self) -> bool:
        """True while the node's machine (e.g. the QEMU process) is alive."""

    def exit_reason(self) -> str | None:
        """Why the machine stopped (exit status, stderr tail), or None while it runs."""

    def power_off(self) -> None:
        """Stop the node now (idempotent; kills if it does not stop in time)."""

    def ssh_address(self) -> tuple[str, int]:
        """Host and port where the node's sshd answers, from the orchestrator's side."""
