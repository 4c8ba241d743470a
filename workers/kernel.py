"""Kernel artifacts: fetch a Debian kernel (or take a local one) and resolve its modules.

A node boots a stock ``vmlinuz`` plus the few modules it needs (virtio NIC, NFS client).
Kernels are never installed on the host: the ``.deb`` is downloaded with ``apt-get
download``, unpacked into swaplab's cache and normalised there so the image builder sees
one layout whatever the Debian release:

- modules always under ``<root>/lib/modules/<kver>`` (trixie ships ``usr/lib/modules``),
- modules always uncompressed (busybox ``insmod`` cannot load ``.ko.xz`` / ``.ko.zst``),
- ``modules.dep`` present (the ``.deb`` has none; ``depmod -b`` writes it).

Metapackages (``linux-image-amd64``) resolve to the concrete ABI package at fetch time,
because Debian drops superseded ABI packages from its mirror.

A local ``.deb`` or build is the submitter's: it is read without following links and
unpacked (``dpkg-deb --fsys-tarfile`` into Python's tarfile, member by member) or copied
into a fresh directory, and every member is checked (workers.untrusted) before depmod,
decompression or the image builder touch it. Decompression opens with ``O_NOFOLLOW`` and
writes with ``O_EXCL``, bounded.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import lzma
import os
import re
import shutil
import signal
import stat
import subprocess
import tarfile
import tempfile
import time
import zlib
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import IO, Protocol

from model.kernel import PACKAGE_RE, KernelSource
from model.paths import cache_dir
from workers import untrusted

Progress = Callable[[str], None]

# What every node loads: NIC, an entropy source (dropbear blocks for randomness at the
# first login without one), NFS client (v3 and v4.x; 4.1/4.2 live inside nfsv4.ko on
# Debian), and AF_PACKET for udhcpc. Missing-but-builtin entries are simply skipped.
NODE_MODULES: tuple[str, ...] = ("virtio_pci", "virtio_net", "virtio_rng", "af_packet", "nfsv3", "nfsv4")

# A concrete ABI package starts with the kernel release, e.g. linux-image-6.1.0-56-amd64.
_CONCRETE_RE = re.compile(r"^linux-image-\d+\.\d+")
_VERSION_RE = re.compile(r"^[0-9A-Za-z.+~:-]{1,100}$")
_KEYRING = Path("/usr/share/keyrings/debian-archive-keyring.gpg")
_DEFAULT_MIRROR = "http://deb.debian.org/debian"
_LISTS_MAX_AGE_S = 12 * 3600
_COMPRESSED = (".ko.xz", ".ko.zst", ".ko.gz")
# A kernel release as it names lib/modules/<kver> (and reaches depmod's and modprobe's argv).
_KVER_RE = re.compile(r"[0-9][0-9A-Za-z.+_~-]{0,99}")
_DEB_PACKAGE_RE = re.compile(r"[a-z0-9][a-z0-9+.-]{0,100}")
# Bounds on what a kernel may unpack to: a whole Debian kernel is about 450 MiB.
_KERNEL_TREE = untrusted.TreeRules(max_bytes=4 << 30, drop_link=untrusted.kbuild_link)
_VMLINUZ_MAX = 256 * untrusted.MIB
_MODULE_MAX = 512 * untrusted.MIB  # one decompressed module (the largest are a few dozen MiB)


class KernelError(RuntimeError):
    """A kernel could not be fetched, unpacked or resolved (an infra/input problem)."""


class KernelInputError(KernelError):
    """The submitter's kernel files are refused (a link, a device, setuid ...): the input's fault."""


@dataclass(frozen=True)
class KernelArtifacts:
    """A kernel ready for the image builder (all paths inside swaplab's cache or local)."""

    package: str
    version: str
    kver: str
    vmlinuz: Path
    modules_dir: Path
    source: str

    def to_json(self) -> dict[str, str]:
        """A JSON-safe dict (paths as strings)."""
        data = asdict(self)
        return {k: str(v) for k, v in data.items()}

    @classmethod
    def from_json(cls, data: dict[str, str]) -> KernelArtifacts:
        """The inverse of :meth:`to_json`."""
        return cls(
            package=data["package"],
            version=data["version"],
            kver=data["kver"],
            vmlinuz=Path(data["vmlinuz"]),
            modules_dir=Path(data["modules_dir"]),
            source=data["source"],
        )


# ---------------------------------------------------------------- public entry points


def fetch_kernel(source: KernelSource, progress: Progress | None = None) -> KernelArtifacts:
    """Make ``source`` available in the cache and return where its pieces are."""
    say = progress or (lambda _msg: None)
    if source.package is not None:
        return _fetch_package(source.package, source.suite, source.label(), say)
    try:
        if source.deb is not None:
            return _fetch_local_deb(source.deb, say)
        assert source.vmlinuz is not None and source.modules is not None
        return _fetch_local_build(source.vmlinuz, source.modules, say)
    except untrusted.RefusedFile as refused:
        raise KernelInputError(str(refused)) from None


def module_load_order(modules_dir: Path, kver: str, wanted: list[str]) -> list[Path]:
    """The ``insmod`` order (dependencies first) for ``wanted``; built-ins are left out."""
    root = _root_of(modules_dir, kver)
    order: list[Path] = []
    for name in wanted:
        proc = _run(["modprobe", "-d", str(root), "-S", kver, "--show-depends", name], check=False)
        if proc.returncode != 0:
            raise KernelError(f"kernel {kver} has no module {name!r}: {proc.stderr.strip()}")
        for path in parse_show_depends(proc.stdout):
            if Path(path) not in order:
                order.append(Path(path))
    return order


def parse_show_depends(text: str) -> list[str]:
    """Module paths from ``modprobe --show-depends`` output, in order, without repeats.

    ``insmod /path/x.ko [options]`` lines are modules to load; ``builtin x`` lines mean the
    driver is part of the kernel image and need nothing.
    """
    paths: list[str] = []
    for line in text.splitlines():
        fields = line.split()
        if len(fields) >= 2 and fields[0] == "insmod" and fields[1] not in paths:
            paths.append(fields[1])
    return paths


# ---------------------------------------------------------------- Debian packages


def _fetch_package(package: str, suite: str | None, label: str, say: Progress) -> KernelArtifacts:
    apt = _AptContext.for_suite(suite, say)
    concrete, version = _resolve(apt, package)
    say(f"kernel {label}: {concrete} {version}")
    key = f"{concrete}_{version.replace(':', '%3a')}"
    cached = _load_cached(key)
    if cached is not None:
        say(f"kernel {concrete} {version}: cached")
        return cached

    def produce(work: Path) -> tuple[str, str]:
        say(f"downloading {concrete}={version}")
        apt.run(["apt-get", "download", f"{concrete}={version}"], cwd=work)
        debs = list(work.glob("*.deb"))
        if len(debs) != 1:
            raise KernelError(f"apt-get download of {concrete}={version} gave {len(debs)} files")
        with _opened(debs[0]) as deb:
            _extract_deb(deb, work / "root", debs[0].name, say)
        debs[0].unlink()  # the unpacked tree is the cache; the .deb is dead weight
        return concrete, version

    return _build_cached(key, label, produce, say)


def _resolve(apt: _AptContext, package: str) -> tuple[str, str]:
    """Follow metapackage Depends to the concrete ``linux-image-<kver>`` and its version."""
    name = package
    for _ in range(4):  # metapackages nest at most once or twice (signed templates)
        fields = parse_apt_show(apt.run(["apt-cache", "show", "--no-all-versions", name]))
        version = fields.get("Version", "")
        if not _VERSION_RE.fullmatch(version):
            raise KernelError(f"apt has no usable version for {name!r}")
        if _CONCRETE_RE.match(name):
            return name, version
        nxt = _kernel_dependency(fields.get("Depends", ""))
        if nxt is None:
            raise KernelError(f"{name} {version} depends on no linux-image package")
        name = nxt
    raise KernelError(f"could not resolve {package!r} to a concrete kernel package")


def parse_apt_show(text: str) -> dict[str, str]:
    """The first stanza of ``apt-cache show`` as a field dict (continuations joined)."""
    fields: dict[str, str] = {}
    last = ""
    for line in text.splitlines():
        if not line.strip():
            if fields:
                break
            continue
        if line[0] in " \t" and last:
            fields[last] += " " + line.strip()
        elif ":" in line:
            last, _, value = line.partition(":")
            fields[last] = value.strip()
    return fields


def _kernel_dependency(depends: str) -> str | None:
    """The first ``linux-image-*`` package named in a Depends field (versions dropped)."""
    for clause in depends.split(","):
        for alt in clause.split("|"):
            name = alt.strip().split(" ", 1)[0].split(":", 1)[0]
            if PACKAGE_RE.fullmatch(name):
                return name
    return None


class _AptContext:
    """How to call apt: the host's own configuration, or a private one for another suite."""

    def __init__(self, options: list[str]) -> None:
        self.options = options

    @classmethod
    def for_suite(cls, suite: str | None, say: Progress) -> _AptContext:
        if suite is None:
            return cls([])
        base = cache_dir("apt", suite)
        ctx = cls(_private_apt_options(base, suite))
        _refresh_lists(ctx, base, suite, say)
        return ctx

    def run(self, argv: list[str], cwd: Path | None = None) -> str:
        full = [argv[0], *self.options, *argv[1:]]
        proc = _run(full, cwd=cwd, check=False)
        if proc.returncode != 0:
            raise KernelError(f"{' '.join(argv)} failed: {proc.stderr.strip()[-800:]}")
        return proc.stdout


def _private_apt_options(base: Path, suite: str) -> list[str]:
    """Write a private sources list + state dirs under ``base``; return apt ``-o`` options.

    A private configuration keeps other suites out of the host's apt: the host's sources,
    lists and status file are never touched, and ``apt-get update`` runs only for ours.
    """
    for sub in ("lists/partial", "cache/archives/partial", "sources.list.d", "preferences.d"):
        (base / sub).mkdir(parents=True, exist_ok=True)
    status = base / "status"
    status.touch()
    sources = base / "sources.list"
    sources.write_text(f"deb [signed-by={_KEYRING}] {host_mirror()} {suite} main\n")
    opts = {
        "Dir::Etc::SourceList": str(sources),
        "Dir::Etc::SourceParts": str(base / "sources.list.d"),
        "Dir::Etc::PreferencesParts": str(base / "preferences.d"),
        "Dir::Etc::Preferences": str(base / "preferences"),
        "Dir::State::Lists": str(base / "lists"),
        "Dir::State::status": str(status),
        "Dir::Cache": str(base / "cache"),
    }
    if os.geteuid() == 0:
        # apt drops to _apt for downloads, which cannot write into root's cache dir.
        opts["APT::Sandbox::User"] = "root"
    return [arg for k, v in opts.items() for arg in ("-o", f"{k}={v}")]


def _refresh_lists(ctx: _AptContext, base: Path, suite: str, say: Progress) -> None:
    stamp = base / "updated"
    if stamp.exists() and time.time() - stamp.stat().st_mtime < _LISTS_MAX_AGE_S:
        return
    say(f"apt-get update for suite {suite}")
    ctx.run(["apt-get", "update", "-q"])
    stamp.touch()


def host_mirror(
    sources_dir: Path = Path("/etc/apt/sources.list.d"),
    sources_list: Path = Path("/etc/apt/sources.list"),
) -> str:
    """The host's main Debian mirror URI (not the security one), or deb.debian.org."""
    texts = [p.read_text() for p in sorted(sources_dir.glob("*.sources"))]
    for text in texts:
        uri = parse_deb822_mirror(text)
        if uri:
            return uri
    lists = [sources_list, *sorted(sources_dir.glob("*.list"))]
    for path in lists:
        uri = parse_one_line_mirror(path.read_text()) if path.exists() else None
        if uri:
            return uri
    return _DEFAULT_MIRROR


def parse_deb822_mirror(text: str) -> str | None:
    """First ``URIs`` of a deb822 stanza of type deb whose suites are not security ones."""
    for stanza in re.split(r"\n\s*\n", text):
        fields = parse_apt_show(stanza)
        suites = fields.get("Suites", "").split()
        uris = fields.get("URIs", "").split()
        is_deb = "deb" in fields.get("Types", "").split()
        if is_deb and uris and suites and not any(s.endswith("-security") for s in suites):
            return uris[0]
    return None


def parse_one_line_mirror(text: str) -> str | None:
    """First URI of a one-line ``deb [opts] URI suite comps`` entry, security excluded."""
    for line in text.splitlines():
        line = re.sub(r"\[[^]]*\]", " ", line.split("#", 1)[0])
        fields = line.split()
        if len(fields) >= 3 and fields[0] == "deb" and not fields[2].endswith("-security"):
            return fields[1]
    return None


def apt_download(package: str, dest: Path, say: Progress) -> Path:
    """``apt-get download`` of one package (the host's apt configuration) into ``dest``."""
    say(f"downloading {package}")
    _AptContext.for_suite(None, say).run(["apt-get", "download", package], cwd=dest)
    debs = sorted(dest.glob(f"{package}_*.deb"))
    if len(debs) != 1:
        raise KernelError(f"apt-get download {package} gave {len(debs)} files")
    return debs[0]


# ---------------------------------------------------------------- local .deb / build


def _fetch_local_deb(deb: Path, say: Progress) -> KernelArtifacts:
    with _opened(deb) as handle:
        digest = _sha256(handle)
        key = f"deb-{digest[:24]}"
        cached = _load_cached(key)
        if cached is not None:
            return cached
        package = _deb_field(handle, "Package", _DEB_PACKAGE_RE, deb)
        version = _deb_field(handle, "Version", _VERSION_RE, deb)

        def produce(work: Path) -> tuple[str, str]:
            _extract_deb(handle, work / "root", str(deb), say)
            return package, version

        return _build_cached(key, f"deb:{deb}", produce, say)


def _deb_field(deb: IO[bytes], name: str, pattern: re.Pattern[str], shown: Path) -> str:
    fd = deb.fileno()
    proc = _run(["dpkg-deb", "-f", f"/dev/fd/{fd}", name], check=False, pass_fds=(fd,))
    value = proc.stdout.strip()
    if proc.returncode != 0 or not pattern.fullmatch(value):
        raise KernelInputError(f"{shown} is not a Debian package with a usable {name} field")
    return value


def _fetch_local_build(vmlinuz: Path, modules: Path, say: Progress) -> KernelArtifacts:
    """A local build: copied into the cache so depmod/decompression never touch it."""
    with _opened(vmlinuz) as image, _kver_dir(modules) as (kver_fd, kver):
        digest = hashlib.sha256(_sha256(image).encode() + _tree_signature(kver_fd)).hexdigest()
        key = f"local-{kver}-{digest[:16]}"
        cached = _load_cached(key)
        if cached is not None:
            return cached

        def produce(work: Path) -> tuple[str, str]:
            root = work / "root"
            say(f"copying local kernel {kver}")
            (root / "boot").mkdir(parents=True)
            _copy_bounded(image, root / "boot" / f"vmlinuz-{kver}", _VMLINUZ_MAX, vmlinuz)
            modules_dir = root / "lib" / "modules" / kver
            modules_dir.mkdir(parents=True)
            untrusted.copy_tree(kver_fd, modules_dir, _KERNEL_TREE, str(modules))
            return "local", "local"

        return _build_cached(key, f"local:{vmlinuz}", produce, say)


@contextmanager
def _kver_dir(modules: Path) -> Iterator[tuple[int, str]]:
    """``modules`` is either ``<kver>`` itself or a root holding ``lib/modules/<kver>``:
    an fd of that directory (opened without following links) and its name."""
    top = untrusted.open_dir(modules)
    fd, name = top, modules.name
    try:
        names = os.listdir(top)
        if not (_is_dir(top, "kernel") or any(entry.startswith("modules.") for entry in names)):
            fd, name = _kver_below(top, modules)
        if not _KVER_RE.fullmatch(name):
            raise KernelInputError(f"{modules}: {name!r} is not a kernel release (lib/modules/<kver>)")
        yield fd, name
    finally:
        if fd != top:
            os.close(fd)
        os.close(top)


def _kver_below(top: int, modules: Path) -> tuple[int, str]:
    for sub in ("lib/modules", "usr/lib/modules", "modules"):
        try:
            parent = untrusted.open_dir(Path(sub), dir_fd=top)
        except untrusted.RefusedFile:
            continue
        try:
            candidates = [entry.name for entry in os.scandir(parent) if entry.is_dir(follow_symlinks=False)]
            if len(candidates) == 1:
                return untrusted.open_dir(Path(candidates[0]), dir_fd=parent), candidates[0]
        finally:
            os.close(parent)
    raise KernelInputError(f"{modules} holds neither lib/modules/<kver> nor a <kver> directory")


def _is_dir(dir_fd: int, name: str) -> bool:
    try:
        return stat.S_ISDIR(os.stat(name, dir_fd=dir_fd, follow_symlinks=False).st_mode)
    except OSError:
        return False


def _tree_signature(tree_fd: int) -> bytes:
    """Names, sizes and times of a tree's files (links are not followed): its cache key."""
    entries = sorted(
        f"{'/'.join(parts)}:{info.st_size}:{info.st_mtime_ns}"
        for parts, info in untrusted.walk(tree_fd)
        if stat.S_ISREG(info.st_mode)
    )
    return "\n".join(entries).encode()


# ---------------------------------------------------------------- cache + normalising


def _load_cached(key: str) -> KernelArtifacts | None:
    meta = cache_dir("kernels") / key / "artifacts.json"
    if not meta.is_file():
        return None
    art = KernelArtifacts.from_json(json.loads(meta.read_text()))
    return art if art.vmlinuz.is_file() and art.modules_dir.is_dir() else None


def _build_cached(
    key: str,
    label: str,
    produce: Callable[[Path], tuple[str, str]],
    say: Progress,
) -> KernelArtifacts:
    """Run ``produce`` in a private temp dir, normalise, then rename into place atomically.

    Two workers fetching the same kernel both build; the first rename wins and the loser
    discards its copy, so readers never see a half-written tree.
    """
    kernels = cache_dir("kernels")
    work = Path(tempfile.mkdtemp(prefix=f".{key}.", dir=kernels))
    try:
        package, version = produce(work)
        root = work / "root"
        kver = _normalise_tree(root, say)
        final = kernels / key
        art = KernelArtifacts(
            package=package,
            version=version,
            kver=kver,
            vmlinuz=final / "root" / "boot" / f"vmlinuz-{kver}",
            modules_dir=final / "root" / "lib" / "modules" / kver,
            source=label,
        )
        (work / "artifacts.json").write_text(json.dumps(art.to_json(), indent=2) + "\n")
        try:
            work.rename(final)
        except OSError:
            if _load_cached(key) is None:
                raise
        return _load_cached(key) or art
    finally:
        if work.exists():
            shutil.rmtree(work, ignore_errors=True)


def unpack_deb(deb: Path, root: Path, say: Progress) -> None:
    """The files of the package ``deb`` unpacked into ``root`` (new), by the rules above."""
    try:
        with _opened(deb) as handle:
            _extract_deb(handle, root, str(deb), say)
    except untrusted.RefusedFile as refused:
        raise KernelInputError(str(refused)) from None


def _extract_deb(deb: IO[bytes], root: Path, label: str, say: Progress) -> None:
    """Unpack a .deb's files into ``root`` (new): dpkg-deb only decompresses its data
    archive; Python unpacks it, member by member, by workers.untrusted's rules."""
    say(f"unpacking {Path(label).name}")
    root.mkdir(parents=True)
    fd = deb.fileno()
    argv = ["dpkg-deb", "--fsys-tarfile", f"/dev/fd/{fd}"]
    with subprocess.Popen(
        argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, pass_fds=(fd,), start_new_session=True
    ) as proc:
        assert proc.stdout is not None and proc.stderr is not None
        try:
            with tarfile.open(fileobj=proc.stdout, mode="r|") as archive:
                untrusted.extract_tar(archive, root, _KERNEL_TREE, label)
            while proc.stdout.read(1 << 16):
                pass  # the archive's padding: dpkg-deb must not die of SIGPIPE
        except BaseException as err:
            # dpkg-deb decompresses in a child of its own: end both, or they wait on the pipe.
            os.killpg(proc.pid, signal.SIGKILL)
            if isinstance(err, untrusted.RefusedFile):
                raise KernelInputError(str(err)) from None
            raise
        finally:
            errors = proc.stderr.read(4096).decode(errors="replace").strip()
    if proc.returncode != 0:
        raise KernelInputError(f"dpkg-deb cannot read {label}: {errors[-800:]}")


def _normalise_tree(root: Path, say: Progress) -> str:
    """One layout for every kernel: lib/modules/<kver>, plain .ko files, modules.dep."""
    merged = root / "usr" / "lib" / "modules"
    plain = root / "lib" / "modules"
    if merged.is_dir() and not plain.exists():
        plain.parent.mkdir(parents=True, exist_ok=True)
        merged.rename(plain)  # merged-/usr kernels (trixie); depmod -b expects lib/modules
    kvers = [p.name for p in plain.glob("*") if p.is_dir()] if plain.is_dir() else []
    if len(kvers) != 1:
        raise KernelInputError(f"expected one lib/modules/<kver> in the kernel, found {kvers}")
    kver = kvers[0]
    if not _KVER_RE.fullmatch(kver):
        raise KernelInputError(f"{kver!r} is not a kernel release (lib/modules/<kver>)")
    if not _is_regular(root / "boot" / f"vmlinuz-{kver}"):
        raise KernelInputError(f"no boot/vmlinuz-{kver} in the kernel package")
    count = _decompress_modules(plain / kver)
    if count:
        say(f"decompressed {count} modules")
    say(f"depmod {kver}")
    _run(["depmod", "-b", str(root), kver])
    return kver


def _is_regular(path: Path) -> bool:
    try:
        return stat.S_ISREG(path.lstat().st_mode)
    except OSError:
        return False


def _decompress_modules(tree: Path) -> int:
    """Replace every compressed module by its plain .ko (busybox insmod needs plain ones)."""
    files = [
        Path(folder, name)
        for folder, _dirs, names in os.walk(tree)  # links to directories are not walked
        for name in names
        if name.endswith(_COMPRESSED) and _is_regular(Path(folder, name))
    ]
    with ThreadPoolExecutor(max_workers=os.cpu_count() or 2) as pool:
        list(pool.map(_decompress_one, files))  # lzma/zstd release the GIL or run apart
    return len(files)


def _decompress_one(path: Path) -> None:
    """``x.ko.xz`` -> ``x.ko``: read without following a link, written only as a new file."""
    target = path.with_suffix("")
    source_fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    try:
        out_fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644)
    except FileExistsError:
        os.close(source_fd)
        raise KernelInputError(f"{target.name} and {path.name} are both in the kernel's modules") from None
    with os.fdopen(source_fd, "rb") as source, os.fdopen(out_fd, "wb") as out:
        if path.suffix == ".zst":
            _unzstd(source, out, path)
        else:
            try:
                with _decompressing(source, path.suffix) as plain:
                    _copy_stream(plain, out, _MODULE_MAX, f"{path.name} decompresses to")
            except (lzma.LZMAError, gzip.BadGzipFile, zlib.error, EOFError) as err:
                raise KernelInputError(f"{path.name} does not decompress: {err}") from None
    path.unlink()


def _decompressing(source: IO[bytes], suffix: str) -> lzma.LZMAFile | gzip.GzipFile:
    return lzma.LZMAFile(source) if suffix == ".xz" else gzip.GzipFile(fileobj=source, mode="rb")


def _unzstd(source: IO[bytes], out: IO[bytes], path: Path) -> None:
    argv = ["zstd", "-d", "-q", "-c"]
    with subprocess.Popen(argv, stdin=source, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL) as proc:
        assert proc.stdout is not None
        try:
            _copy_stream(proc.stdout, out, _MODULE_MAX, f"{path.name} decompresses to")
        except KernelInputError:
            proc.kill()
            raise
    if proc.returncode != 0:
        raise KernelInputError(f"{path.name} does not decompress (zstd exit {proc.returncode})")


class _Readable(Protocol):
    def read(self, size: int = -1, /) -> bytes: ...


def _copy_stream(source: _Readable, out: IO[bytes], limit: int, what: str) -> None:
    """Copy at most ``limit`` bytes; more is refused ("<what> more than N MiB")."""
    total = 0
    while chunk := source.read(1 << 20):
        total += len(chunk)
        if total > limit:
            raise KernelInputError(f"{what} more than {limit >> 20} MiB")
        out.write(chunk)


def _copy_bounded(source: IO[bytes], target: Path, limit: int, shown: Path) -> None:
    source.seek(0)
    with os.fdopen(os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o644), "wb") as out:
        _copy_stream(source, out, limit, f"{shown} is")


# ---------------------------------------------------------------- small helpers


def _root_of(modules_dir: Path, kver: str) -> Path:
    """The ``-d`` root for modprobe: modules_dir is ``<root>/lib/modules/<kver>``."""
    if modules_dir.name != kver or modules_dir.parent.name != "modules":
        raise KernelError(f"{modules_dir} is not a <root>/lib/modules/{kver} directory")
    return modules_dir.parent.parent.parent


@contextmanager
def _opened(path: Path) -> Iterator[IO[bytes]]:
    """``path`` opened for reading: a regular file, reached without following any link."""
    with os.fdopen(untrusted.open_regular(path), "rb") as handle:
        yield handle


def _sha256(handle: IO[bytes]) -> str:
    digest = hashlib.sha256()
    handle.seek(0)
    for block in iter(lambda: handle.read(1 << 20), b""):
        digest.update(block)
    return digest.hexdigest()


def _run(
    argv: list[str], cwd: Path | None = None, check: bool = True, pass_fds: tuple[int, ...] = ()
) -> subprocess.CompletedProcess[str]:
    """Run argv without a shell; raise KernelError with stderr when ``check`` and it fails."""
    try:
        proc = subprocess.run(argv, cwd=cwd, capture_output=True, text=True, check=False, pass_fds=pass_fds)
    except FileNotFoundError as exc:
        raise KernelError(f"{argv[0]} is not installed") from exc
    if check and proc.returncode != 0:
        raise KernelError(f"{' '.join(argv)} failed: {proc.stderr.strip()[-800:]}")
    return proc
