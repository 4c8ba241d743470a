"""A real node image boots a stock Debian kernel in QEMU and answers SSH with pinned keys.

Fetches the host suite's ``linux-image-amd64`` (cached after the first run), builds the
initramfs, boots it under TCG and logs in with paramiko. This proves the image only; the
product's QEMU driver and NFS server have their own tests.
"""

from __future__ import annotations

import base64
import gzip
import shutil
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import paramiko
import pytest

from model.kernel import KernelSource
from tests.conftest import free_port, require_tools
from workers.image import LabKeys, NodeImage, build_node_image, lab_keys
from workers.kernel import fetch_kernel, module_load_order

pytestmark = pytest.mark.integration


@pytest.fixture(autouse=True)
def _lab_tools() -> None:
    # Skips on a bare developer machine; fails in CI (scripts/test sets SWAPLAB_REQUIRE_E2E).
    require_tools(("qemu-system-x86_64",))


READY = "swaplab: ready hostname=t1 kver="
BOOT_TIMEOUT_S = 90


@pytest.fixture(scope="module")
def keys() -> LabKeys:
    return lab_keys("itest")


@pytest.fixture(scope="module")
def image(keys: LabKeys) -> NodeImage:
    kernel = fetch_kernel(KernelSource(package="linux-image-amd64"), print)
    return build_node_image(kernel, keys, print)


def _wait_for_console(log: Path, marker: str, qemu: subprocess.Popen[bytes]) -> str:
    deadline = time.monotonic() + BOOT_TIMEOUT_S
    while time.monotonic() < deadline:
        text = log.read_text(errors="replace") if log.exists() else ""
        if marker in text:
            return text
        assert qemu.poll() is None, f"QEMU exited early:\n{text[-3000:]}"
        time.sleep(0.25)
    raise AssertionError(f"no {marker!r} within {BOOT_TIMEOUT_S}s:\n{text[-3000:]}")


@dataclass(frozen=True)
class Guest:
    port: int
    console: Path
    started: float
    qemu: subprocess.Popen[bytes]


@pytest.fixture()
def booted(image: NodeImage, tmp_path: Path) -> Iterator[Guest]:
    """A running guest with its SSH port forwarded to 127.0.0.1."""
    port = free_port()
    console = tmp_path / "console.log"
    append = "console=ttyS0 panic=-1 mitigations=off zswap.enabled=0 swaplab.hostname=t1 swaplab.nfs4_id=t1-id"
    argv = [
        "qemu-system-x86_64", "-accel", "tcg", "-m", "256M", "-smp", "1",
        "-display", "none", "-no-reboot",
        "-kernel", str(image.kernel), "-initrd", str(image.initrd), "-append", append,
        "-serial", f"file:{console}",
        "-netdev", f"user,id=n0,hostfwd=tcp:127.0.0.1:{port}-:22",
        "-device", "virtio-net-pci,netdev=n0,romfile=",
        "-device", "virtio-rng-pci",
    ]  # fmt: skip
    started = time.monotonic()
    qemu = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        yield Guest(port, console, started, qemu)
    finally:
        qemu.kill()
        qemu.wait(timeout=10)


def _ssh(port: int, keys: LabKeys) -> paramiko.SSHClient:
    """Connect with the lab's client key; the host key must match the pinned one exactly."""
    client = paramiko.SSHClient()
    key_type, blob = keys.host_public.split()[:2]
    host_key = paramiko.Ed25519Key(data=base64.b64decode(blob))
    client.get_host_keys().add(f"[127.0.0.1]:{port}", key_type, host_key)
    client.set_missing_host_key_policy(paramiko.RejectPolicy())
    client.connect(
        "127.0.0.1",
        port=port,
        username="root",
        key_filename=str(keys.client_private),
        look_for_keys=False,
        allow_agent=False,
        timeout=20,
    )
    return client


def _exec(client: paramiko.SSHClient, command: str) -> str:
    _stdin, stdout, stderr = client.exec_command(command, timeout=30)
    status = stdout.channel.recv_exit_status()
    out = stdout.read().decode()
    assert status == 0, f"{command!r} exited {status}: {stderr.read().decode()}"
    return out


def test_second_build_is_a_cache_hit(image: NodeImage, keys: LabKeys) -> None:
    kernel = fetch_kernel(KernelSource(package="linux-image-amd64"))
    again = build_node_image(kernel, keys)
    assert again == image
    assert image.initrd.stat().st_size < 8 * 1024 * 1024  # it lives in unswappable RAM


def test_initramfs_holds_what_a_node_needs(image: NodeImage) -> None:
    listing = subprocess.run(
        ["cpio", "-it", "--quiet"],
        input=gzip.decompress(image.initrd.read_bytes()),
        capture_output=True,
        check=True,
    ).stdout.decode()
    names = set(listing.split())
    for needed in [
        "init", "bin/sh", "bin/busybox", "dev/console", "usr/sbin/dropbear",
        "usr/bin/swaplab-node", "lib/swaplab/libmlockall.so", "etc/swaplab/modules", "root/.ssh/authorized_keys",
        "etc/dropbear/dropbear_ed25519_host_key", "etc/passwd",
    ]:  # fmt: skip
        assert needed in names, needed
    assert any(n.endswith("/nfsv4.ko") for n in names)
    assert any(n.endswith("/virtio-rng.ko") for n in names)


def test_node_boots_and_answers_ssh_with_pinned_host_key(booted: Guest, image: NodeImage, keys: LabKeys) -> None:
    text = _wait_for_console(booted.console, READY, booted.qemu)
    ready_s = time.monotonic() - booted.started
    assert "swaplab: ERROR" not in text
    client = _ssh(booted.port, keys)
    try:
        ssh_s = time.monotonic() - booted.started
        assert _exec(client, "uname -r").strip() == image.kver
        node_ns = int(_exec(client, "swaplab-node clock"))
        assert node_ns > 1_600_000_000 * 10**9  # the RTC gave the guest a real date
    finally:
        client.close()
    print(f"ready after {ready_s:.1f}s, ssh after {ssh_s:.1f}s")


def test_local_deb_with_merged_usr_and_compressed_modules_is_normalised(
    image: NodeImage, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A trixie-style .deb (usr/lib/modules, .ko.xz/.ko.zst) ends as plain .ko + modules.dep."""
    real = fetch_kernel(KernelSource(package="linux-image-amd64"))
    kver = "9.9.9-swaplab"
    tree = tmp_path / "pkg"
    mods = tree / "usr" / "lib" / "modules" / kver / "kernel"
    (tree / "DEBIAN").mkdir(parents=True)
    (tree / "boot").mkdir()
    shutil.copy(real.vmlinuz, tree / "boot" / f"vmlinuz-{kver}")
    virtio = real.modules_dir / "kernel" / "drivers" / "virtio"
    mods.mkdir(parents=True)
    shutil.copy(virtio / "virtio_ring.ko", mods / "virtio_ring.ko")
    with (mods / "virtio.ko.xz").open("wb") as xz_out:
        subprocess.run(["xz", "-c", str(virtio / "virtio.ko")], stdout=xz_out, check=True)
    subprocess.run(["zstd", "-q", str(virtio / "virtio_pci.ko"), "-o", str(mods / "virtio_pci.ko.zst")], check=True)
    (tree / "DEBIAN" / "control").write_text(
        f"Package: linux-image-{kver}\nVersion: 1.0\nArchitecture: amd64\nMaintainer: t <t@example.org>\n"
        "Description: test kernel\n"
    )
    deb = tmp_path / "k.deb"
    subprocess.run(["dpkg-deb", "-b", "-Zgzip", str(tree), str(deb)], check=True, capture_output=True)
    monkeypatch.setenv("SWAPLAB_CACHE", str(tmp_path / "cache"))

    art = fetch_kernel(KernelSource(deb=deb))

    assert (art.package, art.version, art.kver) == (f"linux-image-{kver}", "1.0", kver)
    assert art.modules_dir.parts[-3:] == ("lib", "modules", kver)
    assert not list(art.modules_dir.rglob("*.ko.*"))
    order = module_load_order(art.modules_dir, kver, ["virtio_pci"])
    assert [p.name for p in order] == ["virtio_ring.ko", "virtio.ko", "virtio_pci.ko"]
    assert fetch_kernel(KernelSource(deb=deb)) == art  # cached by the file's sha256


def _vmlck_kib(status: str) -> int:
    for line in status.splitlines():
        if line.startswith("VmLck:"):
            return int(line.split()[1])
    raise AssertionError(f"no VmLck line in:\n{status}")


def test_dropbear_stays_resident_but_sessions_do_not(booted: Guest, keys: LabKeys) -> None:
    """libmlockall locks dropbear's listener and connection child; the commands it runs are unlocked."""
    text = _wait_for_console(booted.console, READY, booted.qemu)
    assert "swaplab: ERROR" not in text
    client = _ssh(booted.port, keys)
    try:
        listener = _exec(client, "cat /proc/$(cat /run/dropbear.pid)/status")
        # The shell's parent is the per-connection dropbear child that forked it.
        child = _exec(client, "cat /proc/$PPID/status")
        shell = _exec(client, "cat /proc/$$/status")
        env = _exec(client, 'echo "${LD_PRELOAD:-unset}"').strip()
        rng = _exec(client, "cat /sys/class/misc/hw_random/rng_current").strip()
    finally:
        client.close()
    assert "Name:\tdropbear" in listener and "Name:\tdropbear" in child
    assert _vmlck_kib(listener) > 0
    assert _vmlck_kib(child) > 0
    assert _vmlck_kib(shell) == 0  # execve dropped the locks: the workload stays swappable
    assert env == "unset"
    assert rng.startswith("virtio_rng")


def test_a_bare_metal_image_brings_up_the_nic_its_command_line_names(keys: LabKeys, tmp_path: Path) -> None:
    # A machine with two NICs: the image must take its address on the one it booted from
    # (swaplab.mac=), an e1000e whose driver only a bare-metal image carries.
    kernel = fetch_kernel(KernelSource(package="linux-image-amd64"))
    image = build_node_image(kernel, keys, nic_modules=("e1000e",))
    port, mac = free_port(), "52:54:00:5a:1a:b0"
    console = tmp_path / "console.log"
    append = f"console=ttyS0 panic=0 swaplab.hostname=t1 swaplab.nfs4_id=t1-pxe swaplab.mac={mac}"
    argv = [
        "qemu-system-x86_64", "-accel", "tcg", "-m", "256M", "-smp", "1", "-display", "none", "-no-reboot",
        "-kernel", str(image.kernel), "-initrd", str(image.initrd), "-append", append,
        "-serial", f"file:{console}",
        "-netdev", "user,id=decoy,restrict=on", "-device", "virtio-net-pci,netdev=decoy,romfile=",
        "-netdev", f"user,id=n0,hostfwd=tcp:127.0.0.1:{port}-:22",
        "-device", f"e1000e,netdev=n0,mac={mac},romfile=",
        "-device", "virtio-rng-pci",
    ]  # fmt: skip
    qemu = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        text = _wait_for_console(console, READY, qemu)
        assert "swaplab: ERROR" not in text, text[-2000:]
        client = _ssh(port, keys)
        try:
            nic = _exec(client, f"grep -l {mac} /sys/class/net/*/address").split("/")[4]
            assert _exec(client, f"basename $(readlink /sys/class/net/{nic}/device/driver)").strip() == "e1000e"
            assert "10.0.2.15/24" in _exec(client, f"ip -4 addr show dev {nic}")
        finally:
            client.close()
    finally:
        qemu.kill()
        qemu.wait(timeout=10)
    assert image.initrd.stat().st_size < 8 * 1024 * 1024
