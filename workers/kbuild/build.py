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
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from model.kernel import BuildSpec, DebianSource, GitSource
from model.paths import cache_dir
from workers.kbuild import artifacts, kconfig, patches, tree
from workers.kbuild.artifacts import Artifact
from workers.kernel import KernelError

Progress = Callable[[str], None]
TUXMAKE = Path(sys.executable).with_name("tuxmake")  # installed beside swaplab (pyproject)
# The build's identity, pinned: its `uname -v` is then known before it boots.
BUILD_USER = "swaplab"
BUILD_HOST = "swaplab"
CCACHE_MAX = "5G"
_INFRA_MARKERS = ("No space left on device", "Killed", "virtual memory exhausted", "Cannot allocate memory")


class BuildError(KernelError):
    """A build that did not give a kernel; ``cause`` "input" (cached) or "infra" (not)."""

    def __init__(self, cause: str, stage: str, reason: str) -> None:
        super().__init__(f"{stage}: {reason}")
        self.cause = cause
        self.stage = stage
        self.reason = reason


@dataclass(frozen=True)
class Inputs:
    """Everything the artifact is made of, and its hash."""

    tree: tree.SourceTree
    series: list[Path]
    digest: str


def build_kernel(spec: BuildSpec, say: Progress, jobs: int | None = None) -> Artifact:
    """The artifact of ``spec``: from the cache, or built now (BuildError if it cannot be)."""
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
        return _answer(_build(spec, inputs, say, jobs or default_jobs()))


def inputs_digest(spec: BuildSpec, say: Progress) -> str:
    """The content hash ``spec`` would be built (or found) under."""
    return _inputs(spec, say).digest


def _answer(artifact: Artifact) -> Artifact:
    if not artifact.ok:
        raise BuildError("input", str(artifact.meta.get("stage")), str(artifact.meta.get("error")))
    return artifact


def _inputs(spec: BuildSpec, say: Progress) -> Inputs:
    source_tree = _tree(spec, say)
    series = patches.series_files(spec.patches) if spec.patches is not None else []
    digest = hashlib.sha256(f"{artifacts.FORMAT}\0{source_tree.identity}\0".encode())
    for path in series:
        digest.update(b"patch\0" + path.read_bytes())
    base = spec.config.base_file
    digest.update(b"base\0" + (base.read_bytes() if base is not None else spec.config.base.encode()))
    for fragment in (*spec.config.fragments, kconfig.SWAPLAB_FRAGMENT):
        digest.update(b"fragment\0" + fragment.read_bytes())
    digest.update(b"toolchain\0" + toolchain().encode())
    return Inputs(source_tree, series, digest.hexdigest())


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
def _build(spec: BuildSpec, inputs: Inputs, say: Progress, jobs: int) -> Artifact:
    began = time.monotonic()
    work = Path(tempfile.mkdtemp(prefix=f"build-{inputs.digest[:12]}.", dir=cache_dir("kbuild", "work")))
    try:
        with tree.worktree(inputs.tree, work / "src") as src:
            applied = _stage(inputs, "patches", say, lambda: _apply(src, spec, say))
            config = _stage(inputs, "config", say, lambda: _configure(src, work, spec, inputs, say, jobs))
            targets = ["kernel", "modules"] if config.get("MODULES") == "y" else ["kernel"]
            _stage(inputs, "kernel", say, lambda: _tuxmake(src, work, spec, inputs, say, jobs, targets))
            meta = _meta(src, work, spec, inputs, applied, time.monotonic() - began)
        return artifacts.store(inputs.digest, _artifact_files(work), meta)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _stage(inputs: Inputs, stage: str, say: Progress, action: Callable[[], Any]) -> Any:
    """Run one stage; a failure of the input is cached (with its log), one of the host is not."""
    say(f"stage {stage}")
    try:
        return action()
    except BuildError as err:
        if err.cause == "input":
            artifacts.store(inputs.digest, {}, {"status": "failed", "stage": stage, "error": err.reason})
        raise
    except (patches.PatchError, tree.TreeError) as err:
        artifacts.store(inputs.digest, {}, {"status": "failed", "stage": stage, "error": str(err)})
        raise BuildError("input", stage, str(err)) from err


def _apply(src: Path, spec: BuildSpec, say: Progress) -> list[dict[str, str]]:
    if spec.patches is None:
        return []
    applied = patches.apply_series(src, spec.patches)
    for index, patch in enumerate(applied, 1):
        say(f"applied {index}/{len(applied)}: {patch.subject}")
    return [{"subject": patch.subject, "author": patch.author} for patch in applied]


def _configure(src: Path, work: Path, spec: BuildSpec, inputs: Inputs, say: Progress, jobs: int) -> dict[str, str]:
    _tuxmake(src, work, spec, inputs, say, jobs, ["config"])
    text = (work / "build" / ".config").read_text()
    missing = kconfig.missing_options(text, src)
    if missing:
        raise BuildError("input", "config", "options a node needs are not set:\n" + kconfig.describe(missing))
    return kconfig.parse_config(text)


def _tuxmake(
    src: Path, work: Path, spec: BuildSpec, inputs: Inputs, say: Progress, jobs: int, targets: list[str]
) -> None:
    local_version = work / "localversion.config"
    local_version.write_text(f'CONFIG_LOCALVERSION="-swaplab-{inputs.digest[:8]}"\n# CONFIG_LOCALVERSION_AUTO is not set\n')
    fragments = [*spec.config.fragments, local_version, kconfig.SWAPLAB_FRAGMENT]  # swaplab's last: it wins
    argv = [
        "nice", "-n", "10", str(TUXMAKE), "-C", str(src), "-b", str(work / "build"), "-o", str(work / "out"),
        "--runtime", "null", "--target-arch", "x86_64", "--toolchain", "gcc", "--wrapper", "ccache",
        "--jobs", str(jobs), "--kconfig", spec.config.base,
        *[arg for fragment in fragments for arg in ("--kconfig-add", str(fragment))],
        "--environment", f"KBUILD_BUILD_TIMESTAMP={_timestamp(inputs.digest)}",
        "--environment", f"KBUILD_BUILD_USER={BUILD_USER}", "--environment", f"KBUILD_BUILD_HOST={BUILD_HOST}",
        # Set and empty: no "+" after the release for a tree that is not at a tag.
        "--environment", "LOCALVERSION=",
        *targets,
    ]  # fmt: skip
    env = {
        **os.environ,
        "CCACHE_DIR": str(cache_dir("kbuild", "ccache")),
        "CCACHE_MAXSIZE": CCACHE_MAX,
        # Every build has its own work dir: paths below it are made relative (make runs in
        # build/, the tree is ../src), so a rebuild hits the cache wherever it ran.
        "CCACHE_BASEDIR": str(work),
        "CCACHE_NOHASHDIR": "1",
    }
    _run_logged(argv, env, work / "tuxmake.log", say, targets[-1])


def _timestamp(digest: str) -> str:
    # A fixed, date-parsable instant per input hash: scripts that feed it to `date -d` work,
    # and the version string is the same on every rebuild of the same inputs.
    return f"@{1_700_000_000 + int(digest[:6], 16)}"


def _run_logged(argv: list[str], env: dict[str, str], log: Path, say: Progress, target: str) -> None:
    began = time.monotonic()
    with log.open("ab") as out:
        proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True)
        while proc.poll() is None:
            time.sleep(2.0)
            say(f"make {target}: {time.monotonic() - began:.0f} s")
    if proc.returncode == 0:
        return
    text = log.read_text(errors="replace")
    tail = "\n".join(text.splitlines()[-25:])
    if proc.returncode < 0 or any(marker in text for marker in _INFRA_MARKERS):
        raise BuildError("infra", target, f"the build was stopped by the host (exit {proc.returncode}):\n{tail}")
    raise BuildError("input", target, f"{_first_error(text) or 'make failed'}\n{tail}")


def _first_error(text: str) -> str | None:
    for line in text.splitlines():
        if re.search(r"\berror\b", line) and ":" in line:
            return line.strip()
    return None


def _meta(
    src: Path, work: Path, spec: BuildSpec, inputs: Inputs, applied: list[dict[str, str]], seconds: float
) -> dict[str, Any]:
    build = work / "build"
    release = (build / "include" / "config" / "kernel.release").read_text().strip()
    return {
        "status": "ok",
        "stage": "done",
        "label": spec.label(),
        "release": release,
        "uts_version": _uts_version(build),
        "compiler": toolchain().splitlines()[0],
        "patches": applied,
        "inputs": {"tree": inputs.tree.identity, "patches": [p.name for p in inputs.series], "config": spec.config.model_dump(mode="json")},
        "build_seconds": round(seconds, 1),
    }


def _uts_version(build: Path) -> str:
    """What `uname -v` will print, from the generated header (its place moved across releases)."""
    for header in ("include/generated/utsversion.h", "include/generated/compile.h"):
        path = build / header
        if path.exists():
            match = re.search(r'#define UTS_VERSION "([^"]*)"', path.read_text())
            if match:
                return match.group(1)
    raise BuildError("infra", "kernel", "the build left no UTS_VERSION")


def _artifact_files(work: Path) -> dict[str, Path]:
    out, build = work / "out", work / "build"
    files = {
        "bzImage": out / "bzImage",
        "config": build / ".config",
        "System.map": build / "System.map",
        "build.log": work / "tuxmake.log",
        "tuxmake-metadata.json": out / "metadata.json",
    }
    modules = out / "modules.tar.xz"
    if modules.exists():
        (work / "modules").mkdir()
        subprocess.run(["tar", "-xf", str(modules), "-C", str(work / "modules")], check=True)
        files["modules"] = work / "modules"
    return files
