"""What a BMC can do for swaplab, whatever protocol it speaks.

Errors name the BMC (``host:port``) and the command, never a credential. A BMC that does
not answer within its timeout is ``BmcUnreachable``; one that answers and refuses (bad
credentials, an unsupported command) is ``BmcError``. Both are the lab's fault: an
infra-error, recorded in the node's health.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum
from typing import Protocol


class BmcError(RuntimeError):
    """The BMC answered and refused, or failed, a command."""


class BmcUnreachable(BmcError):
    """The BMC did not answer within its timeout."""


class PowerState(StrEnum):
    """The machine's power as its BMC reports it."""

    ON = "on"
    OFF = "off"


class BootDevice(StrEnum):
    """Where the machine boots from next (IPMI's boot device selector, once)."""

    PXE = "pxe"
    DISK = "disk"
    DEFAULT = "default"


@dataclass(frozen=True)
class BmcCredentials:
    """A BMC user and its password; the password is never part of a repr or a message."""

    user: str
    password: str = field(repr=False)

    def __post_init__(self) -> None:
        if not self.user or not self.password:
            raise ValueError("a BMC needs a user and a password")


class Bmc(Protocol):
    """Power control and next-boot selection of one machine."""

    @property
    def address(self) -> str:
        """``host:port`` of the BMC, for messages and the node's health."""

    def power_state(self) -> PowerState:
        """The power state the BMC reports now."""

    def power_on(self) -> None:
        """Power the machine on (no effect when it is on)."""

    def power_off(self) -> None:
        """Power the machine off at once (not an orderly shutdown)."""

    def power_cycle(self) -> None:
        """Power the machine off and on again."""

    def boot_next(self, device: BootDevice) -> None:
        """Boot from ``device`` at the next power-on only."""
