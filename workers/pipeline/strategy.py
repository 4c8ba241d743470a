"""Which steps a node session runs, chosen by what its driver can do (LAVA's strategies).

Each strategy ``accepts`` a driver and assembles the node pipeline for it; a new kind of
node (PXE under IPMI, libvirt) is a new strategy or a new driver for an existing one, and
a new step (fault injection at t+N s) is inserted here without touching the others.
"""

from __future__ import annotations

from typing import Protocol

from model.lab import DRIVER_KINDS
from workers.drivers.base import AlreadyRunning, NodeAccess, PowerControl
from workers.pipeline.attach_steps import ConnectStep, ConsoleStep, FitnessStep, IdentifyKernelStep, InstallToolStep
from workers.pipeline.boot_steps import BootedKernelStep, BootStep, LabLinkStep, PreparedImageStep
from workers.pipeline.context import NodeContext
from workers.pipeline.fault_steps import FaultStep
from workers.pipeline.step import Pipeline, Step
from workers.pipeline.swap_steps import ClockStep, MountStep, SamplerStep, SwapFileStep, SwaponStep, SysctlStep
from workers.pipeline.workload_steps import BarrierStep, CollectStep, WorkloadStep


class Strategy(Protocol):
    """How to bring one kind of node to "swapping over NFS, at the barrier"."""

    name: str
    # The node outlives the run: leave it as found (swapoff, unmount, sysctls, processes).
    persistent: bool

    def accepts(self, driver: NodeAccess) -> bool: ...

    def steps(self, driver: NodeAccess) -> list[Step[NodeContext]]: ...


def _test_steps() -> list[Step[NodeContext]]:
    """What every node does once it is reachable with swaplab-node on it."""
    return [
        ClockStep(),
        SysctlStep(),
        MountStep(),
        SwaponStep(),
        SamplerStep(),
        BarrierStep(),
        FaultStep(),
        WorkloadStep(),
        CollectStep(),
    ]


class BootStrategy:
    """swaplab boots the node with the run's image and powers it off afterwards."""

    name = "boot"
    persistent = False

    def accepts(self, driver: NodeAccess) -> bool:
        return isinstance(driver, PowerControl)

    def steps(self, driver: NodeAccess) -> list[Step[NodeContext]]:
        assert isinstance(driver, PowerControl)
        route = driver.node.nfs_route
        # A pxe node has one NIC, given its lab address by DHCP at boot; a qemu node gets its
        # second NIC (the lab network's) configured over the first.
        kind = DRIVER_KINDS.get(driver.node.driver)
        one_nic = kind is not None and kind.lab_network_only
        second_nic = route is not None and route.lab_network and not one_nic
        link: list[Step[NodeContext]] = [LabLinkStep()] if second_nic else []
        return [PreparedImageStep(), SwapFileStep(), BootStep(driver), BootedKernelStep(), *link, *_test_steps()]


class AttachStrategy:
    """The node runs already: swaplab only drives the test and leaves it clean."""

    name = "attach"
    persistent = True

    def accepts(self, driver: NodeAccess) -> bool:
        return isinstance(driver, AlreadyRunning)

    def steps(self, driver: NodeAccess) -> list[Step[NodeContext]]:
        assert isinstance(driver, AlreadyRunning)
        return [
            ConnectStep(driver),
            ConsoleStep(driver),
            IdentifyKernelStep(),
            FitnessStep(),
            InstallToolStep(),
            SwapFileStep(),
            *_test_steps(),
        ]


STRATEGIES: tuple[Strategy, ...] = (BootStrategy(), AttachStrategy())


def strategy_for(driver: NodeAccess) -> Strategy:
    """The first strategy that accepts ``driver``."""
    for strategy in STRATEGIES:
        if strategy.accepts(driver):
            return strategy
    raise LookupError(f"no node strategy accepts the {type(driver).__name__} of node {driver.node.name}")


def node_pipeline(driver: NodeAccess) -> tuple[Pipeline[NodeContext], Strategy]:
    """The node pipeline for ``driver`` and the strategy that assembled it."""
    strategy = strategy_for(driver)
    return Pipeline(strategy.steps(driver)), strategy
