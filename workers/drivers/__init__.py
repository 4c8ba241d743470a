"""Node drivers, chosen by the inventory's ``swaplab_driver`` value.

Drivers register themselves by decorator into one factory (labgrid style); importing this
package imports the built-in drivers so the registry is complete.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from model.lab import NodeConfig
from workers.drivers.base import AlreadyRunning, BootSpec, DriverError, MachineState, NodeAccess, PowerControl

DriverFactory = Callable[[NodeConfig, Path], NodeAccess]
_DRIVERS: dict[str, DriverFactory] = {}


def register_driver(name: str) -> Callable[[DriverFactory], DriverFactory]:
    """Class decorator: make a driver available as ``swaplab_driver: <name>``."""

    def add(factory: DriverFactory) -> DriverFactory:
        _DRIVERS[name] = factory
        return factory

    return add


def driver_names() -> list[str]:
    """Names an inventory may use for ``swaplab_driver``."""
    return sorted(_DRIVERS)


def make_driver(node: NodeConfig, workdir: Path) -> NodeAccess:
    """The driver for ``node``; ``workdir`` holds its pid file and scratch files."""
    try:
        factory = _DRIVERS[node.driver]
    except KeyError:
        raise DriverError(
            f"node {node.name}: unknown driver {node.driver!r} (known: {', '.join(driver_names())})"
        ) from None
    return factory(node, workdir)


from workers.drivers import pxe, qemu, ssh  # noqa: E402,F401  (register the built-in drivers)

__all__ = [
    "AlreadyRunning",
    "BootSpec",
    "DriverError",
    "MachineState",
    "NodeAccess",
    "NodeConfig",
    "PowerControl",
    "make_driver",
    "register_driver",
]
