"""The lab NFS server's VM: the server image booted in QEMU (TCG), reachable over SSH.

QEMU boots the image's own kernel and initrd (``-kernel``/``-initrd``, no bootloader)
with the root on a virtio disk. The disk is a qcow2 overlay in the VM's run directory
whose backing file is the cached ``disk.ext4``: the guest writes to the overlay only, so
the cached image stays as it was built and serves the next VM too. The overlay is thrown
away when the VM stops.

A data disk (``data.img``, sparse, ext4 labelled ``swaplab-data``, made by ``mke2fs`` on
the host without a mount) holds what the server keeps for nodes, their swap files; like
the overlay it lives in the run directory and goes when the VM stops.

The management path is QEMU user networking: DHCP gives the guest 10.0.2.15 and sshd is
forwarded to a port on 127.0.0.1 chosen at start; nothing is added to the host's network.
``restrict=on`` by default, as for the nodes: the guest then reaches neither the host
(10.0.2.2 would be the host's loopback, with its Redis and Prometheus) nor beyond. The
lab network is a second NIC: a tap passed as an open fd (``extra_netdev_args`` and
``pass_fds``).

A started VM outlives the process that started it (``swaplab lab up`` returns, workers
use the server): ``state.json`` in the run directory says its SSH port and image, and
``ServerVm.adopt`` gives another process the same VM to run commands on and to stop.

The sshd host key is pinned (the image recorded it at build time), never learnt on first
use. The serial console goes to ``console.log`` in the run directory, QEMU's own errors
to ``qemu.stderr``; a ``qemu.pid`` file lets a later process find and stop a VM left
behind by a crashed one. QEMU runs in its own session, so a Ctrl-C in the caller does
not kill the server behind its back.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import os
import re
import shutil
import signal
import subprocess
import time
from collections.abc import Sequence
from pathlib import Path
from types import TracebackType

from model.paths import cache_dir, private_dir
from workers.image import LabKeys
from workers.lab.server_image import MGMT_MAC, ServerImage, load_server_image
from workers.loopback import free_tcp_port
from workers.node_ssh import CommandResult, NodeShell, NodeUnreachable, SshTarget
from workers.process import cmdline, pid_alive, wait_gone

QEMU = "qemu-system-x86_64"
QEMU_IMG = "qemu-img"
DEFAULT_RAM_MIB = 512
READY_TIMEOUT_S = 300.0  # boot to SSH under TCG on a busy 2-core host, with margin
STOP_TIMEOUT_S = 60.0  # a clean poweroff under TCG
EARLY_EXIT_S = 1.5  # QEMU fails on options and port forwards within this
TERM_TIMEOUT_S = 5.0
START_ATTEMPTS = 3  # a free port can be taken between our probe and QEMU's bind
_POLL_S = 0.1
_NAME = re.compile(r"[a-z0-9][a-z0-9-]{0,31}")
_CONSOLE_TAIL_LINES = 25
DATA_LABEL = "swaplab-data"


class ServerVmError(RuntimeError):
    """The server VM could not start, did not answer, or would not stop; the message
    names the step and ends with the tail of the console or QEMU's stderr."""


def _tail(path: Path, lines: int = _CONSOLE_TAIL_LINES) -> str:
    try:
        text = path.read_text(errors="replace").rstrip()
    except OSError:
        return ""
    return "\n".join(text.splitlines()[-lines:])


class ServerVm:
    """One server VM: ``start()``, ``wait_ready()``, ``run()`` commands, ``stop()``.

    ``run_dir`` (default ``cache_dir("server-vms", name)``) holds the overlay, the
    console log, QEMU's stderr, its pid file and a known_hosts file for OpenSSH clients.
    """

    def __init__(
        self,
        image: ServerImage,
        keys: LabKeys,
        run_dir: Path | None = None,
        *,
        name: str = "nfs",
        ram_mib: int = DEFAULT_RAM_MIB,
        extra_netdev_args: Sequence[str] = (),
        pass_fds: Sequence[int] = (),
        restrict: bool = True,
        data_disk_mib: int | None = None,
    ) -> None:
        if not _NAME.fullmatch(name):
            raise ServerVmError(f"server VM name {name!r}: use lower-case letters, digits and '-'")
        self.image = image
        self.keys = keys
        self.name = name
        self.run_dir = (run_dir or cache_dir("server-vms", name)).absolute()
        self.ram_mib = ram_mib
        self.extra_netdev_args = list(extra_netdev_args)  # e.g. a lab tap: -netdev tap,fd=N -device ...
        self.pass_fds = tuple(pass_fds)  # the fds those arguments name, inherited by QEMU
        self.restrict = restrict
        self.data_disk_mib = data_disk_mib
        self.ssh_port: int | None = None
        self.boot_seconds: float | None = None  # start() to the first SSH command answered
        self._proc: subprocess.Popen[bytes] | None = None
        self._shell: NodeShell | None = None
        self._started = 0.0

    # ---------------------------------------------------------------- paths

    @property
    def vm_name(self) -> str:
        """QEMU's -name: also how a pid from the pid file is recognised as this VM."""
        return f"swaplab-server-{self.name}"

    @property
    def overlay(self) -> Path:
        return self.run_dir / "overlay.qcow2"

    @property
    def console_log(self) -> Path:
        return self.run_dir / "console.log"

    @property
    def stderr_path(self) -> Path:
        return self.run_dir / "qemu.stderr"

    @property
    def pid_path(self) -> Path:
        return self.run_dir / "qemu.pid"

    @property
    def known_hosts(self) -> Path:
        return self.run_dir / "known_hosts"

    @property
    def data_disk(self) -> Path:
        return self.run_dir / "data.img"

    @property
    def state_path(self) -> Path:
        return self.run_dir / "state.json"

    @classmethod
    def adopt(cls, keys: LabKeys, run_dir: Path, name: str) -> ServerVm | None:
        """The VM another process started in ``run_dir``, if it still runs (else None)."""
        try:
            state = json.loads((run_dir / "state.json").read_text())
            image = load_server_image(Path(state["image"]), "cached", time.monotonic())
            port = int(state["ssh_port"])
        except (OSError, ValueError, KeyError, TypeError):
            return None
        if image is None:
            return None
        vm = cls(image, keys, run_dir, name=name)
        vm.ssh_port = port
        return vm if vm.is_running() else None

    # ---------------------------------------------------------------- start

    def start(self) -> None:
        """Create the overlay and start QEMU on a free port; ServerVmError if it exits at once."""
        qemu = self._check_can_start()
        private_dir(self.run_dir)
        self.state_path.unlink(missing_ok=True)
        self._make_overlay()
        self._make_data_disk()
        self.console_log.unlink(missing_ok=True)
        for attempt in range(1, START_ATTEMPTS + 1):
            self.ssh_port = free_tcp_port()
            self._write_known_hosts()
            if self._launch(qemu):
                self._write_state()
                return
            stderr = _tail(self.stderr_path)
            # Only a lost race for the port is worth another try; anything else is for a person.
            port_race = "hostfwd" in stderr or "host forwarding" in stderr
            if not port_race or attempt == START_ATTEMPTS:
                self._discard_overlay()
                raise ServerVmError(f"server VM {self.name}: QEMU exited at start: {self._exit_status()}\n{stderr}")

    def _check_can_start(self) -> str:
        qemu = shutil.which(QEMU)
        if qemu is None or shutil.which(QEMU_IMG) is None:
            raise ServerVmError(
                f"{QEMU} or {QEMU_IMG} not found; install qemu-system-x86 and qemu-utils (scripts/setup)"
            )
        if self.is_running():
            raise ServerVmError(f"server VM {self.name}: already running (pid {self._pid()}); stop it first")
        for path in (self.image.disk, self.image.vmlinuz, self.image.initrd):
            if not path.is_file():
                raise ServerVmError(f"server VM {self.name}: {path} does not exist")
        if "," in str(self.run_dir) or "," in str(self.image.folder):
            # QEMU's option parser would split file=<path> at the comma.
            raise ServerVmError(f"server VM {self.name}: {self.run_dir} or {self.image.folder} contains ','")
        return qemu

    def _make_overlay(self) -> None:
        """A fresh copy-on-write layer over the cached disk (which QEMU then only reads)."""
        self.overlay.unlink(missing_ok=True)
        argv = [QEMU_IMG, "create", "-q", "-f", "qcow2", "-b", str(self.image.disk), "-F", "raw", str(self.overlay)]
        proc = subprocess.run(argv, capture_output=True, text=True, check=False)
        if proc.returncode != 0:
            raise ServerVmError(f"server VM {self.name}: qemu-img create failed: {proc.stderr.strip()[-800:]}")
        self.overlay.chmod(0o600)

    def _make_data_disk(self) -> None:
        """A sparse ext4 file system for the guest's data, made without mounting it."""
        self.data_disk.unlink(missing_ok=True)
        if self.data_disk_mib is None:
            return
        with self.data_disk.open("wb") as disk:
            disk.truncate(self.data_disk_mib << 20)
        self.data_disk.chmod(0o600)
        argv = ["mke2fs", "-q", "-F", "-t", "ext4", "-L", DATA_LABEL, "-m", "0", str(self.data_disk)]
        proc = subprocess.run(argv, capture_output=True, text=True, check=False)
        if proc.returncode != 0:
            raise ServerVmError(f"server VM {self.name}: mke2fs of the data disk failed: {proc.stderr.strip()[-800:]}")

    def _write_state(self) -> None:
        """What another process needs to adopt this VM (its pid is in the pid file)."""
        state = {"ssh_port": self.ssh_port, "image": str(self.image.folder)}
        self.state_path.write_text(json.dumps(state) + "\n")

    def _write_known_hosts(self) -> None:
        """The pinned host key for OpenSSH clients (``ssh_argv``), at this start's port."""
        line = f"[127.0.0.1]:{self.ssh_port} {self.image.host_key}\n"
        self.known_hosts.write_text(line)

    def argv(self, qemu: str = QEMU) -> list[str]:
        """The QEMU command line (an argv list, never a shell string)."""
        netdev = f"user,id=mgmt,restrict={'on' if self.restrict else 'off'},hostfwd=tcp:127.0.0.1:{self.ssh_port}-:22"
        return [
            qemu,
            "-accel", "tcg",
            "-name", self.vm_name,
            "-m", f"{self.ram_mib}M",
            "-smp", "1",
            "-display", "none",
            # panic=-1 on the command line reboots at once, which this turns into QEMU
            # exiting: a panicked server is seen as gone, not as one that never answers.
            "-no-reboot",
            "-kernel", str(self.image.vmlinuz),
            "-initrd", str(self.image.initrd),
            "-append", self.image.cmdline,
            "-drive", f"file={self.overlay},if=virtio,format=qcow2",
            *(["-drive", f"file={self.data_disk},if=virtio,format=raw"] if self.data_disk_mib else []),
            "-serial", f"file:{self.console_log}",
            "-monitor", "none",
            "-netdev", netdev,
            # romfile= skips the iPXE option ROM: the guest boots -kernel, not PXE.
            "-device", f"virtio-net-pci,netdev=mgmt,mac={MGMT_MAC},romfile=",
            # Host entropy, so sshd's first start does not wait for the guest's CRNG.
            "-device", "virtio-rng-pci",
            "-pidfile", str(self.pid_path),
            *self.extra_netdev_args,
        ]  # fmt: skip

    def _launch(self, qemu: str) -> bool:
        """Start QEMU; False when it exited within EARLY_EXIT_S."""
        self.pid_path.unlink(missing_ok=True)
        with self.stderr_path.open("wb") as err:
            self._proc = subprocess.Popen(
                self.argv(qemu), stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=err,
                start_new_session=True, pass_fds=self.pass_fds,
            )  # fmt: skip
        self._started = time.monotonic()
        deadline = self._started + EARLY_EXIT_S
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                return False
            time.sleep(0.05)
        return True

    # ---------------------------------------------------------------- SSH

    def target(self) -> SshTarget:
        """How to log in: root with the lab's key, the image's host key pinned."""
        if self.ssh_port is None:
            raise ServerVmError(f"server VM {self.name}: not started")
        return SshTarget(
            host="127.0.0.1",
            port=self.ssh_port,
            key_file=self.keys.client_private,
            host_key=self.image.host_key,
        )

    def wait_ready(self, timeout: float = READY_TIMEOUT_S) -> float:
        """Wait until sshd runs a command; the seconds from start to then.

        ServerVmError, with the console's last lines, when QEMU exits meanwhile or the
        guest does not answer within ``timeout``.
        """
        target = self.target()
        try:
            self._shell = NodeShell.wait_ready(target, time.monotonic() + timeout, self.is_running)
        except NodeUnreachable as err:
            if not self.is_running():
                why = f"QEMU exited while the guest booted ({self._exit_status()})"
            else:
                why = f"no SSH answer within {timeout:.0f} s ({err})"
            raise ServerVmError(
                f"server VM {self.name}: {why}\n--- {self.console_log} ---\n{_tail(self.console_log)}"
            ) from err
        self.boot_seconds = round(time.monotonic() - self._started, 1)
        return self.boot_seconds

    def run(self, command: str, timeout: float = 60.0, stdin: bytes | None = None) -> CommandResult:
        """Run a short command as root (over wait_ready's session, or a new one for an
        adopted VM); NodeUnreachable when the VM does not answer."""
        if self._shell is None:
            if self.ssh_port is None or not self.is_running():
                raise ServerVmError(f"server VM {self.name}: not running")
            self._shell = NodeShell.connect(self.target())
        return self._shell.run(command, timeout=timeout, stdin=stdin)

    def close(self) -> None:
        """Close this process's session (the VM keeps running)."""
        if self._shell is not None:
            self._shell.close()
            self._shell = None

    def ssh_argv(self, *command: str) -> list[str]:
        """An OpenSSH client command line for this VM (for people, Ansible and tests)."""
        target = self.target()
        return [
            "ssh", "-i", str(self.keys.client_private), "-p", str(target.port),
            "-o", "BatchMode=yes", "-o", "IdentitiesOnly=yes",
            "-o", "StrictHostKeyChecking=yes", "-o", f"UserKnownHostsFile={self.known_hosts}",
            f"{target.user}@{target.host}", *command,
        ]  # fmt: skip

    def ansible_vars(self) -> dict[str, str]:
        """The inventory variables Ansible reaches this VM with: the same key, user and
        pinned host key as ``ssh_argv`` (never ``StrictHostKeyChecking=no``)."""
        target = self.target()
        return {
            "ansible_host": target.host,
            "ansible_port": str(target.port),
            "ansible_user": target.user,
            "ansible_ssh_private_key_file": str(self.keys.client_private),
            "ansible_ssh_common_args": (
                f"-o IdentitiesOnly=yes -o StrictHostKeyChecking=yes -o UserKnownHostsFile={self.known_hosts}"
            ),
            "ansible_python_interpreter": "/usr/bin/python3",
        }

    # ---------------------------------------------------------------- state and stop

    def is_running(self) -> bool:
        """True while this VM's QEMU process is alive."""
        return self._pid() is not None

    @property
    def pid(self) -> int | None:
        """The live QEMU process of this VM, or None."""
        return self._pid()

    def _pid(self) -> int | None:
        """The live QEMU of this VM: our child, or the one named in the pid file."""
        if self._proc is not None and self._proc.poll() is None:
            return self._proc.pid
        try:
            pid = int(self.pid_path.read_text().strip())
        except (OSError, ValueError):
            return None
        return pid if self._is_ours(pid) else None

    def _is_ours(self, pid: int) -> bool:
        """Guard against a recycled pid: only a QEMU with this VM's name and pid file."""
        if not pid_alive(pid):
            return False
        pairs = set(itertools.pairwise(cmdline(pid)))
        return ("-name", self.vm_name) in pairs and ("-pidfile", str(self.pid_path)) in pairs

    def _exit_status(self) -> str:
        if self._proc is None or self._proc.returncode is None:
            return "not started by this process"
        code = self._proc.returncode
        return f"killed by signal {-code}" if code < 0 else f"exit code {code}"

    def stop(self, timeout: float = STOP_TIMEOUT_S) -> None:
        """Power the guest off (over SSH), SIGTERM then SIGKILL if it is still there after
        ``timeout``; then drop the overlay. A no-op when the VM is not running."""
        pid = self._pid()
        if pid is not None and not (self._poweroff() and self._wait_gone(pid, timeout)):
            self._kill(pid)
        self.close()
        if self._proc is not None:
            self._proc.wait()  # reap our child
        self.pid_path.unlink(missing_ok=True)
        self.state_path.unlink(missing_ok=True)
        self._discard_overlay()

    def _poweroff(self) -> bool:
        """Ask systemd to power off; False when there is no session to ask over."""
        if self._shell is None and self.ssh_port is not None:
            with contextlib.suppress(NodeUnreachable, OSError):
                self._shell = NodeShell.connect(self.target())  # an adopted VM
        if self._shell is None:
            return False
        # The session may drop before the answer comes: that is the poweroff working.
        with contextlib.suppress(NodeUnreachable):
            self._shell.run("systemctl poweroff", timeout=10.0)
        return True

    def _kill(self, pid: int) -> None:
        for sig, wait_s in ((signal.SIGTERM, TERM_TIMEOUT_S), (signal.SIGKILL, TERM_TIMEOUT_S)):
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                return
            if self._wait_gone(pid, wait_s):
                return
        raise ServerVmError(f"server VM {self.name}: QEMU pid {pid} survived SIGKILL")

    def _wait_gone(self, pid: int, timeout: float) -> bool:
        return wait_gone(pid, timeout, self._proc, _POLL_S)

    def _discard_overlay(self) -> None:
        self.overlay.unlink(missing_ok=True)
        self.data_disk.unlink(missing_ok=True)

    def __enter__(self) -> ServerVm:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()
