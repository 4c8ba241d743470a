"""The lab NFS server's VM image, built and booted for real.

One module-scoped image (built with mmdebstrap from this host's mirror, or taken from the
cache) and one VM booted from it in QEMU (TCG) with swaplab's own ``ServerVm``. The tests
check what the image says it is (its manifest), that a second build is a cache hit, what
the running guest is (kernel, hostname, NFS server, Python, sshd refusing passwords),
that the cached disk is never written, and that ``stop()`` leaves no QEMU and no port.
With ``-s`` the fixture prints the build, cache and boot times and the image's size.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import paramiko
import pytest

from tests.conftest import require_tools
from workers.image import LabKeys, lab_keys
from workers.lab.provision import PlaybookRun, ProvisionError, run_playbook
from workers.lab.server_image import HOSTNAME, RECIPE_VERSION, ServerImage, build_server_image
from workers.lab.server_vm import ServerVm, port_free
from workers.process import cmdline, pid_alive

# A cold build is about 2 minutes here, a TCG boot about 1: the margin is for a busy host.
pytestmark = [pytest.mark.e2e, pytest.mark.timeout(1500)]
# The e2e lab's keys: root's authorized key in the image (the other e2e modules share them).
KEYS_OF = "e2e"
TOOLS = ("mmdebstrap", "mke2fs", "dpkg-query", "qemu-img", "qemu-system-x86_64", "dropbearkey", "ssh")
BOOT_TIMEOUT_S = 400.0
# A cache hit resolves the package set (apt's indices from the mirror, a few seconds).
CACHED_MAX_S = 90.0
MIB = 2**20

Fingerprint = tuple[int, int, str]
measured: dict[str, Any] = {}


def _say(message: str) -> None:
    print(f"  [server image] {message}", flush=True)


def _fingerprint(disk: Path) -> Fingerprint:
    """Size, mtime and the hash of the first MiB (superblock, group descriptors)."""
    info = disk.stat()
    with disk.open("rb") as handle:
        head = hashlib.sha256(handle.read(MIB)).hexdigest()
    return info.st_size, info.st_mtime_ns, head


@pytest.fixture(scope="module")
def keys() -> LabKeys:
    require_tools(TOOLS)
    return lab_keys(KEYS_OF)


@pytest.fixture(scope="module")
def image(keys: LabKeys) -> ServerImage:
    built = build_server_image(keys, _say)
    measured["first call"] = f"{built.state} in {built.seconds:.1f} s"
    measured["cold build"] = f"{built.build_seconds:.1f} s (mmdebstrap + mke2fs, from the manifest)"
    disk = built.disk.stat()
    measured["disk.ext4"] = f"{disk.st_size / MIB:.0f} MiB apparent, {disk.st_blocks * 512 / MIB:.0f} MiB allocated"
    measured["kernel + initrd"] = (
        f"{built.vmlinuz.stat().st_size / MIB:.1f} + {built.initrd.stat().st_size / MIB:.1f} MiB"
    )
    return built


@pytest.fixture(scope="module")
def disk_before(image: ServerImage) -> Fingerprint:
    """The cached disk as it was before any VM ran from it."""
    return _fingerprint(image.disk)


@pytest.fixture(scope="module")
def vm(
    image: ServerImage, keys: LabKeys, disk_before: Fingerprint, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ServerVm]:
    server = ServerVm(image, keys, tmp_path_factory.mktemp("server-vm"), name="e2e")
    server.start()
    try:
        measured["boot to SSH"] = f"{server.wait_ready(BOOT_TIMEOUT_S):.1f} s (TCG, 1 vCPU, {server.ram_mib} MiB)"
        yield server
    finally:
        server.stop()
        print("\n  measured: " + "; ".join(f"{k}: {v}" for k, v in measured.items()), flush=True)


def _ok(server: ServerVm, command: str) -> str:
    result = server.run(command)
    assert result.ok, f"{command}: {result}"
    return result.stdout.strip()


def test_the_manifest_lists_the_server_packages_with_versions(image: ServerImage) -> None:
    manifest = json.loads(image.manifest.read_text())
    assert manifest["builder"] == RECIPE_VERSION
    assert manifest["key"] == image.folder.name == image.key
    packages = manifest["packages"]
    for name in ("nfs-kernel-server", "linux-image-amd64", "openssh-server", "python3", "systemd-sysv"):
        assert packages.get(name, "")[:1].isdigit(), f"{name} has no version in the manifest: {packages.get(name)!r}"
    kernel = manifest["kernel"]
    assert kernel["package"] == f"linux-image-{kernel['release']}"
    assert packages[kernel["package"]] == kernel["version"]
    # The key files of the image are this user's only (the disk holds sshd's host keys).
    for path in (image.disk, image.vmlinuz, image.initrd, image.manifest):
        assert path.stat().st_mode & 0o077 == 0, f"{path} is readable by others"


def test_a_second_build_is_a_cache_hit(image: ServerImage, keys: LabKeys, disk_before: Fingerprint) -> None:
    again = build_server_image(keys, _say)
    measured["second call"] = f"{again.state} in {again.seconds:.1f} s"
    assert again.state == "cached"
    assert again.seconds < CACHED_MAX_S
    assert (again.folder, again.key, again.build_seconds) == (image.folder, image.key, image.build_seconds)
    assert _fingerprint(again.disk) == disk_before, "the cache hit rewrote the disk"


def test_the_guest_runs_the_kernel_the_image_installed(vm: ServerVm, image: ServerImage) -> None:
    release = _ok(vm, "uname -r")
    assert release == image.kernel_release
    assert image.packages[f"linux-image-{release}"] == image.kernel_version


def test_the_guest_is_named_swaplab_nfs(vm: ServerVm) -> None:
    assert _ok(vm, "cat /etc/hostname") == HOSTNAME == "swaplab-nfs"
    assert _ok(vm, "hostname") == HOSTNAME


def test_the_nfs_server_is_enabled_and_running(vm: ServerVm) -> None:
    enabled = vm.run("systemctl is-enabled nfs-server")
    active = vm.run("systemctl is-active nfs-server")
    print(f"\n  nfs-server: is-enabled {enabled.stdout.strip()}, is-active {active.stdout.strip()}")
    assert enabled.stdout.strip() == "enabled"
    # Unconfigured (no exports yet) it still starts: knfsd listens for Ansible's exports.
    assert active.stdout.strip() == "active"


def test_python3_runs_for_ansible(vm: ServerVm) -> None:
    assert _ok(vm, "python3 --version").startswith("Python 3.11")


def test_sshd_refuses_passwords(vm: ServerVm, image: ServerImage) -> None:
    effective = _ok(vm, "sshd -T | grep -Ei '^(passwordauthentication|kbdinteractiveauthentication|permitrootlogin) '")
    assert sorted(effective.splitlines()) == [
        "kbdinteractiveauthentication no",
        "passwordauthentication no",
        "permitrootlogin without-password",
    ]
    # From outside: the server offers public keys only, and a password is refused.
    assert vm.ssh_port is not None
    transport = paramiko.Transport(("127.0.0.1", vm.ssh_port))
    try:
        transport.start_client(timeout=30)
        server_key = transport.get_remote_server_key()
        assert f"{server_key.get_name()} {server_key.get_base64()}" == image.host_key
        with pytest.raises(paramiko.BadAuthenticationType) as offered:
            transport.auth_none("root")
        assert offered.value.allowed_types == ["publickey"]
        with pytest.raises(paramiko.AuthenticationException):
            transport.auth_password("root", "root")
    finally:
        transport.close()


def test_openssh_logs_in_with_the_pinned_host_key(vm: ServerVm) -> None:
    proc = subprocess.run(vm.ssh_argv("echo", "ok"), capture_output=True, text=True, timeout=60, check=False)
    assert (proc.returncode, proc.stdout) == (0, "ok\n"), proc.stderr


# -- provisioning the kernel NFS server through ansible-runner ------------------------------
PLAYBOOK = Path(__file__).resolve().parents[2] / "playbooks" / "nfs_server.yml"
EXPORTS = "/srv/swaplab"
NODES = [{"name": "node1", "address": "10.77.0.11"}, {"name": "node2", "address": "10.77.0.12"}]


def _provision(vm: ServerVm, artifacts: Path, **variables: Any) -> PlaybookRun:
    inventory = {"nfs_server": {"hosts": {"nfs": vm.ansible_vars()}}}
    extravars = {"swaplab_nfs_export_dir": EXPORTS, "swaplab_nfs_nodes": NODES, **variables}
    lines: list[str] = []
    run = run_playbook(PLAYBOOK, inventory, artifacts, extravars, progress=lines.append)
    assert any(line.startswith("ansible: task ") for line in lines), lines
    return run


def test_the_nfs_playbook_exports_each_node_its_own_directory_and_a_second_run_changes_nothing(
    vm: ServerVm, tmp_path: Path
) -> None:
    first = _provision(vm, tmp_path / "artifacts")
    second = _provision(vm, tmp_path / "artifacts")
    measured["provision"] = f"{first.seconds:.1f} s, again {second.seconds:.1f} s"
    assert first.changed > 0, first
    assert second.changed == 0 and second.successful, second
    # knfsd's own view: each directory exported to its node's address alone, synchronously.
    exported = _ok(vm, "exportfs -s")  # one line per export: path, then client(options)
    for node in NODES:
        [line] = [line for line in exported.splitlines() if line.startswith(f"{EXPORTS}/{node['name']}")]
        assert f" {node['address']}/32(sync," in line and "no_root_squash" in line, exported
    assert "*" not in exported and "<world>" not in exported, exported
    assert _ok(vm, f"stat -c %a {EXPORTS}/node1") == "700"


def test_a_failed_provisioning_task_names_the_host_and_the_task(vm: ServerVm, tmp_path: Path) -> None:
    _ok(vm, "touch /srv/not-a-directory")
    with pytest.raises(ProvisionError) as failed:
        _provision(vm, tmp_path / "artifacts", swaplab_nfs_export_dir="/srv/not-a-directory/exports")
    assert "nfs: task 'Create the export directory'" in str(failed.value), failed.value


def test_the_cached_disk_is_not_written_by_the_guest(
    vm: ServerVm, image: ServerImage, disk_before: Fingerprint
) -> None:
    _ok(vm, "echo written > /root/written-by-the-guest && sync")
    assert _ok(vm, "cat /root/written-by-the-guest") == "written"
    assert _fingerprint(image.disk) == disk_before
    assert vm.overlay.is_file()


def test_stop_leaves_no_qemu_and_frees_the_port(vm: ServerVm, image: ServerImage, disk_before: Fingerprint) -> None:
    port, pid = vm.ssh_port, int(vm.pid_path.read_text())
    assert port is not None and pid_alive(pid)
    started = time.monotonic()
    vm.stop()
    measured["stop"] = f"{time.monotonic() - started:.1f} s"
    assert not vm.is_running()
    assert not pid_alive(pid)
    ours = [p for p in _pids() if vm.vm_name in cmdline(p)]
    assert ours == [], f"QEMU processes of this VM remain: {ours}"
    assert port_free(port)
    assert not vm.overlay.exists()
    assert _fingerprint(image.disk) == disk_before


def _pids() -> list[int]:
    return [int(name) for name in os.listdir("/proc") if name.isdigit()]
