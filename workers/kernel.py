"""Kernel artifacts: fetch a Debian kernel (or take a local one) and resolve its modules.

A node boots a stock ``vmlinuz`` plus the few modules it needs (virtio NIC, NFS client).
Kernels are never installed on the host: the ``.deb`` is downloaded with ``apt-get
download``, unpacked with ``dpkg-deb -x`` into swaplab's cache and normalised there so the
image builder sees one layout whatever the Debian release:

- modules always under ``<root>/lib/modules/<kver>`` (trixie ships ``usr/lib/modules``),
- modules always uncompressed (busybox ``insmod`` cannot load ``.ko.xz`` / ``.ko.zst``),
- ``modules.dep`` present (the ``.deb`` has none; ``depmod -b`` writes it).

Metapackages (``linux-image-amd64``) resolve to the concrete ABI package at fetch time,
because Debian drops superseded ABI packages from its mirror.
"""

from __future__ import annotations

import hashlib
import json
import lzma
import os
import re
import shutil
import subprocess
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path

from model.kernel import PACKAGE_RE, KernelSource
from model.paths import cache_dir

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


class KernelError(RuntimeError):
    """A kernel could not be fetched, unpacked or resolved (an infra/input problem)."""


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
    if source.deb is not None:
        return _fetch_local_deb(source.deb, say)
    assert source.vmlinuz is not None and source.modules is not None
    return _fetch_local_build(source.vmlinuz, source.modules, say)


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
        _extract_deb(debs[0], work / "root", say)
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
    if not deb.is_file():
        raise KernelError(f"no such .deb: {deb}")
    digest = _sha256(deb)
    key = f"deb-{digest[:24]}"
    cached = _load_cached(key)
    if cached is not None:
        return cached
    package = _run(["dpkg-deb", "-f", str(deb), "Package"]).stdout.strip()
    version = _run(["dpkg-deb", "-f", str(deb), "Version"]).stdout.strip()

    def produce(work: Path) -> tuple[str, str]:
        _extract_deb(deb, work / "root", say)
        return package, version

    return _build_cached(key, f"deb:{deb}", produce, say)


def _fetch_local_build(vmlinuz: Path, modules: Path, say: Progress) -> KernelArtifacts:
    """A local build: copied into the cache so depmod/decompression never touch it."""
    if not vmlinuz.is_file():
        raise KernelError(f"no such kernel image: {vmlinuz}")
    kver_dir = _local_kver_dir(modules)
    kver = kver_dir.name
    digest = hashlib.sha256(_sha256(vmlinuz).encode() + _tree_signature(kver_dir)).hexdigest()
    key = f"local-{kver}-{digest[:16]}"
    cached = _load_cached(key)
    if cached is not None:
        return cached

    def produce(work: Path) -> tuple[str, str]:
        root = work / "root"
        say(f"copying local kernel {kver}")
        (root / "boot").mkdir(parents=True)
        shutil.copy2(vmlinuz, root / "boot" / f"vmlinuz-{kver}")
        shutil.copytree(kver_dir, root / "lib" / "modules" / kver, symlinks=True)
        return "local", "local"

    return _build_cached(key, f"local:{vmlinuz}", produce, say)


def _local_kver_dir(modules: Path) -> Path:
    """``modules`` is either ``<kver>`` itself or a root holding ``lib/modules/<kver>``."""
    if (modules / "kernel").is_dir() or any(modules.glob("modules.*")):
        return modules
    for sub in ("lib/modules", "usr/lib/modules", "modules"):
        candidates = [p for p in (modules / sub).glob("*") if p.is_dir()]
        if len(candidates) == 1:
            return candidates[0]
    raise KernelError(f"{modules} holds neither lib/modules/<kver> nor a <kver> directory")


def _tree_signature(tree: Path) -> bytes:
    entries = sorted(
        f"{p.relative_to(tree)}:{p.stat().st_size}:{p.stat().st_mtime_ns}" for p in tree.rglob("*") if p.is_file()
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


def _extract_deb(deb: Path, root: Path, say: Progress) -> None:
    say(f"unpacking {deb.name}")
    root.mkdir(parents=True, exist_ok=True)
    _run(["dpkg-deb", "-x", str(deb), str(root)])


def _normalise_tree(root: Path, say: Progress) -> str:
    """One layout for every kernel: lib/modules/<kver>, plain .ko files, modules.dep."""
    merged = root / "usr" / "lib" / "modules"
    plain = root / "lib" / "modules"
    if merged.is_dir() and not plain.exists():
        plain.parent.mkdir(parents=True, exist_ok=True)
        merged.rename(plain)  # merged-/usr kernels (trixie); depmod -b expects lib/modules
    kvers = [p.name for p in plain.glob("*") if p.is_dir()] if plain.is_dir() else []
    if len(kvers) != 1:
        raise KernelError(f"expected one lib/modules/<kver> in the kernel, found {kvers}")
    kver = kvers[0]
    if not (root / "boot" / f"vmlinuz-{kver}").is_file():
        raise KernelError(f"no boot/vmlinuz-{kver} in the kernel package")
    count = _decompress_modules(plain / kver)
    if count:
        say(f"decompressed {count} modules")
    say(f"depmod {kver}")
    _run(["depmod", "-b", str(root), kver])
    return kver


def _decompress_modules(tree: Path) -> int:
    """Replace every compressed module by its plain .ko (busybox insmod needs plain ones)."""
    files = [p for p in tree.rglob("*") if p.name.endswith(_COMPRESSED) and p.is_file()]
    with ThreadPoolExecutor(max_workers=os.cpu_count() or 2) as pool:
        list(pool.map(_decompress_one, files))  # lzma/zstd release the GIL or run apart
    return len(files)


def _decompress_one(path: Path) -> None:
    target = path.with_suffix("")  # x.ko.xz -> x.ko
    if path.suffix == ".xz":
        target.write_bytes(lzma.decompress(path.read_bytes()))
    elif path.suffix == ".zst":
        _run(["zstd", "-d", "-q", "-f", "-o", str(target), str(path)])
    else:
        import gzip

        target.write_bytes(gzip.decompress(path.read_bytes()))
    path.unlink()


# ---------------------------------------------------------------- small helpers


def _root_of(modules_dir: Path, kver: str) -> Path:
    """The ``-d`` root for modprobe: modules_dir is ``<root>/lib/modules/<kver>``."""
    if modules_dir.name != kver or modules_dir.parent.name != "modules":
        raise KernelError(f"{modules_dir} is not a <root>/lib/modules/{kver} directory")
    return modules_dir.parent.parent.parent


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _run(argv: list[str], cwd: Path | None = None, check: bool = True) -> subprocess.CompletedProcess[str]:
    """Run argv without a shell; raise KernelError with stderr when ``check`` and it fails."""
    try:
        proc = subprocess.run(argv, cwd=cwd, capture_output=True, text=True, check=False)
    except FileNotFoundError as exc:
        raise KernelError(f"{argv[0]} is not installed") from exc
    if check and proc.returncode != 0:
        raise KernelError(f"{' '.join(argv)} failed: {proc.stderr.strip()[-800:]}")
    return proc
