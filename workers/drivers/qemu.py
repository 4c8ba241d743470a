"""QEMU (TCG) as a node driver: one diskless guest per node on this host.

The guest boots ``-kernel``/``-initrd`` directly, sends its serial console to the worker
(a socket pair, read into a bounded console.log by ``workers.console_log``), and
has QEMU user networking with ``restrict=on``: nothing of the host or beyond is reachable
from inside except the NFS address, which a ``guestfwd`` relays per connection to the lab's
server from the node's own 127.0.0.N (``workers.lab.nfs.relay``); its sshd is forwarded to
127.0.0.1:<ssh_port>. QEMU runs in its own session so a Ctrl-C
in the CLI does not kill guests behind the orchestrator's back; its pid file lets a later
process find and power off a guest left behind by a crashed worker.

A node of a lab network (``knfsd`` labs) has a second NIC on the lab's bridge: its tap,
opened inside the lab's namespace and handed to QEMU as an fd, with the MAC the lab's
anti-spoofing rules admit on that port; NFS goes over it, SSH stays on user networking.
Every guest has a QMP socket in a 0700 directory of its own (``qmp_path``), through which
faults pause and resume it.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

from model.lab import NodeConfig
from model.paths import private_dir
from model.runspec import BootRecord
from workers.console_log import SocketConsole
from workers.drivers import register_driver
from workers.drivers.base import BootSpec, DriverError, MachineState
from workers.lab import network
from workers.lab.nfs.relay import RelayError, relay_command
from workers.loopback import port_free
from workers.process import cmdline, pid_alive, wait_gone

DEFAULT_BINARY = "qemu-system-x86_64"
# KVM hangs or aborts with stock kernels on these hosts (see the local lab recipe).
DEFAULT_ACCEL = "tcg"
EARLY_EXIT_S = 1.0
TERM_TIMEOUT_S = 5.0
POLL_S = 0.05
QMP_ROOT = Path("/run/swaplab/qmp")  # short: a unix socket path has at most 107 bytes


def _tail(path: Path, lines: int = 15) -> str:
    try:
        text = path.read_text(errors="replace").strip()
    except OSError:
        return ""
    return "\n".join(text.splitlines()[-lines:])


def _signal_name(signum: int) -> str:
    try:
        return signal.Signals(signum).name
    except ValueError:
        return f"signal {signum}"


class QemuDriver:
    """One node as a local QEMU guest."""

    def __init__(self, node: NodeConfig, workdir: Path) -> None:
        self.node = node
        self.workdir = workdir
        self.binary = str(node.options.get("qemu_binary", DEFAULT_BINARY))
        self.accel = str(node.options.get("accel", DEFAULT_ACCEL))
        self._proc: subprocess.Popen[bytes] | None = None
        self._console: SocketConsole | None = None
        self._console_fd = -1  # QEMU's end of the console socket pair, while it starts
        self._tap_fd = -1  # the lab network's tap, while QEMU starts

    @property
    def vm_name(self) -> str:
        return f"swaplab-{self.node.lab}-{self.node.name}"

    @property
    def pid_path(self) -> Path:
        return self.workdir / "qemu.pid"

    @property
    def stderr_path(self) -> Path:
        return self.workdir / "qemu.stderr"

    @property
    def relay_log_path(self) -> Path:
        """One line per NFS connection the guest's relay made (or could not make)."""
        return self.workdir / "nfs-relay.log"

    def netdev(self) -> str:
        """User networking the guest cannot leave: its sshd forward in, its NFS relay out.

        ``restrict=on`` cuts the guest off from the host (10.0.2.2 is no way to 127.0.0.1)
        and beyond; a ``guestfwd`` ``cmd:`` starts the relay per connection, so a restarted
        NFS server is reached again (the ``tcp:`` form connects once, at QEMU's start).
        """
        parts = ["user", "id=n0", "restrict=on", f"hostfwd=tcp:127.0.0.1:{self.node.ssh_port}-:22"]
        route = self.node.nfs_route
        if route is not None and route.relayed:
            try:
                command = relay_command(
                    sys.executable, route.client_address, route.server_address, route.server_port,
                    self.relay_log_path.absolute(),
                )  # fmt: skip
            except RelayError as err:
                raise DriverError(f"node {self.node.name}: {err}") from err
            parts.append(f"guestfwd=tcp:{route.mount_address}:{route.mount_port}-cmd:{command}")
        return ",".join(parts)

    @property
    def qmp_path(self) -> Path:
        """The guest's QMP socket (in a 0700 directory: QMP can do anything to the VM)."""
        return QMP_ROOT / self.vm_name / "qmp.sock"

    def lab_nic_args(self) -> list[str]:
        """The NIC on the lab's bridge (its tap is open as ``_tap_fd``), or none."""
        route = self.node.nfs_route
        if route is None or not route.lab_network:
            return []
        port, _net = network.node_port(self.node.lab, route)
        return [
            "-netdev", f"tap,id=lab,fd={self._tap_fd}",
            "-device", f"virtio-net-pci,netdev=lab,mac={port.mac},romfile=",
        ]  # fmt: skip

    def _open_lab_tap(self) -> None:
        route = self.node.nfs_route
        if route is None or not route.lab_network:
            return
        try:
            port, net = network.node_port(self.node.lab, route)
            self._tap_fd = network.open_tap(net, port, inheritable=True)
        except (network.LabNetworkError, ValueError) as err:
            raise DriverError(f"node {self.node.name}: lab network of {self.node.lab}: {err}") from err

    def ssh_address(self) -> tuple[str, int]:
        """Where the guest's forwarded sshd answers."""
        return ("127.0.0.1", self.node.ssh_port)

    def boot_record(self) -> BootRecord:
        """Booted from the host's files with -kernel/-initrd."""
        return BootRecord(path="qemu -kernel")

    def kernel_console_args(self) -> str:
        """Serial console on ttyS0; panic=-1 reboots at once, which -no-reboot turns into QEMU exiting."""
        return "console=ttyS0 panic=-1"

    def machine_state(self) -> MachineState:
        """RUNNING while this node's QEMU process lives, else STOPPED."""
        return MachineState.RUNNING if self.is_running() else MachineState.STOPPED

    def argv(self, boot: BootSpec, console_log: Path, binary: str) -> list[str]:
        """The QEMU command line (an argv list, never a shell string)."""
        fwd = self.netdev()
        return [
            binary,
            "-accel", self.accel,
            "-name", self.vm_name,
            "-m", f"{boot.ram_mib}M",
            "-smp", str(boot.cpus),
            "-display", "none",
            "-no-reboot",
            "-kernel", str(boot.kernel),
            "-initrd", str(boot.initrd),
            "-append", boot.cmdline,
            # The worker reads the serial port and keeps console.log bounded (a WARN loop
            # fills no disk); when the worker dies the socket closes and QEMU drops output.
            "-chardev", f"socket,id=console0,fd={self._console_fd}",
            "-serial", "chardev:console0",
            "-monitor", "none",
            "-netdev", fwd,
            # romfile= skips the iPXE option ROM: we boot -kernel, not PXE.
            "-device", "virtio-net-pci,netdev=n0,romfile=",
            # Host entropy for the guest's CRNG: dropbear otherwise waited for it at first login.
            "-device", "virtio-rng-pci",
            "-pidfile", str(self.pid_path),
            "-qmp", f"unix:{self.qmp_path},server=on,wait=off",
            *self.lab_nic_args(),
            *self.clock_args(boot),
        ]  # fmt: skip

    @staticmethod
    def clock_args(boot: BootSpec) -> list[str]:
        """Guest time: a fixed instruction-counter shift; sleep=on lets an idle guest (waiting
        on NFS) see real time pass instead of jumping its clock over the wait."""
        if boot.icount_shift is None:
            return []
        return ["-icount", f"shift={boot.icount_shift},sleep=on"]

    def power_on(self, boot: BootSpec, console_log: Path) -> None:
        """Start the guest; DriverError if QEMU cannot start or exits at once."""
        binary = self._check_can_start(boot, console_log)
        self.workdir.mkdir(parents=True, exist_ok=True)
        console_log.parent.mkdir(parents=True, exist_ok=True)
        self.pid_path.unlink(missing_ok=True)
        private_dir(self.qmp_path.parent)
        self.qmp_path.unlink(missing_ok=True)
        self._open_lab_tap()
        self._console = console = SocketConsole(console_log)
        self._console_fd = console.program_fd()
        fds = (self._console_fd, *([self._tap_fd] if self._tap_fd >= 0 else []))
        try:
            with self.stderr_path.open("wb") as err:
                self._proc = subprocess.Popen(
                    self.argv(boot, console_log.absolute(), binary),
                    stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=err,
                    start_new_session=True, pass_fds=fds,
                )  # fmt: skip
        finally:
            console.start()  # QEMU has its end (or never started): ours is read from now on
            if self._tap_fd >= 0:
                os.close(self._tap_fd)  # QEMU holds its own copy now
                self._tap_fd = -1
        self._wait_past_early_exit()

    def _check_can_start(self, boot: BootSpec, console_log: Path) -> str:
        node, port = self.node.name, self.node.ssh_port
        binary = shutil.which(self.binary)
        if binary is None:
            raise DriverError(f"node {node}: {self.binary} not found; install the Debian package qemu-system-x86")
        if self.is_running():
            raise DriverError(f"node {node}: already running (pid {self._pid()}); power off first")
        for label, path in (("kernel", boot.kernel), ("initrd", boot.initrd)):
            if not path.is_file():
                raise DriverError(f"node {node}: {label} {path} does not exist")
        if "," in str(console_log):
            # QEMU's option parser would split -serial file:<path> at the comma.
            raise DriverError(f"node {node}: console log path {console_log} contains ','")
        if not port_free(port):
            raise DriverError(
                f"node {node}: SSH port 127.0.0.1:{port} is already in use; give the node a free ssh_port"
            )
        return binary

    def _wait_past_early_exit(self) -> None:
        """Fail now if QEMU dies at once (bad kernel, option error, port race)."""
        assert self._proc is not None
        deadline = time.monotonic() + EARLY_EXIT_S
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                raise DriverError(f"node {self.node.name}: QEMU exited at start: {self.exit_reason()}")
            time.sleep(POLL_S)

    def _pid(self) -> int | None:
        """The live QEMU of this node: our child, or the one named in the pid file."""
        if self._proc is not None and self._proc.poll() is None:
            return self._proc.pid
        try:
            pid = int(self.pid_path.read_text().strip())
        except (OSError, ValueError):
            return None
        return pid if self._is_our_qemu(pid) else None

    def _is_our_qemu(self, pid: int) -> bool:
        """Guard against a recycled pid: only kill a QEMU with this node's name and pid file."""
        if not pid_alive(pid):
            return False
        args = cmdline(pid)
        pairs = set(itertools.pairwise(args))
        return ("-name", self.vm_name) in pairs and ("-pidfile", str(self.pid_path)) in pairs

    def is_running(self) -> bool:
        """True while this node's QEMU process is alive."""
        return self._pid() is not None

    def exit_reason(self) -> str | None:
        """Exit status and stderr tail once QEMU stopped; None while it runs."""
        if self.is_running():
            return None
        if self._proc is None:
            status = "not running (no QEMU process of this node found)"
        elif (code := self._proc.returncode) is not None and code < 0:
            status = f"killed by {_signal_name(-code)}"
        else:
            status = f"exit code {code}"
        stderr = _tail(self.stderr_path)
        return f"{status}; stderr: {stderr}" if stderr else status

    def power_off(self) -> None:
        """SIGTERM, SIGKILL after TERM_TIMEOUT_S; no-op when the guest is not running."""
        pid = self._pid()
        if pid is not None:
            self._kill(pid)
        if self._proc is not None:
            self._proc.wait()  # reap our child so exit_reason sees its status
        if self._console is not None:
            self._console.stop()  # QEMU is gone: the last of its output, then console.log is final
        self.pid_path.unlink(missing_ok=True)
        self.qmp_path.unlink(missing_ok=True)
        with contextlib.suppress(OSError):  # gone already, or not ours to remove
            self.qmp_path.parent.rmdir()

    def _kill(self, pid: int) -> None:
        for sig, timeout in ((signal.SIGTERM, TERM_TIMEOUT_S), (signal.SIGKILL, 5.0)):
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                return
            if self._wait_gone(pid, timeout):
                return
        raise DriverError(f"node {self.node.name}: QEMU pid {pid} survived SIGKILL")

    def _wait_gone(self, pid: int, timeout: float) -> bool:
        return wait_gone(pid, timeout, self._proc, POLL_S)


@register_driver("qemu")
def _make_qemu(node: NodeConfig, workdir: Path) -> QemuDriver:
    return QemuDriver(node, workdir)
