"""The lab NFS server's disk image: a Debian 12 root file system QEMU boots directly.

The lab's kernel NFS server (knfsd) runs in a Debian VM that Ansible provisions later;
this module only makes its image. ``mmdebstrap`` installs the package set into a
directory (in unshare mode: its mounts live in a mount namespace of its own and vanish
with it, nothing is mounted on the host's tree), a few files make it a server swaplab can
reach (root's authorized key, sshd by key only, DHCP on the management NIC, hostname,
fstab), and ``mke2fs -d`` turns the tree into a sparse ext4 image without a loop mount.
The kernel and initrd the image's own ``linux-image-amd64`` installed are copied beside
it, so QEMU boots them with ``-kernel``/``-initrd`` and no bootloader.

An image is cached by what it is made of: the exact package versions apt resolves from
the host's mirror (``mmdebstrap --simulate``, a few seconds), the key baked into it and
this recipe's version. A second build with the same inputs is a lookup; a security update
on the mirror changes the resolved set and so makes a new image. The cache entry is
``cache_dir("server-images", KEY)`` with ``disk.ext4``, ``vmlinuz``, ``initrd.img``,
``manifest.json`` and the build's log, published by renaming a finished temporary
directory, and built under a lock so two builders never build it twice at once.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import math
import os
import re
import shutil
import signal
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

from model.paths import cache_dir
from workers.image import LabKeys

Progress = Callable[[str], None]

# Bump when the recipe changes in a way the package versions do not show (a config file,
# an mmdebstrap option): it is part of the cache key.
RECIPE_VERSION = "swaplab-server-image-2"
SUITE = "bookworm"
PACKAGES = (
    "linux-image-amd64",
    "initramfs-tools",
    "systemd-sysv",
    "nfs-kernel-server",
    "openssh-server",
    "python3",  # Ansible's modules run with it
    "python3-apt",  # Ansible's apt module (package state) needs it on the target
    "iproute2",
    "dnsmasq",  # the boot server of pxe nodes (off until playbooks/pxe_server.yml configures it)
    "ipxe",  # iPXE for the firmware of pxe nodes, served over TFTP
)
HOSTNAME = "swaplab-nfs"
ROOT_LABEL = "swaplab-root"
# The management NIC (QEMU user networking) has this MAC, and only it is configured by
# DHCP: a second NIC (the lab network) gets its static address from Ansible later.
MGMT_MAC = "52:54:00:5a:4e:01"
KERNEL_CMDLINE = "root=/dev/vda rw console=ttyS0 panic=-1"
# The machine's own apt sources, so the image comes from the mirror this host uses.
APT_SOURCES = (Path("/etc/apt/sources.list.d/debian.sources"), Path("/etc/apt/sources.list"))
HEADROOM_MIB = 512  # free space in the root fs for logs, state and Ansible's changes
MAX_DISK_MIB = 4096  # a tree bigger than this means the package set went wrong
MMDEBSTRAP_TIMEOUT_S = 3600.0
RESOLVE_TIMEOUT_S = 600.0
MKE2FS_TIMEOUT_S = 900.0
# Not needed on a server nobody reads manuals on; a smaller tree is a faster mke2fs.
_DPKG_EXCLUDES = (
    "path-exclude=/usr/share/doc/*",
    "path-include=/usr/share/doc/*/copyright",
    "path-exclude=/usr/share/man/*",
    "path-exclude=/usr/share/info/*",
    "path-exclude=/usr/share/locale/*",
    "path-include=/usr/share/locale/locale.alias",
)
# Units the image starts at boot (systemctl in the tree: their [Install] sections decide
# the links). nfs-server is enabled, unconfigured: Ansible writes its exports later.
_ENABLED_UNITS = ("systemd-networkd.service", "ssh.service", "nfs-server.service")
_DISABLED_UNITS = ("dnsmasq.service",)
_INST_LINE = re.compile(r"^Inst (\S+) (?:\[[^\]]*\] )?\((\S+) ", re.MULTILINE)
_KEY_DIR = re.compile(r"[0-9a-f]{32}")
_LOG_TAIL_LINES = 25


class ServerImageError(RuntimeError):
    """A step of the server image build failed; the message names it and ends with the
    tail of its log."""

    def __init__(self, step: str, detail: str, log: Path | None = None) -> None:
        tail = _tail(log) if log is not None else ""
        where = f"\n--- last lines of {log} ---\n{tail}" if tail else ""
        super().__init__(f"server image: {step} failed: {detail}{where}")
        self.step = step
        self.log = log


@dataclass(frozen=True)
class ServerImage:
    """A cached server image and how this call got it.

    ``state`` is "built" when this call built it, "cached" when it was there already;
    ``seconds`` is this call's time (resolving included), ``build_seconds`` the time the
    image's own build took.
    """

    folder: Path
    key: str
    packages: dict[str, str]
    kernel_package: str
    kernel_version: str
    kernel_release: str
    host_key: str  # the image's sshd ed25519 key, "ssh-ed25519 AAAA...", for pinning
    build_seconds: float
    state: Literal["built", "cached"]
    seconds: float

    @property
    def disk(self) -> Path:
        return self.folder / "disk.ext4"

    @property
    def vmlinuz(self) -> Path:
        return self.folder / "vmlinuz"

    @property
    def initrd(self) -> Path:
        return self.folder / "initrd.img"

    @property
    def manifest(self) -> Path:
        return self.folder / "manifest.json"

    @property
    def cmdline(self) -> str:
        """The kernel command line the image boots with."""
        return KERNEL_CMDLINE


# ---------------------------------------------------------------- the entry point


def build_server_image(keys: LabKeys, progress: Progress | None = None) -> ServerImage:
    """The server image with ``keys.client_public`` as root's key; built unless cached.

    Resolves the package set on the host's mirror first (every call: that is what says
    whether the cached image is still the current one), then returns the cached image of
    that set or builds it (minutes: mmdebstrap, then mke2fs).
    """
    started = time.monotonic()
    say = progress or (lambda _msg: None)
    sources = apt_sources()
    say(f"resolving: the package set on {sources} (mmdebstrap --simulate)")
    packages = resolve_packages(sources)
    key = image_key(packages, keys.client_public)
    parent = cache_dir("server-images")
    found = load_server_image(parent / key, "cached", started)
    if found is not None:
        say(f"server image {key[:12]}: cached ({len(packages)} packages)")
        return found
    with _build_lock(parent):
        # Another builder may have made it while this one waited for the lock.
        found = load_server_image(parent / key, "cached", started)
        if found is not None:
            say(f"server image {key[:12]}: built meanwhile by another builder")
            return found
        _remove_stale_work(parent)
        say(f"server image {key[:12]}: building ({len(packages)} packages)")
        return _build(parent, key, packages, sources, keys, say, started)


def apt_sources() -> Path:
    """The host's apt sources file (deb822 or one-line), handed to mmdebstrap as is."""
    for path in APT_SOURCES:
        if path.is_file() and path.read_text().strip():
            return path
    names = " or ".join(str(p) for p in APT_SOURCES)
    raise ServerImageError("resolving", f"no apt sources on this host ({names})")


def resolve_packages(sources: Path) -> dict[str, str]:
    """``{package: version}`` that mmdebstrap would install now, from apt's simulation."""
    with tempfile.TemporaryDirectory(prefix="swaplab-resolve-") as scratch:
        log = Path(scratch) / "resolve.log"
        argv = _mmdebstrap_argv(Path(scratch) / "root", sources, simulate=True)
        _run_logged(argv, log, "resolving", RESOLVE_TIMEOUT_S)
        packages = parse_simulation(log.read_text(errors="replace"))
        if "linux-image-amd64" not in packages:
            raise ServerImageError("resolving", "apt's simulation installs no linux-image-amd64", log)
        return packages


def parse_simulation(text: str) -> dict[str, str]:
    """Package versions from apt-get's ``Inst name [old] (version suite [arch])`` lines.

    mmdebstrap simulates the variant's packages and the included ones separately, so a
    package may be listed twice: with one mirror state, both times at the same version.
    """
    return {name: version for name, version in _INST_LINE.findall(text)}


def image_key(packages: dict[str, str], authorized_key: str) -> str:
    """The cache key: recipe version, root's key and every ``name=version``, hashed."""
    digest = hashlib.sha256(f"{RECIPE_VERSION}\0{SUITE}\0{authorized_key.strip()}\0".encode())
    for name in sorted(packages):
        digest.update(f"{name}={packages[name]}\n".encode())
    return digest.hexdigest()[:32]


def load_server_image(folder: Path, state: Literal["built", "cached"], started: float) -> ServerImage | None:
    """The image in ``folder`` when it is complete and of this recipe, else None."""
    try:
        manifest = json.loads((folder / "manifest.json").read_text())
    except (OSError, ValueError):
        return None
    if manifest.get("builder") != RECIPE_VERSION:
        return None
    if not all((folder / name).is_file() for name in ("disk.ext4", "vmlinuz", "initrd.img")):
        return None
    kernel = manifest["kernel"]
    return ServerImage(
        folder=folder,
        key=manifest["key"],
        packages=dict(manifest["packages"]),
        kernel_package=kernel["package"],
        kernel_version=kernel["version"],
        kernel_release=kernel["release"],
        host_key=manifest["host_key"],
        build_seconds=float(manifest["build_seconds"]),
        state=state,
        seconds=round(time.monotonic() - started, 1),
    )


# ---------------------------------------------------------------- the build


def _build(
    parent: Path,
    key: str,
    packages: dict[str, str],
    sources: Path,
    keys: LabKeys,
    say: Progress,
    started: float,
) -> ServerImage:
    """mmdebstrap into a temporary directory beside the cache entry, then publish it."""
    build_started = time.monotonic()
    work = Path(tempfile.mkdtemp(prefix=f".{key}.", dir=parent))
    root = work / "root"
    # Beside the work directory, so a failed build's log outlives it (errors name it);
    # a finished image keeps it as build.log.
    log = parent / f"build-{key}.log"
    log.unlink(missing_ok=True)
    try:
        say("mmdebstrap: installing the root tree (downloads and dpkg, a few minutes)")
        _run_logged(_mmdebstrap_argv(root, sources, simulate=False), log, "mmdebstrap", MMDEBSTRAP_TIMEOUT_S, say)
        _configure(root, keys)
        installed = installed_packages(root, log)
        differences = _check_installed(packages, installed, log)
        kernel = _kernel(root, installed, log)
        _copy_private(root / "boot" / f"vmlinuz-{kernel['release']}", work / "vmlinuz")
        _copy_private(root / "boot" / f"initrd.img-{kernel['release']}", work / "initrd.img")
        host_key = _host_key(root, log)
        tree_bytes = _tree_bytes(root)
        size_mib = _disk_mib(tree_bytes, log)
        say(f"mke2fs: {tree_bytes / 2**20:.0f} MiB tree into a {size_mib} MiB ext4 image")
        _make_disk(root, work / "disk.ext4", size_mib, log)
        _remove_tree(root)
        manifest = {
            "key": key,
            "builder": RECIPE_VERSION,
            "suite": SUITE,
            "built_at": datetime.now(UTC).isoformat(timespec="seconds"),
            "build_seconds": round(time.monotonic() - build_started, 1),
            "sources": str(sources),
            "kernel": kernel,
            "cmdline": KERNEL_CMDLINE,
            "host_key": host_key,
            "authorized_key": keys.client_public,
            "tree_bytes": tree_bytes,
            "disk_bytes": size_mib * 2**20,
            "packages": dict(sorted(installed.items())),  # what dpkg installed: the truth
            **differences,
        }
        _write_private(work / "manifest.json", json.dumps(manifest, indent=2) + "\n")
        log.rename(work / "build.log")
        final = _publish(work, parent / key)
    finally:
        if work.exists():
            _remove_tree(work)
    image = load_server_image(final, "built", started)
    if image is None:
        raise ServerImageError("publish", f"{final} is incomplete right after it was published")
    say(f"server image {key[:12]} ready in {image.seconds:.0f} s: kernel {image.kernel_release}")
    return image


def _mmdebstrap_argv(root: Path, sources: Path, *, simulate: bool) -> list[str]:
    """One command line for both the simulation and the build, so both resolve alike."""
    argv = [
        "mmdebstrap",
        # unshare as root: a private mount namespace (its /proc, /dev, /sys mounts are
        # never seen by the host and go away with it, even if mmdebstrap is killed).
        "--mode=unshare",
        "--variant=apt",
        "--format=directory",
        "--verbose",
        f"--include={','.join(PACKAGES)}",
        '--aptopt=Acquire::Languages "none"',
        *(f"--dpkgopt={rule}" for rule in _DPKG_EXCLUDES),
        # systemctl in the tree follows each unit's [Install] section (sockets, aliases).
        f'--customize-hook=chroot "$1" systemctl enable {" ".join(_ENABLED_UNITS)}',
        # Installed enabled, dnsmasq would answer DNS on every NIC at boot: only the boot
        # server's playbook, with its configuration, starts it.
        f'--customize-hook=chroot "$1" systemctl disable {" ".join(_DISABLED_UNITS)}',
    ]
    if simulate:
        argv.append("--simulate")
    return [*argv, SUITE, str(root), str(sources)]


def _configure(root: Path, keys: LabKeys) -> None:
    """The files that make the tree swaplab's server: login, network, identity, fstab."""
    ssh = root / "root" / ".ssh"
    ssh.mkdir(mode=0o700, exist_ok=True)
    ssh.chmod(0o700)
    _write(ssh / "authorized_keys", keys.client_public.strip() + "\n", 0o600)
    _write(
        root / "etc/ssh/sshd_config.d/10-swaplab.conf",
        "# swaplab: root logs in with swaplab's key, nobody with a password.\n"
        "PermitRootLogin prohibit-password\n"
        "PasswordAuthentication no\n"
        "KbdInteractiveAuthentication no\n",
    )
    _write(
        root / "etc/systemd/network/10-mgmt.network",
        "# The management NIC (QEMU user networking, 10.0.2.15 by DHCP); other NICs are\n"
        "# configured by whoever adds them.\n"
        f"[Match]\nMACAddress={MGMT_MAC}\n\n[Network]\nDHCP=ipv4\nLinkLocalAddressing=no\nIPv6AcceptRA=no\n",
    )
    _write(root / "etc/hostname", HOSTNAME + "\n")
    _write(root / "etc/hosts", f"127.0.0.1 localhost\n127.0.1.1 {HOSTNAME}\n::1 localhost ip6-localhost ip6-loopback\n")
    _write(root / "etc/resolv.conf", "nameserver 10.0.2.3\n")  # QEMU user networking's resolver
    _write(root / "etc/fstab", "/dev/vda / ext4 rw,errors=remount-ro 0 1\n")


def installed_packages(root: Path, log: Path | None = None) -> dict[str, str]:
    """``{package: version}`` of what dpkg installed in the tree (read from the host)."""
    argv = ["dpkg-query", f"--admindir={root}/var/lib/dpkg", "-W", "-f=${db:Status-Abbrev}\t${Package}\t${Version}\n"]
    proc = subprocess.run(argv, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise ServerImageError("reading the installed packages", proc.stderr.strip()[-500:], log)
    packages = {}
    for line in proc.stdout.splitlines():
        status, name, version = line.split("\t")
        if status.strip() == "ii":
            packages[name] = version
    return packages


def _check_installed(resolved: dict[str, str], installed: dict[str, str], log: Path) -> dict[str, list[str]]:
    """What the resolved set (the cache key) and the installed one do not share.

    The simulation resolves the included packages without the variant's packages
    installed, so it may list a package the real install gets from another's Provides
    (``lsb-base``, provided by ``sysvinit-utils``): names on one side only are expected
    and recorded. A package on both sides at two versions means the mirror changed
    during the build; the image would not be the one its key names, so it is refused.
    """
    moved = [
        f"{n} {resolved[n]} -> {installed[n]}"
        for n in sorted(resolved.keys() & installed.keys())
        if resolved[n] != installed[n]
    ]
    if moved:
        raise ServerImageError(
            "verifying the package set",
            f"the mirror changed during the build ({', '.join(moved[:5])}); build again",
            log,
        )
    return {
        "resolved_only": sorted(resolved.keys() - installed.keys()),
        "installed_only": sorted(installed.keys() - resolved.keys()),
    }


def _kernel(root: Path, installed: dict[str, str], log: Path) -> dict[str, str]:
    """The one kernel in /boot: its release (``uname -r``), package and version."""
    releases = sorted(p.name.removeprefix("vmlinuz-") for p in (root / "boot").glob("vmlinuz-*"))
    if len(releases) != 1:
        raise ServerImageError("finding the kernel", f"expected one /boot/vmlinuz-*, found {releases}", log)
    release = releases[0]
    package = f"linux-image-{release}"
    if package not in installed or not (root / "boot" / f"initrd.img-{release}").is_file():
        raise ServerImageError("finding the kernel", f"{package} or its initrd.img is missing from the tree", log)
    return {"package": package, "version": installed[package], "release": release}


def _host_key(root: Path, log: Path) -> str:
    """The ed25519 host key openssh-server generated in the tree, without its comment."""
    path = root / "etc/ssh/ssh_host_ed25519_key.pub"
    try:
        kind, blob = path.read_text().split()[:2]
    except (OSError, ValueError):
        raise ServerImageError("reading the sshd host key", f"{path} is missing or unreadable", log) from None
    return f"{kind} {blob}"


def _tree_bytes(root: Path) -> int:
    """What the tree takes on ext4: each file rounded up to 4 KiB blocks, plus its inode."""
    total = 0
    for folder, dirs, files in os.walk(root):
        for name in dirs + files:
            size = os.lstat(os.path.join(folder, name)).st_size
            total += 256 + 4096 * math.ceil(size / 4096)
    return total


def _disk_mib(tree_bytes: int, log: Path) -> int:
    """The image size: the tree, 15 % for the file system's own metadata, the headroom;
    rounded up to 64 MiB."""
    mib = math.ceil(tree_bytes * 1.15 / 2**20) + HEADROOM_MIB
    mib = 64 * math.ceil(mib / 64)
    if mib > MAX_DISK_MIB:
        raise ServerImageError("sizing the disk", f"{mib} MiB needed, more than {MAX_DISK_MIB} MiB", log)
    return mib


def _make_disk(root: Path, image: Path, size_mib: int, log: Path) -> None:
    """A sparse file of ``size_mib`` holding an ext4 made from ``root`` (no mount)."""
    fd = os.open(image, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)  # the image holds sshd's host keys
    try:
        os.ftruncate(fd, size_mib * 2**20)
    finally:
        os.close(fd)
    # -m 1: a server fs needs little reserve for root (root is the only user).
    argv = ["mke2fs", "-t", "ext4", "-L", ROOT_LABEL, "-m", "1", "-d", str(root), str(image)]
    _run_logged(argv, log, "mke2fs", MKE2FS_TIMEOUT_S)


def _publish(work: Path, final: Path) -> Path:
    """Rename the finished directory into place (under the build lock: nobody races)."""
    if final.exists():  # a published image is never replaced under a reader's feet
        return final
    try:
        work.rename(final)
    except OSError as err:
        raise ServerImageError("publish", f"rename {work} -> {final}: {err}") from err
    return final


# ---------------------------------------------------------------- locks and scratch space


@contextlib.contextmanager
def _build_lock(parent: Path) -> Iterator[None]:
    """One build at a time on this host: two would build the same image twice, or fight
    over the CPU and the mirror."""
    with (parent / ".build.lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield


def _remove_stale_work(parent: Path) -> None:
    """Temporary build directories left by a killed builder (called under the lock, so
    no live build owns one)."""
    for entry in parent.iterdir():
        name = entry.name
        if entry.is_dir() and name.startswith(".") and _KEY_DIR.fullmatch(name[1:33]):
            _remove_tree(entry)


def _remove_tree(path: Path) -> None:
    """rmtree, refused if anything is mounted below ``path`` (it would be emptied too)."""
    prefix = os.path.realpath(path) + "/"
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        point = line.split()[4].replace("\\040", " ")
        if (point + "/").startswith(prefix):
            raise ServerImageError("cleaning up", f"{point} is mounted inside {path}; not removing it")
    shutil.rmtree(path)


# ---------------------------------------------------------------- small helpers


def _run_logged(argv: Sequence[str], log: Path, step: str, timeout: float, say: Progress | None = None) -> None:
    """Run ``argv`` with its output appended to ``log``; its ``I:`` lines go to ``say``.

    The command runs in its own process group, so a timeout or an interrupt ends
    mmdebstrap's apt and dpkg children too.
    """
    with log.open("a") as out:
        out.write(f"$ {' '.join(argv)}\n")
        out.flush()
        try:
            proc = subprocess.Popen(
                argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                text=True, errors="replace", start_new_session=True,
            )  # fmt: skip
        except FileNotFoundError:
            raise ServerImageError(step, f"{argv[0]} is not installed (run scripts/setup)") from None
        timed_out = threading.Event()
        timer = threading.Timer(timeout, _time_out, (proc, timed_out))
        timer.start()
        try:
            assert proc.stdout is not None
            for line in proc.stdout:
                out.write(line)
                if say is not None and line.startswith("I: "):
                    say(f"{step}: {line[3:].strip()}")
            code = proc.wait()
        except BaseException:
            _kill_group(proc)
            raise
        finally:
            timer.cancel()
    if code != 0:
        detail = f"timed out after {timeout:.0f} s" if timed_out.is_set() else f"exit code {code}"
        raise ServerImageError(step, f"{argv[0]}: {detail}", log)


def _time_out(proc: subprocess.Popen[Any], timed_out: threading.Event) -> None:
    timed_out.set()
    _kill_group(proc)


def _kill_group(proc: subprocess.Popen[Any]) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()


def _write(path: Path, text: str, mode: int = 0o644) -> None:
    """A new file in the tree, replacing whatever stood there: as root, writing through
    an absolute link in the tree would write the host's own file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.unlink(missing_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, mode)
    with os.fdopen(fd, "w") as out:
        out.write(text)
    os.chmod(path, mode)  # the umask does not decide


def _write_private(path: Path, text: str) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as out:
        out.write(text)


def _copy_private(source: Path, target: Path) -> None:
    shutil.copyfile(source, target)
    target.chmod(0o600)


def _tail(path: Path, lines: int = _LOG_TAIL_LINES) -> str:
    try:
        text = path.read_text(errors="replace").rstrip()
    except OSError:
        return ""
    return "\n".join(text.splitlines()[-lines:])
