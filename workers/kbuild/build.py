"""Build a campaign's ``build`` kernel: tree, patches, config, check, compile — or find it.

Through tuxmake (the build wrapper KernelCI and TuxSuite use) with its host-toolchain
runtime (``--runtime null``: no containers here), for ``ARCH=x86_64``, with ccache and a
``-j`` that leaves a core to guests already running on the host, nice'd. The stages:

1. the tree: the resolved commit of a git repository, or a tarball committed once
   (workers.kbuild.tree);
2. the content hash of every input (tree identity, each patch, the config base and
   fragments, swaplab's fragment, the toolchain): a cached artifact of that hash answers
   at once, a cached failure too;
3. the patches, applied like ``git am`` (workers.kbuild.patches);
4. the config: the base, the user's fragments, a fragment pinning the release's local
   version, swaplab's node fragment last; then every option a node needs is checked
   before anything compiles (workers.kbuild.kconfig);
5. the kernel (and modules when the config has them), with the build's identity pinned
   (``KBUILD_BUILD_TIMESTAMP``, ``_USER``, ``_HOST``) so its version string is known.

Whose fault: a patch that does not apply, a config that lost an option, a compile error
are the input's (cached, the run is invalid); a build killed, out of memory or out of disk
is the host's (not cached, infra-error).

The build runs the submitter's code (a patch may change any Makefile), so it runs as the
build user in a sandbox (workers.kbuild.sandbox: no network, a private home, no root), in
its lineage's own tree, build directory and ccache (workers.kbuild.lineage). Root reads the
submitter's patches and configs without following links and hands the build copies; of
what the build leaves it reads only what it needs (release, ``.config``, the version
header, the artifact's files), the same way and bounded, into the artifact cache (root's).
A host without the build user answers with an infra-error naming ``scripts/setup``.
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from model.kernel import BuildSpec, DebianSource, GitSource
from model.paths import cache_dir
from workers import untrusted
from workers.kbuild import artifacts, kconfig, lineage, patches, sandbox, tree
from workers.kbuild.artifacts import Artifact
from workers.kbuild.lineage import BUILD, OUT, SRC, Lineage
from workers.kernel import KernelError

Progress = Callable[[str], None]
Built = tuple[dict[str, Path], dict[str, Any]]  # the artifact's files and what is known of it
TUXMAKE = Path(sys.executable).with_name("tuxmake")  # installed beside swaplab (pyproject)
# The build user runs tuxmake (pure Python) with the system's interpreter: the venv's may
# live where that user cannot look (under /root). Its package is bound in read-only.
PYTHON = "/usr/bin/python3"
TOOLS = sandbox.INSIDE / "python"
INPUTS = sandbox.INSIDE / "inputs"
# The build's identity in its version string, pinned: its `uname -v` is known before it boots.
KBUILD_USER = "swaplab"
KBUILD_HOST = "swaplab"
CCACHE_MAX = "5G"
_INFRA_MARKERS = ("No space left on device", "Killed", "virtual memory exhausted", "Cannot allocate memory")
_CONFIG_MAX = 4 * untrusted.MIB  # a config file of the submitter's, or the build's .config
_LOG_KEPT = 16 * untrusted.MIB  # the end of the build log kept in the artifact
_LOG_READ = untrusted.MIB  # the end of the build log read to say why it failed
_RELEASE = re.compile(r"[0-9][0-9A-Za-z.+_~-]{0,99}")
_UTS_VERSION = re.compile(r"[ -~]{1,200}")
# What swaplab takes back from a build (name in the artifact, where the build leaves it, bound).
_OUTPUTS = (
    ("bzImage", OUT / "bzImage", 256 * untrusted.MIB),
    ("config", BUILD / ".config", _CONFIG_MAX),
    ("System.map", BUILD / "System.map", 64 * untrusted.MIB),
    ("tuxmake-metadata.json", OUT / "metadata.json", _CONFIG_MAX),
)
_MODULES_TREE = untrusted.TreeRules(max_bytes=4 << 30, drop_link=untrusted.kbuild_link)


class BuildError(KernelError):
    """A build that did not give a kernel; ``cause`` "input" (cached) or "infra" (not)."""

    def __init__(self, cause: str, stage: str, reason: str) -> None:
        super().__init__(f"{stage}: {reason}")
        self.cause = cause
        self.stage = stage
        self.reason = reason


@dataclass(frozen=True)
class Inputs:
    """Everything the artifact is made of (the submitter's files as read), its hash and lineage."""

    tree: tree.SourceTree
    series: list[patches.SeriesFile]
    digest: str
    base_config: bytes | None = None
    fragments: tuple[bytes, ...] = ()
    lineage: str = ""


def build_kernel(spec: BuildSpec, say: Progress, jobs: int | None = None, fresh: bool = False) -> Artifact:
    """The artifact of ``spec``: from the cache, or built now (BuildError if it cannot be) —
    in its lineage's last tree and objects when they fit, in a fresh tree with ``fresh``."""
    inputs = _inputs(spec, say)
    cached = artifacts.find(inputs.digest)
    if cached is not None:
        say(f"cached: {cached.summary()}")
        artifacts.touch(cached)
        return _answer(cached)
    with artifacts.building(inputs.digest):
        cached = artifacts.find(inputs.digest)  # built by whoever held the lock before us
        if cached is not None:
            say(f"built meanwhile by another request: {cached.summary()}")
            return _answer(cached)
        return _answer(_build(spec, inputs, say, jobs or default_jobs(), fresh))


def inputs_digest(spec: BuildSpec, say: Progress) -> str:
    """The content hash ``spec`` would be built (or found) under."""
    return _inputs(spec, say).digest


def _answer(artifact: Artifact) -> Artifact:
    if not artifact.ok:
        raise BuildError("input", str(artifact.meta.get("stage")), str(artifact.meta.get("error")))
    return artifact


def _inputs(spec: BuildSpec, say: Progress) -> Inputs:
    source_tree = _tree(spec, say)
    try:
        series = patches.read_series(spec.patches) if spec.patches is not None else []
        if spec.patches_upto is not None:
            series = _first_patches(series, spec.patches_upto, str(spec.patches))
        base = spec.config.base_file
        base_config = untrusted.read_regular(base, _CONFIG_MAX) if base is not None else None
        fragments = tuple(untrusted.read_regular(fragment, _CONFIG_MAX) for fragment in spec.config.fragments)
    except (patches.PatchError, untrusted.RefusedFile) as refused:
        raise BuildError("input", "inputs", str(refused)) from None
    digest = hashlib.sha256(f"{artifacts.FORMAT}\0{source_tree.identity}\0".encode())
    for file in series:
        digest.update(b"patch\0" + file.data)
    digest.update(b"base\0" + (base_config if base_config is not None else spec.config.base.encode()))
    for fragment in (*fragments, kconfig.SWAPLAB_FRAGMENT.read_bytes()):
        digest.update(b"fragment\0" + fragment)
    digest.update(b"toolchain\0" + toolchain().encode())
    source = f"git:{spec.source.git}" if isinstance(spec.source, GitSource) else source_tree.identity
    theirs = [path for field, path in spec.local_paths().items() if field[0] != "source"]
    key = lineage.key(source, theirs)
    return Inputs(source_tree, series, digest.hexdigest(), base_config, fragments, key)


def _first_patches(series: list[patches.SeriesFile], count: int, label: str) -> list[patches.SeriesFile]:
    """The series' first ``count`` patches, one file each (an mbox holds them all)."""
    each = patches.messages(series, label)
    if count > len(each):
        raise patches.PatchError(f"patch series {label} holds {len(each)} patch(es), not the {count} to build with")
    return each[:count]


def _tree(spec: BuildSpec, say: Progress) -> tree.SourceTree:
    source = spec.source
    if isinstance(source, GitSource):
        return tree.from_git(source.git, source.ref, say)
    if isinstance(source, DebianSource):
        return tree.from_debian(source.debian, say)
    return tree.from_tarball(source.tarball, say)


def toolchain() -> str:
    """The compiler, make and tuxmake versions (part of every build's hash)."""
    lines = []
    for argv in (["gcc", "--version"], ["make", "--version"], [str(TUXMAKE), "--version"]):
        proc = subprocess.run(argv, capture_output=True, text=True, check=False)
        lines.append((proc.stdout or proc.stderr).splitlines()[0] if (proc.stdout or proc.stderr) else argv[0])
    return "\n".join(lines)


def default_jobs() -> int:
    """A job per core, less one per guest already running on this host (at least one): a
    TCG guest starved of CPU can look hung. The build is nice'd as well."""
    return max(1, (os.cpu_count() or 1) - running_guests())


def running_guests() -> int:
    """QEMU processes alive on this host (swaplab's or anyone's)."""
    count = 0
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                count += (entry / "comm").read_text().startswith("qemu-system")
            except OSError:
                continue  # gone meanwhile
    return count


# -- the build itself -----------------------------------------------------------------------------------
def _build(spec: BuildSpec, inputs: Inputs, say: Progress, jobs: int, fresh: bool) -> Artifact:
    began = time.monotonic()
    builder = sandbox.account()  # no build user: an infra-error before anything runs
    staging = Path(tempfile.mkdtemp(prefix=f"build-{inputs.digest[:12]}.", dir=cache_dir("kbuild", "work")))
    try:
        try:
            with lineage.held(inputs.lineage, builder) as place:
                files, meta = _kept(place, lambda: _build_in(place, staging, spec, inputs, say, jobs, began, fresh))
        finally:
            lineage.evict(keep=inputs.lineage, cap=artifacts.cap_bytes())
        return artifacts.store(inputs.digest, files, meta)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _kept(place: Lineage, build: Callable[[], Built]) -> Built:
    """``build``, the lineage's work tree kept for its next build when the build ended on
    its own (built, or its input failed); removed when the host stopped it half way."""
    try:
        built = build()
    except BuildError as err:
        if err.cause == "input":
            place.settle()
        else:
            place.clean()
        raise
    except BaseException:
        place.clean()
        raise
    place.settle()
    return built


def work_identity(spec: BuildSpec, inputs: Inputs) -> str:
    """What a kept build directory was made for: the toolchain and every config input but
    the release's local version (a changed option rebuilds only what it reaches; a new
    compiler or base config is a fresh tree)."""
    digest = hashlib.sha256(f"{artifacts.FORMAT}\0{toolchain()}\0".encode())
    digest.update(b"base\0" + (inputs.base_config if inputs.base_config is not None else spec.config.base.encode()))
    for fragment in (*inputs.fragments, kconfig.SWAPLAB_FRAGMENT.read_bytes()):
        digest.update(b"fragment\0" + fragment)
    return digest.hexdigest()[:32]


def _build_in(
    place: Lineage,
    staging: Path,
    spec: BuildSpec,
    inputs: Inputs,
    say: Progress,
    jobs: int,
    began: float,
    fresh: bool,
) -> tuple[dict[str, Path], dict[str, Any]]:
    """The stages, run by the build user in the lineage's directory: the artifact's files
    (copied into ``staging``, root's) and what is known of it."""
    box = _sandbox(place, inputs, _stage_inputs(staging / "inputs", spec, inputs))
    _preflight(box)
    say(f"stage tree (lineage {place.key[:12]})")
    kept = lineage.checkout(box, inputs.tree, work_identity(spec, inputs), fresh)
    say("tree: the last build's tree and objects, brought to this commit" if kept else "tree: a fresh checkout")
    applied = _stage(inputs, "patches", say, lambda: _apply(box, staging, spec, say))
    config = _stage(inputs, "config", say, lambda: _configure(box, place, staging, spec, inputs, say, jobs))
    targets = ["kernel", "modules"] if config.get("MODULES") == "y" else ["kernel"]
    _stage(inputs, "kernel", say, lambda: _tuxmake(box, staging, spec, inputs, say, jobs, targets))
    files, meta = _stage(inputs, "collect", say, lambda: _take_back(place, staging, spec, inputs, applied, began))
    return files, {**meta, "incremental": kept}


def _stage(inputs: Inputs, stage: str, say: Progress, action: Callable[[], Any]) -> Any:
    """Run one stage; a failure of the input is cached (with its log), one of the host is not."""
    say(f"stage {stage}")
    try:
        return action()
    except BuildError as err:
        if err.cause == "input":
            artifacts.store(inputs.digest, {}, {"status": "failed", "stage": stage, "error": err.reason})
        raise
    except (patches.PatchError, tree.TreeError, untrusted.RefusedFile) as err:
        artifacts.store(inputs.digest, {}, {"status": "failed", "stage": stage, "error": str(err)})
        raise BuildError("input", stage, str(err)) from err


def _stage_inputs(into: Path, spec: BuildSpec, inputs: Inputs) -> Path:
    """Copies of everything the build reads of the submitter's and swaplab's, for the sandbox
    (bound read-only): the build never reads the submitter's own files."""
    config = into / "config"
    config.mkdir(parents=True)
    patches.stage_series(inputs.series, into / "patches")
    files = {f"fragment-{index}.config": data for index, data in enumerate(inputs.fragments, 1)} | {
        "localversion.config": f'CONFIG_LOCALVERSION="-swaplab-{inputs.digest[:8]}"\n'
        "# CONFIG_LOCALVERSION_AUTO is not set\n".encode(),
        "swaplab.config": kconfig.SWAPLAB_FRAGMENT.read_bytes(),
    }
    if inputs.base_config is not None:
        files["base.config"] = inputs.base_config
    for name, data in files.items():
        (config / name).write_bytes(data)
    for path in (into, *into.rglob("*")):
        path.chmod(0o755 if path.is_dir() else 0o644)  # the build user reads them
    return into


def _sandbox(place: Lineage, inputs: Inputs, staged: Path) -> sandbox.Sandbox:
    binds = [
        place.bind(),
        sandbox.Bind(staged, INPUTS.name),
        sandbox.Bind(_tuxmake_package(), f"{TOOLS.name}/tuxmake"),
        *lineage.base_binds(inputs.tree),
    ]
    env = {
        "CCACHE_DIR": str(lineage.CCACHE),
        "CCACHE_MAXSIZE": CCACHE_MAX,
        # Every build of a lineage runs in the same place: paths below it are made relative
        # (make runs in build/, the tree is ../src), so a rebuild hits the cache.
        "CCACHE_BASEDIR": str(lineage.WORK),
        "CCACHE_NOHASHDIR": "1",
        "PYTHONPATH": str(TOOLS),
        "PYTHONDONTWRITEBYTECODE": "1",
    }
    return sandbox.Sandbox(binds, env)


def _tuxmake_package() -> Path:
    found = importlib.util.find_spec("tuxmake")
    if found is None or not found.submodule_search_locations:
        raise sandbox.SandboxError("tuxmake is not installed beside swaplab: run scripts/setup")
    return Path(next(iter(found.submodule_search_locations)))


def _preflight(box: sandbox.Sandbox) -> None:
    """The build user can run tuxmake here, or the host is not set up (infra, never cached)."""
    proc = box.run([PYTHON, "-s", "-m", "tuxmake", "--version"])
    if proc.returncode != 0:
        words = (proc.stderr or proc.stdout).strip()[-800:]
        raise sandbox.SandboxError(f"the build user cannot run tuxmake with {PYTHON} (exit {proc.returncode}): {words}")


def _apply(box: sandbox.Sandbox, staging: Path, spec: BuildSpec, say: Progress) -> list[dict[str, str]]:
    if spec.patches is None or spec.patches_upto == 0:
        return []
    files = sorted((staging / "inputs" / "patches").glob("*.patch"))
    inside = [str(INPUTS / "patches" / path.name) for path in files]
    applied = patches.apply_staged(_build_users_git(box), files, inside, str(spec.patches))
    for index, patch in enumerate(applied, 1):
        say(f"applied {index}/{len(applied)}: {patch.subject}")
    return [{"subject": patch.subject, "author": patch.author} for patch in applied]


def _build_users_git(box: sandbox.Sandbox) -> patches.Git:
    """git in the build's tree, run by the build user, with swaplab's settings only."""

    def run(args: Sequence[str], check: bool) -> subprocess.CompletedProcess[str]:
        argv = ["env", "LC_ALL=C", "LANGUAGE=C", "git", "-C", str(SRC), *tree.GIT_IDENTITY, *args]
        proc = box.run(argv)
        if check and proc.returncode != 0:
            raise patches.PatchError(
                f"git {' '.join(args[:2])} in the build's tree: {(proc.stderr or proc.stdout).strip()}"
            )
        return proc

    return run


def _configure(
    box: sandbox.Sandbox, place: Lineage, staging: Path, spec: BuildSpec, inputs: Inputs, say: Progress, jobs: int
) -> dict[str, str]:
    _tuxmake(box, staging, spec, inputs, say, jobs, ["config"])
    text = place.read(BUILD / ".config", _CONFIG_MAX).decode(errors="replace")
    source = place.open_dir(SRC)
    try:
        missing = kconfig.missing_options(text, source)
    except FileNotFoundError as err:
        raise BuildError("input", "config", str(err)) from None
    finally:
        os.close(source)
    if missing:
        raise BuildError("input", "config", "options a node needs are not set:\n" + kconfig.describe(missing))
    return kconfig.parse_config(text)


def _tuxmake(
    box: sandbox.Sandbox,
    staging: Path,
    spec: BuildSpec,
    inputs: Inputs,
    say: Progress,
    jobs: int,
    targets: list[str],
) -> None:
    config = INPUTS / "config"
    base = str(config / "base.config") if inputs.base_config is not None else spec.config.base
    fragments = [
        *(config / f"fragment-{index}.config" for index in range(1, len(inputs.fragments) + 1)),
        config / "localversion.config",
        config / "swaplab.config",  # swaplab's last: it wins
    ]
    argv = [
        "nice", "-n", "10", PYTHON, "-s", "-m", "tuxmake",
        "-C", str(SRC), "-b", str(BUILD), "-o", str(OUT),
        "--runtime", "null", "--target-arch", "x86_64", "--toolchain", "gcc", "--wrapper", "ccache",
        "--jobs", str(jobs), "--kconfig", base,
        *[arg for fragment in fragments for arg in ("--kconfig-add", str(fragment))],
        "--environment", f"KBUILD_BUILD_TIMESTAMP={_timestamp(inputs.digest)}",
        "--environment", f"KBUILD_BUILD_USER={KBUILD_USER}", "--environment", f"KBUILD_BUILD_HOST={KBUILD_HOST}",
        # The build number of `uname -v` ("#1"): a kept build directory would count up.
        "--environment", "KBUILD_BUILD_VERSION=1",
        # Set and empty: no "+" after the release for a tree that is not at a tag.
        "--environment", "LOCALVERSION=",
        *targets,
    ]  # fmt: skip
    _run_logged(box, argv, staging / "tuxmake.log", say, targets[-1])


def _timestamp(digest: str) -> str:
    # A fixed, date-parsable instant per input hash: scripts that feed it to `date -d` work,
    # and the version string is the same on every rebuild of the same inputs.
    return f"@{1_700_000_000 + int(digest[:6], 16)}"


def _run_logged(box: sandbox.Sandbox, argv: list[str], log: Path, say: Progress, target: str) -> None:
    began = time.monotonic()
    with log.open("ab") as out, box.started(argv, out, out) as proc:
        while proc.poll() is None:
            time.sleep(2.0)
            say(f"make {target}: {time.monotonic() - began:.0f} s")
    if proc.returncode == 0:
        return
    text = _tail(log, _LOG_READ).decode(errors="replace")
    tail = "\n".join(text.splitlines()[-25:])
    if proc.returncode < 0 or any(marker in text for marker in _INFRA_MARKERS):
        raise BuildError("infra", target, f"the build was stopped by the host (exit {proc.returncode}):\n{tail}")
    raise BuildError("input", target, f"{_first_error(text) or 'make failed'}\n{tail}")


def _tail(path: Path, size: int) -> bytes:
    """The last ``size`` bytes of a file of ours (the build log may be long)."""
    with path.open("rb") as handle:
        handle.seek(max(0, handle.seek(0, os.SEEK_END) - size))
        return handle.read(size)


def _first_error(text: str) -> str | None:
    for line in text.splitlines():
        if re.search(r"\berror\b", line) and ":" in line:
            return line.strip()
    return None


def _take_back(
    place: Lineage, staging: Path, spec: BuildSpec, inputs: Inputs, applied: list[dict[str, str]], began: float
) -> tuple[dict[str, Path], dict[str, Any]]:
    """The artifact's files copied out of the build (links never followed, sizes bounded)
    into a directory of root's, and what is known of it."""
    files = _artifact_files(place, staging)
    return files, _meta(place, spec, inputs, applied, time.monotonic() - began)


def _meta(
    place: Lineage, spec: BuildSpec, inputs: Inputs, applied: list[dict[str, str]], seconds: float
) -> dict[str, Any]:
    release = place.read(BUILD / "include" / "config" / "kernel.release", 4096).decode(errors="replace").strip()
    if not _RELEASE.fullmatch(release):
        raise BuildError("input", "kernel", f"the build's kernel release {release[:100]!r} is not a release name")
    return {
        "status": "ok",
        "stage": "done",
        "label": spec.label(),
        "release": release,
        "uts_version": _uts_version(place),
        "compiler": toolchain().splitlines()[0],
        "patches": applied,
        "inputs": {
            "tree": inputs.tree.identity,
            "patches": [file.name for file in inputs.series],
            "config": spec.config.model_dump(mode="json"),
        },
        "build_seconds": round(seconds, 1),
    }


def _uts_version(place: Lineage) -> str:
    """What `uname -v` will print, from the generated header (its place moved across releases)."""
    for header in ("include/generated/utsversion.h", "include/generated/compile.h"):
        if place.exists(BUILD / header):
            text = place.read(BUILD / header, 65536).decode(errors="replace")
            match = re.search(r'#define UTS_VERSION "([^"]*)"', text)
            if match and _UTS_VERSION.fullmatch(match.group(1)):
                return match.group(1)
    raise BuildError("infra", "kernel", "the build left no UTS_VERSION")


def _artifact_files(place: Lineage, staging: Path) -> dict[str, Path]:
    into = staging / "artifact"
    into.mkdir()
    files = {"build.log": into / "build.log"}
    with (staging / "tuxmake.log").open("rb") as log:
        log.seek(max(0, log.seek(0, os.SEEK_END) - _LOG_KEPT))
        _copy_out(log, files["build.log"], _LOG_KEPT)
    for name, inside, limit in _OUTPUTS:
        if place.exists(inside):
            with os.fdopen(place.open_file(inside), "rb") as source:
                _copy_out(source, into / name, limit)
            files[name] = into / name
    modules = OUT / "modules.tar.xz"
    if place.exists(modules):
        (into / "modules").mkdir()
        with os.fdopen(place.open_file(modules), "rb") as packed, tarfile.open(fileobj=packed, mode="r|xz") as archive:
            untrusted.extract_tar(archive, into / "modules", _MODULES_TREE, "modules.tar.xz")
        files["modules"] = into / "modules"
    return files


def _copy_out(source: IO[bytes], target: Path, limit: int) -> None:
    """``source`` into a new file of ours, refused past ``limit`` bytes."""
    with target.open("xb") as out:
        copied = 0
        while chunk := source.read(1 << 20):
            copied += len(chunk)
            if copied > limit:
                raise untrusted.RefusedFile(f"the build's {target.name} is larger than {limit >> 20} MiB")
            out.write(chunk)
