"""Built kernels in the cache, keyed by a content hash of every input.

``artifacts/<hash>/`` holds ``bzImage``, ``modules/`` (when the config has modules),
``config``, ``System.map``, ``build.log`` and ``meta.json``: the release and version
strings, the compiler, the applied patches' subjects, the inputs, sizes and when it was
last used. A build whose *inputs* are wrong (a patch that does not apply, a config that
lost an option a node needs, a compile error) is cached too, as ``status: failed`` with its
log: the same inputs fail the same way, so asking again answers at once. A build stopped
by the host (killed, out of memory, disk full, worker lost) is not cached.

The cache is capped (``SWAPLAB_KBUILD_MAX_GB``, default 20 GiB for artifacts): after a
build, the least recently used artifacts go first.

The cache is root's (``kbuild/`` is 0700): a build writes only into its own lineage's
directory, and its artifact reaches this cache as copies root made (workers.kbuild.build).
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import shutil
import stat
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from model.paths import cache_dir

# 2: builds run as the build user; an artifact of an earlier root build is not trusted.
FORMAT = "swaplab-kbuild-2"


@dataclass(frozen=True)
class Artifact:
    """A built kernel (or a cached failed build) and what is known of it."""

    path: Path
    meta: dict[str, Any]

    @property
    def hash(self) -> str:
        return str(self.meta["hash"])

    @property
    def ok(self) -> bool:
        return self.meta.get("status") == "ok"

    @property
    def bzimage(self) -> Path:
        return self.path / "bzImage"

    @property
    def modules_dir(self) -> Path:
        """``lib/modules/<release>`` of the build (absent when everything is built in)."""
        return self.path / "modules" / "lib" / "modules" / str(self.meta["release"])

    def summary(self) -> str:
        """One line for people: hash, release, patches, size or the failure."""
        if not self.ok:
            return f"{self.hash[:12]} FAILED at {self.meta.get('stage')}: {self.meta.get('error', '')[:200]}"
        patches = len(self.meta.get("patches", []))
        return (
            f"{self.hash[:12]} {self.meta['release']} ({patches} patch(es), "
            f"{self.meta.get('size_bytes', 0) / 2**20:.1f} MiB, built in {self.meta.get('build_seconds', 0):.0f} s)"
        )


def root() -> Path:
    kbuild_dir()
    return cache_dir("kbuild", "artifacts")


def kbuild_dir() -> Path:
    """``kbuild/`` of the cache, 0700: source trees, lineages, work and artifacts are nobody else's."""
    path = cache_dir("kbuild")
    path.chmod(0o700)
    return path


def find(digest: str) -> Artifact | None:
    """The artifact with this hash, if the cache has it (and its files are there)."""
    meta_path = root() / digest / "meta.json"
    try:
        meta = json.loads(meta_path.read_text())
    except (OSError, ValueError):
        return None
    artifact = Artifact(meta_path.parent, meta)
    if artifact.ok and not artifact.bzimage.is_file():
        return None
    return artifact


@contextmanager
def building(digest: str) -> Iterator[None]:
    """One build of ``digest`` at a time on this host (another request waits, then finds it)."""
    with (root() / f".{digest}.lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield


def touch(artifact: Artifact) -> None:
    """Note that a run used it (the cap evicts the least recently used first)."""
    meta = {**artifact.meta, "last_used": time.time()}
    _write_json(artifact.path / "meta.json", meta)


def store(digest: str, files: dict[str, Path], meta: dict[str, Any]) -> Artifact:
    """Move ``files`` (name -> produced path) into the cache under ``digest``, atomically."""
    work = Path(tempfile.mkdtemp(prefix=f".{digest[:16]}.", dir=root()))
    try:
        for name, source in files.items():
            if source.exists():
                shutil.move(str(source), work / name)
        size = sum(path.stat().st_size for path in work.rglob("*") if path.is_file())
        full = {"format": FORMAT, "hash": digest, "created_at": time.time(), "last_used": time.time(), **meta}
        full["size_bytes"] = size
        _write_json(work / "meta.json", full)
        final = root() / digest
        if final.exists():
            shutil.rmtree(final)  # a failed build retried after its inputs' cause was fixed
        work.rename(final)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    evict(keep=digest)
    found = find(digest)
    assert found is not None
    return found


def listing() -> list[Artifact]:
    """Every artifact in the cache, most recently used first."""
    found = [artifact for path in root().iterdir() if path.is_dir() and (artifact := find(path.name))]
    return sorted(found, key=lambda artifact: float(artifact.meta.get("last_used", 0)), reverse=True)


def cap_bytes() -> int:
    return int(float(os.environ.get("SWAPLAB_KBUILD_MAX_GB", "20")) * 2**30)


def evict(keep: str) -> list[str]:
    """Remove the least recently used artifacts beyond the cap (never ``keep``)."""
    removed = []
    artifacts = listing()
    total = sum(int(artifact.meta.get("size_bytes", 0)) for artifact in artifacts)
    for artifact in reversed(artifacts):
        if total <= cap_bytes():
            break
        if artifact.hash == keep:
            continue
        shutil.rmtree(artifact.path, ignore_errors=True)
        total -= int(artifact.meta.get("size_bytes", 0))
        removed.append(artifact.hash)
    return removed


def disk_usage() -> dict[str, int]:
    """Bytes used by source trees, lineages (their trees and ccaches) and artifacts (what
    `swaplab kernels` shows); links are not followed."""
    return {part: sum(_file_sizes(cache_dir("kbuild", part))) for part in ("trees", "debian", "lineages", "artifacts")}


def _file_sizes(folder: Path) -> Iterator[int]:
    for path in folder.rglob("*"):
        with contextlib.suppress(OSError):  # removed meanwhile by a build
            info = path.lstat()
            if stat.S_ISREG(info.st_mode):
                yield info.st_size


def _write_json(path: Path, data: dict[str, Any]) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}")
    tmp.write_text(json.dumps(data, indent=2) + "\n")
    tmp.replace(path)
