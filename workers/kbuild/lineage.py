"""A build's own directory, per source lineage, and the tree it builds in.

A lineage is a source tree together with the submitter's files a build names: the git
repository (by path) or the tarball (by content), plus the paths of the patch series and
config files. Builds of one lineage share a directory that belongs to the build user:

    kbuild/lineages/            root, 0700: the build user cannot even look for another
      <key>/                    the build user, 0700, bound read-write into the sandbox
        repo/                   its git repository (a tarball's objects are borrowed,
                                read-only, from root's repository of the tarball)
        ccache/                 its compiler cache
        work/src, build, out    the last build's tree and objects, kept for the next one
                                (one at a time: a lock per lineage)

Only builds that name the same files share a tree and a ccache: whoever can change those
files already decides what those builds are, so a build can poison nothing of a lineage
it does not belong to. Lineages are capped like artifacts (least recently used go first).
Root never writes into a lineage's directory (it only removes: a work directory the host
stopped a build in, or the mark that a build is in it); it reads back what a finished
build made through workers.untrusted, with no build process left alive (the sandbox's PID
namespace ended them).
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import shutil
import stat
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from model.paths import cache_dir
from workers import untrusted
from workers.kbuild import sandbox
from workers.kbuild.tree import SourceTree, TreeError

FORMAT = "swaplab-lineage-1"
_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC

LINEAGE = sandbox.INSIDE / "lineage"  # where the sandbox sees it
BASE = sandbox.INSIDE / "base"  # a tarball's repository (its .git), read-only
REPO = LINEAGE / "repo"
WORK = LINEAGE / "work"
SRC = WORK / "src"
BUILD = WORK / "build"
OUT = WORK / "out"
CCACHE = LINEAGE / "ccache"

# Run by the build user: the tree's commit checked out in work/src. The last build's work
# directory is reused when it was made for the same toolchain and config and its build
# ended (work/busy gone): the tree is brought to the commit in place, so every file the two
# commits share keeps its time stamp and make recompiles only what differs (as the kernel's
# own ktest does). Anything else starts afresh.
_CHECKOUT = r"""
set -eu
kind=$1 commit=$2 origin=$3 identity=$4 mode=$5
cd /run/swaplab-build/lineage
reuse() {  # called in `reuse || fresh`, where set -e does not apply: each step is checked
  [ "$mode" = reuse ] && [ -e work/src/.git ] && [ ! -e work/busy ] || return 1
  [ -f work/identity ] && [ "$(cat work/identity)" = "$identity" ] || return 1
  git -C work/src am --abort >/dev/null 2>&1 || true   # a series that did not apply
  git -C work/src checkout --quiet --force --detach "$commit" || return 1
  git -C work/src clean -q -f -d -x || return 1
  # tuxmake keeps a .config it finds: the config is made anew (make rebuilds only what a
  # changed option reaches), and nothing of the last build's outputs is taken for this one's.
  rm -rf work/out work/build/.config
  echo reused
}
fresh() {  # the last of its list: a failure here ends the script (set -e)
  rm -rf work
  mkdir -m 0700 work
  # A build killed inside `worktree add` (a reboot, a lost worker) leaves its entry locked
  # ("initializing"), and prune keeps locked entries; this lineage's only worktree was
  # work/src, removed above, and the lineage lock keeps any other build out: forget them all.
  rm -rf repo/.git/worktrees
  git -C repo worktree add --quiet --detach /run/swaplab-build/lineage/work/src "$commit"
  echo fresh
}
[ -d repo/.git ] || git init --quiet repo
if [ "$kind" = tarball ]; then
  echo /run/swaplab-build/base/objects >repo/.git/objects/info/alternates
else
  case $origin in /*) ;; *) echo "not an absolute path: $origin" >&2; exit 2 ;; esac
  git -C repo fetch --quiet --depth=1 --no-tags "$origin" "$commit"
fi
reuse || fresh
printf '%s\n' "$identity" >work/identity
: >work/busy
"""


@dataclass(frozen=True)
class Lineage:
    """A lineage's directory: where it is here, and an fd of it (reached without links)."""

    key: str
    path: Path
    fd: int

    def bind(self) -> sandbox.Bind:
        return sandbox.Bind(self.path, LINEAGE.name, writable=True)

    def read(self, inside: PurePosixPath, limit: int) -> bytes:
        """A file the build made (``inside`` a path under LINEAGE), without following links."""
        return untrusted.read_regular(_relative(inside), limit, dir_fd=self.fd)

    def exists(self, inside: PurePosixPath) -> bool:
        """Whether the build left anything at ``inside`` (a link counts: reading it is refused)."""
        try:
            os.stat(_relative(inside), dir_fd=self.fd, follow_symlinks=False)
        except OSError:
            return False
        return True

    def open_dir(self, inside: PurePosixPath) -> int:
        """An fd of a directory the build made; the caller closes it."""
        return untrusted.open_dir(_relative(inside), dir_fd=self.fd)

    def open_file(self, inside: PurePosixPath) -> int:
        """An fd of a regular file the build made; the caller closes it."""
        return untrusted.open_regular(_relative(inside), dir_fd=self.fd)

    def clean(self) -> None:
        """Remove the build's work directory (its tree, objects and outputs): after a build
        the host stopped, whose half-written objects the next build must not trust."""
        with contextlib.suppress(FileNotFoundError):
            shutil.rmtree("work", dir_fd=self.fd)  # fd-based: never follows a link out

    def settle(self) -> None:
        """Mark the build ended (it built, or its input failed): the next build of the
        lineage may go on from its tree and objects."""
        try:
            work = untrusted.open_dir(Path("work"), dir_fd=self.fd)
        except OSError:
            return
        try:
            with contextlib.suppress(FileNotFoundError):
                os.unlink("busy", dir_fd=work)
        finally:
            os.close(work)


def key(source: str, paths: Sequence[Path]) -> str:
    """The lineage of a source (``git:<repository path>`` or ``tarball:<sha256>``) and files."""
    digest = hashlib.sha256(f"{FORMAT}\0{source}\0".encode())
    for path in paths:
        digest.update(f"{path}\0".encode())
    return digest.hexdigest()[:24]


@contextmanager
def held(lineage_key: str, owner: sandbox.Account) -> Iterator[Lineage]:
    """The lineage's directory, owned by ``owner``, for this build alone (a lock per lineage)."""
    parent = cache_dir("kbuild", "lineages")
    parent.chmod(0o700)
    with (parent / f".{lineage_key}.lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        os.utime(lock.fileno())  # when it was last used: eviction goes by it
        fd = _own_dir(parent, lineage_key, owner)
        try:
            yield Lineage(lineage_key, parent / lineage_key, fd)
        finally:
            os.close(fd)


def _own_dir(parent: Path, name: str, owner: sandbox.Account) -> int:
    parent_fd = os.open(parent, _DIR_FLAGS)
    try:
        with contextlib.suppress(FileExistsError):
            os.mkdir(name, 0o700, dir_fd=parent_fd)
        fd = os.open(name, _DIR_FLAGS, dir_fd=parent_fd)
        info = os.fstat(fd)
        if info.st_uid != owner.uid and info.st_uid != os.geteuid():
            # Left by another build account (recreated with another uid): start afresh.
            os.close(fd)
            shutil.rmtree(name, dir_fd=parent_fd)
            os.mkdir(name, 0o700, dir_fd=parent_fd)
            fd = os.open(name, _DIR_FLAGS, dir_fd=parent_fd)
        if owner.switch:
            os.fchown(fd, owner.uid, owner.gid)
        os.fchmod(fd, stat.S_IRWXU)
        return fd
    finally:
        os.close(parent_fd)


def base_binds(tree: SourceTree) -> list[sandbox.Bind]:
    """What the sandbox needs of root's side of a tree: a tarball's repository, read-only."""
    if tree.identity.startswith("tarball:"):
        return [sandbox.Bind(tree.repo / ".git", BASE.name)]
    return []


def checkout(box: sandbox.Sandbox, tree: SourceTree, identity: str, fresh: bool) -> bool:
    """``work/src``: the tree's commit, checked out by the build user in its own repository;
    whether the last build's tree and objects were kept (same ``identity``: toolchain and
    config) rather than made afresh (``fresh`` insists on afresh)."""
    kind = "tarball" if tree.identity.startswith("tarball:") else "git"
    origin = "" if kind == "tarball" else str(tree.repo)
    mode = "fresh" if fresh else "reuse"
    proc = box.run(["sh", "-c", _CHECKOUT, "swaplab-checkout", kind, tree.commit, origin, identity, mode])
    if proc.returncode != 0:
        words = (proc.stderr or proc.stdout).strip()[-1500:]
        raise TreeError(f"the build user could not check out {tree.commit[:12]} of {tree.repo}: {words}")
    return proc.stdout.strip().endswith("reused")


def evict(keep: str, cap: int) -> list[str]:
    """Remove the least recently used lineages beyond ``cap`` bytes (never ``keep``, nor one
    a build holds); their keys."""
    parent = cache_dir("kbuild", "lineages")
    found = sorted(_usage(parent))  # least recently used first
    total = sum(size for _used, _key, size in found)
    removed = []
    for _used, lineage_key, size in found:
        if total <= cap:
            break
        if lineage_key != keep and _remove_unless_held(parent, lineage_key):
            total -= size
            removed.append(lineage_key)
    return removed


def _usage(parent: Path) -> Iterator[tuple[float, str, int]]:
    """(last used, key, bytes) of every lineage: its lock file is rewritten at each use."""
    parent_fd = os.open(parent, _DIR_FLAGS)
    try:
        for entry in os.scandir(parent_fd):
            if entry.name.startswith(".") or not entry.is_dir(follow_symlinks=False):
                continue
            with contextlib.suppress(OSError):  # removed meanwhile
                used = os.stat(f".{entry.name}.lock", dir_fd=parent_fd).st_mtime
                fd = os.open(entry.name, _DIR_FLAGS, dir_fd=parent_fd)
                try:
                    size = sum(info.st_size for _parts, info in untrusted.walk(fd) if stat.S_ISREG(info.st_mode))
                finally:
                    os.close(fd)
                yield used, entry.name, size
    finally:
        os.close(parent_fd)


def _remove_unless_held(parent: Path, lineage_key: str) -> bool:
    with (parent / f".{lineage_key}.lock").open("a") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return False  # a build is using it
        parent_fd = os.open(parent, _DIR_FLAGS)
        try:
            shutil.rmtree(lineage_key, dir_fd=parent_fd)
        finally:
            os.close(parent_fd)
    return True


def _relative(inside: PurePosixPath) -> Path:
    return Path(inside.relative_to(LINEAGE))
