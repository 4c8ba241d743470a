"""Node images: the SSH keys of a lab and the initramfs every diskless node boots.

An image is a stock kernel plus a small initramfs (busybox, the kernel's NIC/NFS modules,
dropbear, the static ``swaplab-node`` tool and ``/init``). It lives in guest RAM and cannot
be swapped, so it carries only what the node needs. Images are content-addressed: the
sha256 of every input names the cache entry, so a second build with the same inputs is a
lookup, and two builders racing on the same inputs both end with the same bytes.
"""

from __future__ import annotations

import fcntl
import gzip
import hashlib
import io
import json
import os
import re
import shutil
import stat
import subprocess
import tempfile
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from model.paths import PRIVATE_DIR_MODE, cache_dir, restrict
from workers.kernel import NODE_MODULES, KernelArtifacts, module_load_order

Progress = Callable[[str], None]

# Bump when the image layout changes in a way the hashed inputs do not show.
IMAGE_FORMAT = "swaplab-image-1"
NODE_TOOLS = Path(__file__).resolve().parent / "node_tools"
NODE_TOOL_SOURCE = NODE_TOOLS / "swaplab-node.c"
MLOCKALL_SOURCE = NODE_TOOLS / "mlockall.c"
# Where /init finds the library it LD_PRELOADs into dropbear (keep in sync with init.sh).
MLOCKALL_IN_IMAGE = "lib/swaplab/libmlockall.so"
NODE_TOOL_IN_IMAGE = "usr/bin/swaplab-node"
INIT_SCRIPT = NODE_TOOLS / "init.sh"
BUSYBOX = Path("/bin/busybox")
DROPBEAR = Path("/usr/sbin/dropbear")
_GCC_FLAGS = ("-O2", "-static", "-Wall", "-Wextra")
_GCC_SHARED_FLAGS = ("-O2", "-shared", "-fPIC", "-Wall", "-Wextra")
_LDD_PATH_RE = re.compile(r"(/\S+)\s+\(0x[0-9a-f]+\)")


class ImageError(RuntimeError):
    """The node image could not be built (missing host tool, compiler error ...)."""


# ---------------------------------------------------------------- keys


@dataclass(frozen=True)
class LabKeys:
    """The SSH identities of one lab: the orchestrator's client key and the nodes' host key."""

    client_private: Path
    client_public: str
    host_private: Path
    host_public: str


def lab_keys(lab: str) -> LabKeys:
    """The lab's keys, generated on first use under ``cache_dir("keys", lab)``."""
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}", lab):
        raise ImageError(f"lab name {lab!r} is not a safe directory name")
    folder = cache_dir("keys", lab)
    folder.chmod(0o700)
    client = folder / "client_ed25519"
    host = folder / "dropbear_ed25519_host_key"
    with (folder / ".lock").open("w") as lock:
        # Two workers starting a fresh lab at once must agree on one key pair.
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not client.exists():
            _write_client_key(client)
        if not host.exists():
            _write_host_key(host)
    return LabKeys(
        client_private=client,
        client_public=(folder / "client_ed25519.pub").read_text().strip(),
        host_private=host,
        host_public=_dropbear_public(host),
    )


def _write_client_key(path: Path) -> None:
    """An OpenSSH-format ed25519 key (paramiko and ssh read it), written atomically 0600."""
    key = Ed25519PrivateKey.generate()
    private = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.OpenSSH,
        serialization.NoEncryption(),
    )
    public = key.public_key().public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH)
    _atomic_write(path.with_name(path.name + ".pub"), public + b" swaplab\n", 0o644)
    _atomic_write(path, private, 0o600)  # last: its presence means the pair is complete


def _write_host_key(path: Path) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}")
    tmp.unlink(missing_ok=True)
    _run(["dropbearkey", "-t", "ed25519", "-f", str(tmp)])
    tmp.chmod(0o600)
    tmp.replace(path)


def _dropbear_public(host_key: Path) -> str:
    """``ssh-ed25519 AAAA...`` of a dropbear host key (comment dropped, for pinning)."""
    out = _run(["dropbearkey", "-y", "-f", str(host_key)]).stdout
    for line in out.splitlines():
        if line.startswith("ssh-ed25519 "):
            return " ".join(line.split()[:2])
    raise ImageError(f"dropbearkey -y printed no ssh-ed25519 line for {host_key}")


# ---------------------------------------------------------------- the node tool


def node_tool_binary() -> Path:
    """``swaplab-node`` compiled statically for this host, cached by source + flags."""
    return _compiled(NODE_TOOL_SOURCE, _GCC_FLAGS, "swaplab-node")


def mlockall_library() -> Path:
    """``libmlockall.so`` (LD_PRELOADed into dropbear to keep it resident), cached likewise."""
    return _compiled(MLOCKALL_SOURCE, _GCC_SHARED_FLAGS, "libmlockall", ".so", ("-lpthread",))


def _compiled(
    source_path: Path, flags: tuple[str, ...], stem: str, suffix: str = "", libs: tuple[str, ...] = ()
) -> Path:
    """``gcc flags -o <cache> source libs``, named by the hash of source and command line."""
    source = source_path.read_bytes()
    digest = hashlib.sha256(source + " ".join(flags + libs).encode()).hexdigest()[:20]
    target = cache_dir("tools") / f"{stem}-{digest}{suffix}"
    if target.is_file():
        return target
    tmp = target.with_name(f".{target.name}.{os.getpid()}")
    proc = subprocess.run(
        ["gcc", *flags, "-o", str(tmp), str(source_path), *libs],
        capture_output=True,
        text=True,
        check=False,
    )
    if proc.returncode != 0:
        raise ImageError(f"gcc failed on {source_path}:\n{proc.stderr}")
    tmp.replace(target)
    return target


# ---------------------------------------------------------------- images


@dataclass(frozen=True)
class NodeImage:
    """A bootable node: kernel image and initramfs, and what they were built from."""

    kernel: Path
    initrd: Path
    kver: str
    package: str
    version: str
    image_hash: str

    def to_json(self) -> dict[str, str]:
        """A JSON-safe dict (paths as strings)."""
        return {k: str(v) for k, v in asdict(self).items()}

    @classmethod
    def from_json(cls, data: dict[str, str]) -> NodeImage:
        """The inverse of :meth:`to_json`."""
        return cls(
            kernel=Path(data["kernel"]),
            initrd=Path(data["initrd"]),
            kver=data["kver"],
            package=data["package"],
            version=data["version"],
            image_hash=data["image_hash"],
        )


@dataclass(frozen=True)
class _Entry:
    """One file of the initramfs: a regular file (data), a directory, a symlink or a node."""

    path: str
    mode: int
    data: bytes = b""
    rdev: tuple[int, int] = (0, 0)


def build_node_image(
    kernel: KernelArtifacts,
    keys: LabKeys,
    progress: Progress | None = None,
    *,
    with_node_tool: bool = True,
    nic_modules: tuple[str, ...] = (),
) -> NodeImage:
    """The node image for ``kernel`` with the lab's ``keys``; cached by its inputs' hash.

    ``with_node_tool=False`` leaves ``swaplab-node`` out: an image like a host swaplab does
    not provision (the ssh driver copies the tool over itself). ``nic_modules``: drivers of
    real NICs to load too (a bare-metal node's; the kernel must have them).
    """
    say = progress or (lambda _msg: None)
    # A kernel with NFS, virtio and sunrpc built in (a swaplab build) has nothing to load.
    has_modules = kernel.modules_dir.is_dir()
    wanted = [*NODE_MODULES, *(name for name in nic_modules if name not in NODE_MODULES)]
    modules = module_load_order(kernel.modules_dir, kernel.kver, wanted) if has_modules else []
    entries = _entries(kernel, keys, modules, with_node_tool)
    image_hash = _hash_entries(kernel, entries)
    final = cache_dir("images") / image_hash[:32]
    cached = _load_image(final)
    if cached is not None:
        say(f"node image {image_hash[:12]}: cached")
        return cached
    say(f"building node image {image_hash[:12]} for {kernel.kver} ({len(modules)} modules)")
    # mkdtemp's 0700 stays: the initrd holds the lab's host key (a PXE server that serves
    # images will have to be given them, not find them readable).
    work = Path(tempfile.mkdtemp(prefix=f".{final.name}.", dir=final.parent))
    try:
        _link_or_copy(kernel.vmlinuz, work / "vmlinuz")
        _private_write(work / "initrd.gz", _gzip(_cpio(entries)))
        image = NodeImage(
            kernel=final / "vmlinuz",
            initrd=final / "initrd.gz",
            kver=kernel.kver,
            package=kernel.package,
            version=kernel.version,
            image_hash=image_hash,
        )
        _private_write(work / "image.json", (json.dumps(image.to_json(), indent=2) + "\n").encode())
        _publish(work, final)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    loaded = _load_image(final)
    if loaded is None:
        raise ImageError(f"node image {final} vanished after it was built")
    say(f"node image ready: initrd {loaded.initrd.stat().st_size // 1024} KiB")
    return loaded


def cached_image(image_hash: str) -> NodeImage | None:
    """The image with content hash ``image_hash`` from this host's cache, if it is there."""
    if not re.fullmatch(r"[0-9a-f]{64}", image_hash):
        return None
    image = _load_image(cache_dir("images") / image_hash[:32])
    return image if image is not None and image.image_hash == image_hash else None


def _load_image(folder: Path) -> NodeImage | None:
    meta = folder / "image.json"
    if not meta.is_file():
        return None
    image = NodeImage.from_json(json.loads(meta.read_text()))
    if not (image.kernel.is_file() and image.initrd.is_file()):
        return None
    # An image an older swaplab built was readable by everyone, host key included.
    restrict(folder, PRIVATE_DIR_MODE)
    restrict(image.initrd, 0o600)
    return image


def _publish(work: Path, final: Path) -> None:
    """Rename the finished dir into place; losing a race to an identical build is fine."""
    try:
        work.rename(final)
    except OSError:
        if _load_image(final) is None:
            raise


def _hash_entries(kernel: KernelArtifacts, entries: list[_Entry]) -> str:
    """sha256 over every byte that goes into the image, plus the kernel's identity."""
    digest = hashlib.sha256(IMAGE_FORMAT.encode())
    for part in (kernel.package, kernel.version, kernel.kver):
        digest.update(part.encode() + b"\0")
    digest.update(_file_digest(kernel.vmlinuz).encode())
    for entry in entries:
        digest.update(f"{entry.path}\0{entry.mode:o}\0{entry.rdev}\0".encode())
        digest.update(hashlib.sha256(entry.data).digest())
    return digest.hexdigest()


# ---------------------------------------------------------------- initramfs contents


def _entries(kernel: KernelArtifacts, keys: LabKeys, modules: list[Path], with_node_tool: bool) -> list[_Entry]:
    entries: list[_Entry] = []
    entries += _skeleton()
    entries += _binaries(with_node_tool)
    entries += _module_entries(kernel, modules)
    entries += _login_entries(keys)
    entries.append(_Entry("init", 0o100755, INIT_SCRIPT.read_bytes()))
    return _with_parents(entries)


def _skeleton() -> list[_Entry]:
    dirs = ["dev", "proc", "sys", "tmp", "run", "mnt", "etc/swaplab", "var/log"]
    entries = [_Entry(d, 0o40755) for d in dirs]
    # The kernel opens /dev/console for PID 1 before /init can mount devtmpfs.
    entries.append(_Entry("dev/console", 0o20600, rdev=(5, 1)))
    entries.append(_Entry("bin/sh", 0o120777, b"busybox"))
    entries.append(_Entry("var/run", 0o120777, b"../run"))
    return entries


def _binaries(with_node_tool: bool) -> list[_Entry]:
    """busybox, swaplab-node, dropbear with the shared libraries ``ldd`` names, libmlockall."""
    entries = [
        _Entry("bin/busybox", 0o100755, BUSYBOX.read_bytes()),
        _Entry("usr/sbin/dropbear", 0o100755, DROPBEAR.read_bytes()),
        _Entry(MLOCKALL_IN_IMAGE, 0o100755, mlockall_library().read_bytes()),
    ]
    if with_node_tool:
        entries.append(_Entry(NODE_TOOL_IN_IMAGE, 0o100755, node_tool_binary().read_bytes()))
    for lib in shared_libraries(DROPBEAR):
        entries.append(_Entry(lib.lstrip("/"), 0o100755, Path(lib).resolve().read_bytes()))
    return entries


def shared_libraries(binary: Path) -> list[str]:
    """Absolute paths of the libraries and loader a dynamic binary needs (from ``ldd``)."""
    out = _run(["ldd", str(binary)]).stdout
    return parse_ldd(out)


def parse_ldd(text: str) -> list[str]:
    """Library paths from ``ldd`` output (``x => /lib/x (0x..)`` and the loader line)."""
    libs: list[str] = []
    for line in text.splitlines():
        match = _LDD_PATH_RE.search(line)
        if match and match.group(1) not in libs:
            libs.append(match.group(1))
    return libs


def _module_entries(kernel: KernelArtifacts, modules: list[Path]) -> list[_Entry]:
    """The needed modules under /lib/modules/<kver>/ and their load order."""
    entries: list[_Entry] = []
    order: list[str] = []
    for module in modules:
        rel = module.relative_to(kernel.modules_dir)
        inside = f"lib/modules/{kernel.kver}/{rel}"
        entries.append(_Entry(inside, 0o100644, module.read_bytes()))
        order.append("/" + inside)
    listing = "".join(f"{line}\n" for line in order).encode()
    entries.append(_Entry("etc/swaplab/modules", 0o100644, listing))
    return entries


def _login_entries(keys: LabKeys) -> list[_Entry]:
    """Root account, host key and authorized_keys: dropbear refuses logins without them."""
    files = {
        "etc/passwd": "root:x:0:0:root:/root:/bin/sh\n",
        "etc/group": "root:x:0:\ntty:x:5:\n",
        "etc/shells": "/bin/sh\n",
        "etc/nsswitch.conf": "passwd: files\ngroup: files\nshadow: files\nhosts: files\n",
        "etc/hosts": "127.0.0.1 localhost\n",
    }
    entries = [_Entry(p, 0o100644, text.encode()) for p, text in files.items()]
    entries += [
        _Entry("root", 0o40700),
        _Entry("root/.ssh", 0o40700),
        _Entry("root/.ssh/authorized_keys", 0o100600, (keys.client_public + "\n").encode()),
        _Entry("etc/dropbear", 0o40700),
        _Entry(
            "etc/dropbear/dropbear_ed25519_host_key",
            0o100600,
            keys.host_private.read_bytes(),
        ),
    ]
    return entries


def _with_parents(entries: Iterable[_Entry]) -> list[_Entry]:
    """Add missing parent directories and sort so every parent precedes its children."""
    by_path = {e.path: e for e in entries}
    for path in list(by_path):
        parent = os.path.dirname(path)
        while parent and parent not in by_path:
            by_path[parent] = _Entry(parent, 0o40755)
            parent = os.path.dirname(parent)
    return [by_path[p] for p in sorted(by_path)]


# ---------------------------------------------------------------- cpio + gzip


def _cpio(entries: list[_Entry]) -> bytes:
    """A newc archive, root-owned, mtime 0 (identical inputs give identical bytes)."""
    out = io.BytesIO()
    for ino, entry in enumerate(entries, start=1):
        _cpio_member(out, ino, entry.path, entry.mode, entry.data, entry.rdev)
    _cpio_member(out, 0, "TRAILER!!!", 0, b"", (0, 0))
    return out.getvalue()


def _cpio_member(out: io.BytesIO, ino: int, name: str, mode: int, data: bytes, rdev: tuple[int, int]) -> None:
    nlink = 2 if stat.S_ISDIR(mode) else 1
    fields = (ino, mode, 0, 0, nlink, 0, len(data), 0, 0, rdev[0], rdev[1], len(name) + 1, 0)
    header = b"070701" + b"".join(f"{value:08x}".encode() for value in fields)
    out.write(header + name.encode() + b"\0")
    out.write(b"\0" * (-out.tell() % 4))
    out.write(data)
    out.write(b"\0" * (-out.tell() % 4))


def _gzip(data: bytes) -> bytes:
    return gzip.compress(data, compresslevel=9, mtime=0)


# ---------------------------------------------------------------- small helpers


def _link_or_copy(source: Path, target: Path) -> None:
    try:
        os.link(source, target)
    except OSError:
        shutil.copy2(source, target)


def _private_write(path: Path, data: bytes) -> None:
    """A new file readable by this user only, from its creation on (not chmod-ed after)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    with os.fdopen(fd, "wb") as handle:
        handle.write(data)


def _atomic_write(path: Path, data: bytes, mode: int) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    with os.fdopen(fd, "wb") as handle:
        handle.write(data)
    os.chmod(tmp, mode)
    tmp.replace(path)


def _file_digest(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _run(argv: list[str]) -> subprocess.CompletedProcess[str]:
    try:
        proc = subprocess.run(argv, capture_output=True, text=True, check=False)
    except FileNotFoundError as exc:
        raise ImageError(f"{argv[0]} is not installed") from exc
    if proc.returncode != 0:
        raise ImageError(f"{' '.join(argv)} failed: {proc.stderr.strip()[-800:]}")
    return proc
