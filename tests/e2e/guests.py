"""A QEMU guest booted by swaplab's own driver for a test, and root's shell on it over SSH
with the lab's pinned host key: what a hostile kernel's root could do, tried for real."""

from __future__ import annotations

import base64
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import paramiko

from model.lab import NodeConfig
from workers.drivers.base import BootSpec
from workers.drivers.qemu import QemuDriver
from workers.image import LabKeys, NodeImage

BOOT_TIMEOUT_S = 180.0


class Guest:
    """A booted node; ``sh`` runs a command as root and answers (exit status, stdout)."""

    def __init__(self, driver: QemuDriver, keys: LabKeys, console: Path) -> None:
        self.driver, self.keys, self.console = driver, keys, console
        self.client: paramiko.SSHClient | None = None

    def connect(self) -> None:
        client = paramiko.SSHClient()
        key_type, blob = self.keys.host_public.split()[:2]
        host, port = self.driver.ssh_address()
        client.get_host_keys().add(f"[{host}]:{port}", key_type, paramiko.Ed25519Key(data=base64.b64decode(blob)))
        client.set_missing_host_key_policy(paramiko.RejectPolicy())
        client.connect(host, port=port, username="root", key_filename=str(self.keys.client_private),
                       look_for_keys=False, allow_agent=False, timeout=20)  # fmt: skip
        self.client = client

    def sh(self, command: str, timeout: float = 60) -> tuple[int, str]:
        assert self.client is not None
        _stdin, stdout, _stderr = self.client.exec_command(command, timeout=timeout)
        out = stdout.read().decode(errors="replace")
        return stdout.channel.recv_exit_status(), out

    def console_text(self) -> str:
        return self.console.read_text(errors="replace") if self.console.exists() else ""


@contextmanager
def booted_guest(
    node: NodeConfig, image: NodeImage, keys: LabKeys, where: Path, ram_mib: int, guest: type[Guest] = Guest
) -> Iterator[Guest]:
    """``node`` booted from ``image`` until its init says it is ready, logged in; powered off after."""
    driver = QemuDriver(node, where)
    console = where / "console.log"
    cmdline = (
        f"{driver.kernel_console_args()} printk.time=1 mitigations=off zswap.enabled=0 "
        f"swaplab.hostname={node.name} swaplab.nfs4_id={node.lab}-{node.name}-{time.time_ns()}"
    )
    driver.power_on(BootSpec(image.kernel, image.initrd, cmdline, ram_mib, 1), console)
    the_guest = guest(driver, keys, console)
    try:
        deadline = time.monotonic() + BOOT_TIMEOUT_S
        while "swaplab: ready" not in the_guest.console_text():
            assert driver.is_running(), f"guest exited: {driver.exit_reason()}"
            assert time.monotonic() < deadline, the_guest.console_text()[-3000:]
            time.sleep(0.5)
        the_guest.connect()
        yield the_guest
    finally:
        if the_guest.client is not None:
            the_guest.client.close()
        driver.power_off()
