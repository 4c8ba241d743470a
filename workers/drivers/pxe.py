"""Bare metal as a node driver: a machine that boots from the lab's boot server, powered
through its BMC.

Powering on is: the run's kernel and initrd published for the machine's MAC on the boot
server (``workers.lab.boot_files``), the BMC told to boot from the network once, power on
(or cycled when it was on), the console followed over Serial-over-LAN into console.log —
then the node must ask for its boot files within ``boot_timeout_s`` and answer SSH at its
lab address. A BMC that does not answer within ``bmc_timeout_s`` and a node that never
asks are the lab's faults (infra-errors naming which). Once the node has fetched its
initrd, its script refuses a second boot: the kernel runs with ``panic=0`` (a panic waits
instead of rebooting), and a machine that reboots anyway finds nothing to boot.

"Running" is what the BMC reports; that the node answers is the pipeline's to find out.
The BMC's password comes from the source the inventory names and goes to pyghmi only:
never into argv, a log line, a progress line or a result.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable
from pathlib import Path

from model.lab import NodeConfig, PxeOptions
from model.runspec import BootRecord
from workers.bmc.base import Bmc, BmcCredentials, BmcError, BootDevice, PowerState
from workers.bmc.credentials import CredentialsError, load_credentials
from workers.bmc.ipmi import IpmiBmc
from workers.bmc.sol import SolConsole
from workers.drivers import register_driver
from workers.drivers.base import BootSpec, DriverError, MachineState
from workers.lab import boot_server
from workers.lab.boot_files import BootFilesError, Publication, Runner, fetched, publish, refuse_second_boot, withdraw

POLL_S = 1.0


class PxeDriver:
    """One machine that PXE-boots, under IPMI power control."""

    def __init__(self, node: NodeConfig, workdir: Path, bmc: Bmc | None = None) -> None:
        self.node = node
        self.workdir = workdir
        self.options = PxeOptions.model_validate(node.options)
        self._bmc = bmc
        self._console: SolConsole | None = None
        self._console_file: Path | None = None
        self._publication: Publication | None = None
        self._runner: Runner | None = None
        # What swaplab did through the BMC, in order (for the node's result).
        self.bmc_actions: list[str] = []
        self._last_error: str | None = None

    # -- the BMC ------------------------------------------------------------------------------
    def bmc(self) -> Bmc:
        if self._bmc is None:
            self._bmc = IpmiBmc(
                self.options.bmc_address, self._credentials(), self.options.bmc_port, self.options.bmc_timeout_s
            )
        return self._bmc

    def _credentials(self) -> BmcCredentials:
        try:
            return load_credentials(self.options.bmc_credentials, self.node.name, lab=self.node.lab)
        except CredentialsError as err:
            raise DriverError(f"node {self.node.name}: {err}") from None

    def _act(self, what: str, action: Callable[[], object]) -> None:
        try:
            action()
        except BmcError as err:
            self._last_error = str(err)
            raise DriverError(f"node {self.node.name}: BMC {self.options.bmc_address}: {what}: {err}") from None
        self.bmc_actions.append(what)

    # -- PowerControl ----------------------------------------------------------------------------
    def boot_record(self) -> BootRecord:
        pub = self._publication
        return BootRecord(
            path="pxe",
            mac=self.options.mac,
            kernel_sha256=pub.kernel_sha256 if pub else "",
            served_from=f"{pub.url}/runs/{pub.token}" if pub else "",
            bmc=f"{self.options.bmc} {self.options.bmc_address}:{self.options.bmc_port}",
            bmc_actions=list(self.bmc_actions)[:20],
        )

    def kernel_console_args(self) -> str:
        """The first serial port (what SOL carries), a panic that waits (no reboot loop), and
        the MAC of the NIC the node booted from, which its init brings up."""
        return f"console=ttyS0,115200n8 panic=0 swaplab.mac={self.options.mac}"

    def ssh_address(self) -> tuple[str, int]:
        return (self.node.ssh_host, self.node.ssh_port)

    def power_on(self, boot: BootSpec, console_log: Path) -> None:
        """Publish, boot from the network once, power on, follow SOL, wait for the boot file fetch."""
        bmc = self.bmc()
        state = self._state(bmc)
        self._publish(boot)
        self._act("next boot: network (PXE)", lambda: bmc.boot_next(BootDevice.PXE))
        self._start_console(console_log)
        if state is PowerState.ON:
            self._act("power cycle", bmc.power_cycle)
        else:
            self._act("power on", bmc.power_on)
        self._wait_for_fetch()

    def power_off(self) -> None:
        """Power off through the BMC, stop following SOL, withdraw the run's boot files."""
        try:
            if self._bmc is not None or self._publication is not None:
                self._act("power off", self.bmc().power_off)
        finally:
            if self._console is not None:
                self._console.stop()
                self._console = None
            self._withdraw()

    def link_alive(self) -> bool:
        """The node's kernel answers a TCP connection to its sshd port from the boot server,
        over the lab network (even a hung userspace leaves the kernel answering a SYN); False
        when nothing answers — a dead link or switch, or a kernel gone entirely."""
        route = self.node.nfs_route
        if route is None:
            return False
        probe = f"import socket; socket.create_connection(('{route.client_address}', 22), 5).close()"
        try:
            runner, _root, _url = boot_server.access(self.node.lab)
            return runner(f'python3 -c "{probe}"', None, 20.0).ok
        except Exception:  # a probe that cannot even run shows nothing alive
            return False

    def machine_state(self) -> MachineState:
        try:
            state = self.bmc().power_state()
        except (BmcError, DriverError) as err:
            self._last_error = str(err)
            return MachineState.UNKNOWN
        return MachineState.RUNNING if state is PowerState.ON else MachineState.STOPPED

    def exit_reason(self) -> str | None:
        if self._last_error is not None:
            return f"BMC {self.options.bmc_address}: {self._last_error}"
        return "the BMC reports power off" if self.machine_state() is MachineState.STOPPED else None

    # -- steps of power_on --------------------------------------------------------------------------
    def _state(self, bmc: Bmc) -> PowerState:
        try:
            return bmc.power_state()
        except BmcError as err:
            self._last_error = str(err)
            raise DriverError(
                f"node {self.node.name}: BMC {self.options.bmc_address} did not give the power state: {err}"
            ) from None

    def _publish(self, boot: BootSpec) -> None:
        try:
            runner, root, url = boot_server.access(self.node.lab)
            self._runner = runner
            self._publication = publish(
                runner, self.node.lab, self.node.name, self.options.mac, root, url, self.workdir.name,
                # A machine has the RAM it has: mem= gives the kernel the run's size of it.
                boot.kernel, boot.initrd, f"{boot.cmdline} mem={boot.ram_mib}M",
            )  # fmt: skip
        except BootFilesError as err:
            raise DriverError(f"node {self.node.name}: {err}") from None

    @property
    def publication(self) -> Publication | None:
        return self._publication

    def _start_console(self, console_log: Path) -> None:
        if self.options.console != "sol":
            return
        console_log.parent.mkdir(parents=True, exist_ok=True)
        handle = console_log.open("ab")

        def sink(data: bytes) -> None:
            handle.write(data)
            handle.flush()

        self._console = SolConsole(self.options.bmc_address, self.options.bmc_port, self._credentials(), sink)
        self._console.start()

    def _wait_for_fetch(self) -> None:
        pub, runner = self._publication, self._runner
        assert pub is not None and runner is not None
        deadline = time.monotonic() + self.options.boot_timeout_s
        while time.monotonic() < deadline:
            with contextlib.suppress(BootFilesError):
                if fetched(runner, pub):
                    refuse_second_boot(runner, pub)
                    return
            time.sleep(POLL_S)
        raise DriverError(
            f"node {self.node.name}: never asked the boot server for its boot files within "
            f"{self.options.boot_timeout_s} s (MAC {self.options.mac}; is it set to boot from the network?)"
        )

    def _withdraw(self) -> None:
        pub, runner = self._publication, self._runner
        if pub is None or runner is None:
            return
        try:
            withdraw(runner, pub)
        except BootFilesError as err:
            raise DriverError(f"node {self.node.name}: {err}") from None
        self._publication = None


@register_driver("pxe")
def _make_pxe(node: NodeConfig, workdir: Path) -> PxeDriver:
    return PxeDriver(node, workdir)
