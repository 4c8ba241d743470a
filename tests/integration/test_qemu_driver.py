"""The QEMU driver against real qemu-system-x86_64 processes.

No Linux kernel is needed: a 1.5 KiB hand-made bzImage (a real-mode setup stub that
prints a marker on the serial port and halts) makes QEMU boot for real and idle cheaply.
"""

from __future__ import annotations

import os
import socket
import struct
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from model.lab import NfsRoute, NodeConfig
from tests.conftest import free_port, require_tools
from workers.drivers import make_driver
from workers.drivers.base import BootSpec, DriverError
from workers.drivers.qemu import QemuDriver
from workers.process import pid_alive

REPO = Path(__file__).resolve().parents[2]
MARKER = b"swaplab-idle"

pytestmark = pytest.mark.integration


@pytest.fixture(autouse=True)
def _lab_tools() -> None:
    # Skips on a bare developer machine; fails in CI (scripts/test sets SWAPLAB_REQUIRE_E2E).
    require_tools(("qemu-system-x86_64",))


def idle_bzimage() -> bytes:
    """A minimal boot-protocol-2.02 bzImage whose setup code prints MARKER, then halts."""
    img = bytearray(1536)
    img[0x1F1] = 1  # setup_sects: the setup code is the sector after the boot sector
    img[0x1FE:0x200] = b"\x55\xaa"
    img[0x202:0x206] = b"HdrS"
    struct.pack_into("<H", img, 0x206, 0x0202)  # protocol 2.02: initrd + cmdline
    code = bytearray(b"\xba\xf8\x03")  # mov dx, 0x3f8 (COM1)
    for ch in MARKER + b"\r\n":
        code += bytes([0xB0, ch, 0xEE])  # mov al, ch; out dx, al
    code += b"\xfa\xf4\xeb\xfd"  # cli; hlt; jmp back to hlt: idles without burning CPU
    img[0x200:0x202] = bytes([0xEB, 0x280 - 0x202])  # QEMU enters at 0x200: jump over header
    img[0x280 : 0x280 + len(code)] = code
    return bytes(img)


def _wait_for(check: Callable[[], bool], timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return True
        time.sleep(0.05)
    return False


@pytest.fixture
def boot(tmp_path: Path) -> BootSpec:
    kernel = tmp_path / "idle.bzimage"
    kernel.write_bytes(idle_bzimage())
    initrd = tmp_path / "initrd"
    initrd.write_bytes(b"\0" * 512)
    return BootSpec(kernel=kernel, initrd=initrd, cmdline="console=ttyS0", ram_mib=64, cpus=1)


@pytest.fixture
def node() -> NodeConfig:
    return NodeConfig(
        name="n1",
        lab="itest",
        driver="qemu",
        ram_mib=64,
        cpus=1,
        ssh_host="127.0.0.1",
        ssh_port=free_port(),
        options={},
    )


@pytest.fixture
def workdir(tmp_path: Path, node: NodeConfig) -> Iterator[Path]:
    path = tmp_path / "node"
    yield path
    # Clean up whatever a test left running, through the pid file like a later process.
    QemuDriver(node, path).power_off()


def test_guest_boots_forwards_ssh_and_powers_off(
    boot: BootSpec, node: NodeConfig, workdir: Path, tmp_path: Path
) -> None:
    driver = make_driver(node, workdir)
    console = tmp_path / "console.log"
    driver.power_on(boot, console)
    assert driver.is_running()
    assert driver.exit_reason() is None
    assert _wait_for(lambda: MARKER in console.read_bytes())
    assert driver.ssh_address() == ("127.0.0.1", node.ssh_port)
    with socket.create_connection(driver.ssh_address(), timeout=2):
        pass  # QEMU's hostfwd listens on 127.0.0.1:<ssh_port>
    pid = int((workdir / "qemu.pid").read_text())
    cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    assert b"swaplab-itest-n1" in cmdline and b"tcg" in cmdline
    assert b"virtio-rng-pci" in cmdline  # guest entropy: dropbear must not wait for the CRNG
    t0 = time.monotonic()
    driver.power_off()
    assert time.monotonic() - t0 < 6
    assert not driver.is_running() and not pid_alive(pid)
    assert driver.exit_reason() is not None
    driver.power_off()  # idempotent


def test_second_power_on_is_refused(boot: BootSpec, node: NodeConfig, workdir: Path, tmp_path: Path) -> None:
    driver = make_driver(node, workdir)
    driver.power_on(boot, tmp_path / "console.log")
    with pytest.raises(DriverError, match="already running"):
        QemuDriver(node, workdir).power_on(boot, tmp_path / "console2.log")


def test_garbage_kernel_fails_at_once(boot: BootSpec, node: NodeConfig, workdir: Path, tmp_path: Path) -> None:
    garbage = tmp_path / "garbage"
    garbage.write_bytes(os.urandom(4096))
    bad = BootSpec(garbage, boot.initrd, boot.cmdline, boot.ram_mib, boot.cpus)
    driver = make_driver(node, workdir)
    t0 = time.monotonic()
    with pytest.raises(DriverError, match="QEMU exited at start") as err:
        driver.power_on(bad, tmp_path / "console.log")
    assert time.monotonic() - t0 < 3
    assert "exit code 1" in str(err.value)
    assert not driver.is_running()
    reason = driver.exit_reason()
    assert reason is not None and "kernel" in reason  # QEMU's own stderr explains it


def test_taken_ssh_port_is_refused(boot: BootSpec, node: NodeConfig, workdir: Path, tmp_path: Path) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", node.ssh_port))
        sock.listen()
        with pytest.raises(DriverError, match=rf"n1.*{node.ssh_port}"):
            make_driver(node, workdir).power_on(boot, tmp_path / "console.log")


def test_missing_binary_names_the_package(boot: BootSpec, node: NodeConfig, workdir: Path, tmp_path: Path) -> None:
    odd = NodeConfig(**{**node.__dict__, "options": {"qemu_binary": "/nonexistent/qemu"}})
    with pytest.raises(DriverError, match="qemu-system-x86"):
        make_driver(odd, workdir).power_on(boot, tmp_path / "console.log")


def test_orphan_left_by_a_dead_process_is_powered_off(
    boot: BootSpec, node: NodeConfig, workdir: Path, tmp_path: Path
) -> None:
    # Another process powers the node on and exits: its QEMU lives on (own session).
    pid = power_on_elsewhere(node, boot, workdir, tmp_path / "console.log")
    assert pid_alive(pid)
    fresh = make_driver(node, workdir)
    assert fresh.is_running()
    fresh.power_off()
    assert _wait_for(lambda: not pid_alive(pid), 2)
    assert not fresh.is_running()


def test_recycled_pid_in_pid_file_is_not_killed(node: NodeConfig, workdir: Path) -> None:
    stranger = subprocess.Popen(["sleep", "60"])
    try:
        workdir.mkdir(parents=True)
        (workdir / "qemu.pid").write_text(f"{stranger.pid}\n")
        driver = make_driver(node, workdir)
        assert not driver.is_running()
        driver.power_off()
        assert stranger.poll() is None
    finally:
        stranger.kill()
        stranger.wait()


def _routed(node: NodeConfig, guest_address: str) -> NodeConfig:
    route = NfsRoute(node.name, 1, guest_address, 2049, "127.0.0.2", "127.0.0.1", free_port(), True)
    return NodeConfig(**{**node.__dict__, "nfs_route": route})


def test_qemu_takes_the_restricted_network_with_its_nfs_relay(
    boot: BootSpec, node: NodeConfig, workdir: Path, tmp_path: Path
) -> None:
    driver = make_driver(_routed(node, "10.0.2.100"), workdir)
    driver.power_on(boot, tmp_path / "console.log")
    assert driver.is_running()
    pid = int((workdir / "qemu.pid").read_text())
    [netdev] = [arg for arg in Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0") if arg.startswith(b"user,")]
    assert b",restrict=on," in netdev and b",guestfwd=tcp:10.0.2.100:2049-cmd:" in netdev
    with socket.create_connection(driver.ssh_address(), timeout=2):
        pass  # the SSH forward still comes in


def test_qemu_refuses_a_forward_to_its_host_address(
    boot: BootSpec, node: NodeConfig, workdir: Path, tmp_path: Path
) -> None:
    # Why the lab model refuses 10.0.2.2 as a QEMU lab's NFS address.
    with pytest.raises(DriverError, match="QEMU exited at start"):
        make_driver(_routed(node, "10.0.2.2"), workdir).power_on(boot, tmp_path / "console.log")


def power_on_elsewhere(node: NodeConfig, boot: BootSpec, workdir: Path, console: Path) -> int:
    """Power the node on from another process that exits at once (a worker that died);
    the guest's QEMU pid."""
    code = (
        "import sys; from pathlib import Path; "
        "from model.lab import NodeConfig; from workers.drivers.base import BootSpec; "
        "from workers.drivers.qemu import QemuDriver; "
        "n = NodeConfig('n1', 'itest', 'qemu', 64, 1, '127.0.0.1', int(sys.argv[1]), {}); "
        "b = BootSpec(Path(sys.argv[2]), Path(sys.argv[3]), 'console=ttyS0', 64, 1); "
        "QemuDriver(n, Path(sys.argv[4])).power_on(b, Path(sys.argv[5]))"
    )
    argv = [sys.executable, "-c", code, str(node.ssh_port), str(boot.kernel),
            str(boot.initrd), str(workdir), str(console)]  # fmt: skip
    subprocess.run(argv, cwd=REPO, check=True, timeout=30)
    return int((workdir / "qemu.pid").read_text())
