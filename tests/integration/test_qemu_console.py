"""A real QEMU guest in a WARN loop on its serial port: console.log stays under its cap
(measured while it prints), with the head and the tail; and when the worker that reads
the console dies, the guest runs on (its output is dropped, nothing waits for a reader).

No Linux kernel: a hand-made bzImage whose setup code prints one head line, then a WARN
line forever (as ``test_qemu_driver.py`` does for its idle guest).
"""

from __future__ import annotations

import struct
import time
from collections.abc import Iterator
from contextlib import suppress
from pathlib import Path

import pytest

from model.lab import NodeConfig
from tests.conftest import free_port, require_tools
from tests.integration.test_qemu_driver import power_on_elsewhere
from workers import console_log
from workers.console_log import ConsoleLog, read_head_tail
from workers.drivers.base import BootSpec
from workers.drivers.qemu import QemuDriver
from workers.process import pid_alive

pytestmark = [pytest.mark.integration, pytest.mark.timeout(60)]

REPO = Path(__file__).resolve().parents[2]
HEAD_LINE = b"[    0.00] swaplab-head"
WARN_LINE = b"[    1.00] WARNING: CPU: 0 PID: 1 at loop"
SMALL = 16 * 1024  # head and tail kept, so the cap is reached in a second of printing
GUEST_LINES = 20_000  # ~0.9 MB of WARN lines, then the guest resets


def warn_loop_bzimage(lines: int) -> bytes:
    """A boot-protocol-2.02 bzImage whose setup code prints HEAD_LINE, then WARN_LINE
    ``lines`` times, waiting before each character until the UART can take it (as Linux's
    8250 console does), then resets the machine (QEMU exits: ``-no-reboot``)."""
    img = bytearray(1536)
    img[0x1F1] = 1  # setup_sects: the setup code is the sector after the boot sector
    img[0x1FE:0x200] = b"\x55\xaa"
    img[0x202:0x206] = b"HdrS"
    struct.pack_into("<H", img, 0x206, 0x0202)
    text = HEAD_LINE + b"\r\n" + WARN_LINE + b"\r\n\0"
    warn_at = 0x080 + len(HEAD_LINE) + 2
    img[0x080 : 0x080 + len(text)] = text  # DS is the image's base when the setup code runs
    code = bytes.fromhex(
        "fc"  # cld: lodsb counts up
        + "b9"
        + struct.pack("<H", lines).hex()  # mov cx, lines
        + "be8000"  # mov si, 0x080: the head line, then the first WARN line
        + "ac84c07412"  # next: lodsb; test al, al; jz line_done
        + "88c3bafd03eca82074fbbaf80388d8ee"  # bl = al; wait for THRE at 0x3fd; out 0x3f8, bl
        + "ebe9"  # jmp next
        + "be"
        + struct.pack("<H", warn_at).hex()  # line_done: mov si, WARN_LINE
        + "e2e4"  # loop next
        + "b0fee664"  # out 0x64, 0xfe: reset through the keyboard controller
        + "f4ebfd"  # hlt; jmp back to hlt
    )
    img[0x200:0x202] = bytes([0xEB, 0x280 - 0x202])  # QEMU enters at 0x200: jump over header
    img[0x280 : 0x280 + len(code)] = code
    return bytes(img)


def _boot(tmp_path: Path, lines: int) -> BootSpec:
    require_tools(("qemu-system-x86_64",))
    kernel = tmp_path / "warn.bzimage"
    kernel.write_bytes(warn_loop_bzimage(lines))
    initrd = tmp_path / "initrd"
    initrd.write_bytes(b"\0" * 512)
    return BootSpec(kernel=kernel, initrd=initrd, cmdline="console=ttyS0", ram_mib=64, cpus=1)


@pytest.fixture
def node() -> NodeConfig:
    return NodeConfig("n1", "itest", "qemu", 64, 1, "127.0.0.1", free_port(), {})


@pytest.fixture
def workdir(tmp_path: Path, node: NodeConfig) -> Iterator[Path]:
    path = tmp_path / "node"
    yield path
    QemuDriver(node, path).power_off()  # whatever a test left running, through the pid file


def test_a_guest_in_a_warn_loop_keeps_its_console_under_the_cap(
    node: NodeConfig, workdir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    boot = _boot(tmp_path, 0xFFFF)
    monkeypatch.setattr(console_log, "HEAD_BYTES", SMALL)
    monkeypatch.setattr(console_log, "TAIL_BYTES", SMALL)
    console = tmp_path / "console.log"
    driver = QemuDriver(node, workdir)
    driver.power_on(boot, console)
    log = ConsoleLog.find(console)
    assert log is not None
    sizes: list[int] = []
    deadline = time.monotonic() + 20
    while True:  # sample at least once: a fast guest may be past the mark at the first look
        with suppress(OSError):  # between a rewrite's rename and the next stat
            sizes.append(console.stat().st_size)
        if log.cut_bytes >= 20 * SMALL and sizes:  # the guest printed far more than the cap
            break
        assert time.monotonic() < deadline, f"the guest printed too little: {log.cut_bytes} bytes cut"
        time.sleep(0.01)
    driver.power_off()
    assert max(sizes) <= log.disk_bytes_max and console.stat().st_size <= log.disk_bytes_max
    text = read_head_tail(console)
    assert text.startswith(HEAD_LINE.decode())
    assert "bytes of console left out here" in text
    assert text.rstrip().splitlines()[-2].strip() == WARN_LINE.decode()  # the tail: still the loop


def test_a_guest_whose_worker_died_is_not_held_by_its_console(node: NodeConfig, workdir: Path, tmp_path: Path) -> None:
    boot = _boot(tmp_path, GUEST_LINES)
    # A worker powers the guest on and dies at once: nobody reads the console socket.
    pid = power_on_elsewhere(node, boot, workdir, tmp_path / "console.log")
    # The guest waits for its UART before every character, as Linux does: it gets through
    # all its lines (and resets, which ends QEMU) only if nothing holds the UART for a reader.
    deadline = time.monotonic() + 20
    while pid_alive(pid):
        assert time.monotonic() < deadline, "the guest is held by a console nobody reads"
        time.sleep(0.05)
