"""Source trees to build from: a commit, and where its objects come from.

- a git repository of the submitter's: the ref resolved to a commit by the build user
  (root runs no git on a repository someone else wrote: its configuration could name
  commands), who later fetches that one commit into its lineage's own repository
  (workers.kbuild.lineage) — the commit is what counts;
- a source tarball (Debian's ``linux-source-*`` is the offline default): unpacked once by
  root without following links (workers.untrusted: no link out of the tree, no device,
  no setuid file, no ``.git``) and committed as the only commit of a repository of root's,
  keyed by the tarball's sha256; builds borrow its objects read-only.

Each build checks the commit out into its lineage's work directory and applies its patches
there, as the build user.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import re
import shutil
import subprocess
import tarfile
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from model.paths import cache_dir
from workers import untrusted
from workers.kbuild import sandbox
from workers.kernel import KernelError, apt_download, unpack_deb

Progress = Callable[[str], None]
_REF = re.compile(r"[A-Za-z0-9][A-Za-z0-9._/+-]{0,199}")
_COMMIT = re.compile(r"[0-9a-f]{40}")
GIT_IDENTITY = ("-c", "user.name=swaplab", "-c", "user.email=swaplab@localhost")
# A kernel tree is about 1.4 GB unpacked.
_SOURCE_TREE = untrusted.TreeRules(max_bytes=8 << 30, max_entries=1_000_000, no_git=True)
_ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"


class TreeError(KernelError):
    """A source tree could not be made ready (missing repository, unknown ref, bad tarball)."""


@dataclass(frozen=True)
class SourceTree:
    """A repository swaplab may add worktrees to, the commit to build, and what it is."""

    repo: Path
    commit: str
    identity: str  # "git:<commit>" or "tarball:<sha256>": part of the build's content hash


def git(repo: Path, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    """``git -C repo args`` on a repository of root's own (its output captured); TreeError
    with git's words on failure. No system or user configuration, no hooks."""
    argv = ["git", "-C", str(repo), *GIT_IDENTITY, "-c", "core.hooksPath=/dev/null", *args]
    proc = subprocess.run(argv, capture_output=True, text=True, env=_git_env(), check=False)
    if check and proc.returncode != 0:
        raise TreeError(f"git {' '.join(args[:3])} in {repo}: {(proc.stderr or proc.stdout).strip()}")
    return proc


def _git_env() -> dict[str, str]:
    env = {name: value for name, value in os.environ.items() if not name.startswith("GIT_")}
    return env | {"LC_ALL": "C", "GIT_CONFIG_NOSYSTEM": "1", "GIT_CONFIG_GLOBAL": os.devnull}


def from_git(repo: Path, ref: str, say: Progress) -> SourceTree:
    """The commit ``ref`` names in the submitter's repository ``repo``, as the build user reads it."""
    if not _REF.fullmatch(ref) or ref.startswith("-"):
        raise TreeError(f"ref {ref!r} is not a branch, tag or commit name")
    proc = sandbox.Sandbox().run(
        ["git", "-C", str(repo), "rev-parse", "--verify", "--end-of-options", f"{ref}^{{commit}}"]
    )
    commit = proc.stdout.strip()
    if proc.returncode != 0 or not _COMMIT.fullmatch(commit):
        words = (proc.stderr or proc.stdout).strip()[-800:]
        raise TreeError(f"{repo} has no commit {ref!r} that the build user {sandbox.BUILD_USER} can read: {words}")
    say(f"{repo} {ref} is {commit[:12]}")
    return SourceTree(repo, commit, f"git:{commit}")


def from_tarball(tarball: Path, say: Progress) -> SourceTree:
    """A tarball's tree as the one commit of a repository in the cache (made once)."""
    try:
        with os.fdopen(untrusted.open_regular(tarball), "rb") as handle:
            digest = _sha256(handle)
            repo = cache_dir("kbuild", "trees") / f"tarball-{digest[:16]}"
            with _locked(repo):
                if not (repo / ".git").is_dir():
                    _commit_tarball(handle, tarball.name, repo, say)
    except untrusted.RefusedFile as refused:
        raise TreeError(str(refused)) from None
    commit = git(repo, "rev-parse", "HEAD").stdout.strip()
    return SourceTree(repo, commit, f"tarball:{digest}")


def from_debian(package: str, say: Progress) -> SourceTree:
    """Debian's ``linux-source-X`` tarball (downloaded into the cache, never installed)."""
    where = cache_dir("kbuild", "debian", package)
    with _locked(where):
        tarballs = sorted(where.glob("usr/src/linux-source-*.tar.*"))
        if not tarballs:
            with tempfile.TemporaryDirectory(dir=where) as tmp:
                deb = apt_download(package, Path(tmp), say)
                unpack_deb(deb, Path(tmp) / "root", say)
                (Path(tmp) / "root" / "usr").rename(where / "usr")
            tarballs = sorted(where.glob("usr/src/linux-source-*.tar.*"))
        if len(tarballs) != 1:
            raise TreeError(f"{package} holds {len(tarballs)} source tarballs under /usr/src")
    return from_tarball(tarballs[0], say)


def _commit_tarball(tarball: IO[bytes], name: str, repo: Path, say: Progress) -> None:
    work = Path(tempfile.mkdtemp(prefix=f".{repo.name}.", dir=repo.parent))
    try:
        say(f"extracting {name}")
        with _tar_stream(tarball) as archive:
            untrusted.extract_tar(archive, work, _SOURCE_TREE, name)
        tops = [entry for entry in work.iterdir() if entry.is_dir() and not entry.is_symlink()]
        top = tops[0] if len(tops) == 1 and len(list(work.iterdir())) == 1 else work
        say(f"committing {name} as the base of a throwaway repository")
        git(top, "init", "--quiet")
        # -f: Debian's tarball ends its .gitignore with "/*", which would ignore everything.
        git(top, "add", "--all", "--force")
        git(top, "commit", "--quiet", "--no-verify", "-m", f"{name} as released")
        top.rename(repo)
    finally:
        shutil.rmtree(work, ignore_errors=True)


@contextmanager
def _tar_stream(tarball: IO[bytes]) -> Iterator[tarfile.TarFile]:
    """The tarball as a stream of members: gzip, bzip2 and xz by Python, zstd by ``zstd``."""
    tarball.seek(0)
    if tarball.read(4) != _ZSTD_MAGIC:
        tarball.seek(0)
        with tarfile.open(fileobj=tarball, mode="r|*") as archive:
            yield archive
        return
    tarball.seek(0)
    with subprocess.Popen(["zstd", "-d", "-q", "-c"], stdin=tarball, stdout=subprocess.PIPE) as proc:
        assert proc.stdout is not None
        try:
            with tarfile.open(fileobj=proc.stdout, mode="r|") as archive:
                yield archive
        finally:
            proc.kill()


@contextmanager
def worktree(tree: SourceTree, where: Path) -> Iterator[Path]:
    """A checkout of the tree's commit at ``where`` (removed, with its branch, afterwards)."""
    if where.exists():
        shutil.rmtree(where)
    git(tree.repo, "worktree", "prune")
    git(tree.repo, "worktree", "add", "--quiet", "--detach", str(where), tree.commit)
    try:
        yield where
    finally:
        git(tree.repo, "worktree", "remove", "--force", str(where), check=False)
        shutil.rmtree(where, ignore_errors=True)


@contextmanager
def _locked(path: Path) -> Iterator[None]:
    """One process at a time prepares ``path`` (two builds of one tree wait for each other)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with (path.parent / f".{path.name}.lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield


def _sha256(file: IO[bytes]) -> str:
    digest = hashlib.sha256()
    file.seek(0)
    while chunk := file.read(1 << 20):
        digest.update(chunk)
    return digest.hexdigest()
