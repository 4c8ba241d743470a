"""Source trees to build from, as git repositories swaplab owns (in its cache).

- a git repository of the user's: a ``git clone --shared`` of it (its objects are borrowed,
  never written), the ref resolved to a commit — the commit is what counts;
- a source tarball (Debian's ``linux-source-*`` is the offline default): extracted once
  and committed as the only commit of a throwaway repository, keyed by the tarball's
  sha256, so a patch series applies to it with ``git am`` like to any tree.

Each build checks the commit out into its own worktree and removes it afterwards.
"""

from __future__ import annotations

import fcntl
import hashlib
import re
import shutil
import subprocess
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from model.paths import cache_dir
from workers.kernel import KernelError, apt_download

Progress = Callable[[str], None]
_REF = re.compile(r"[A-Za-z0-9][A-Za-z0-9._/+-]{0,199}")
GIT_IDENTITY = ("-c", "user.name=swaplab", "-c", "user.email=swaplab@localhost")


class TreeError(KernelError):
    """A source tree could not be made ready (missing repository, unknown ref, bad tarball)."""


@dataclass(frozen=True)
class SourceTree:
    """A repository swaplab may add worktrees to, the commit to build, and what it is."""

    repo: Path
    commit: str
    identity: str  # "git:<commit>" or "tarball:<sha256>": part of the build's content hash


def git(repo: Path, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    """``git -C repo args`` (its output captured); TreeError with git's words on failure."""
    proc = subprocess.run(["git", "-C", str(repo), *GIT_IDENTITY, *args], capture_output=True, text=True, check=False)
    if check and proc.returncode != 0:
        raise TreeError(f"git {' '.join(args[:3])} in {repo}: {(proc.stderr or proc.stdout).strip()}")
    return proc


def from_git(repo: Path, ref: str, say: Progress) -> SourceTree:
    """The commit ``ref`` names in the user's repository ``repo``, via a shared clone."""
    if not _REF.fullmatch(ref) or ref.startswith("-"):
        raise TreeError(f"ref {ref!r} is not a branch, tag or commit name")
    if not (repo / ".git").exists() and not (repo / "HEAD").exists():
        raise TreeError(f"{repo} is not a git repository")
    commit = git(repo, "rev-parse", "--verify", "--end-of-options", f"{ref}^{{commit}}").stdout.strip()
    clone = cache_dir("kbuild", "trees") / f"git-{hashlib.sha256(str(repo.resolve()).encode()).hexdigest()[:16]}"
    with _locked(clone):
        if not (clone / ".git").exists():
            say(f"sharing {repo}'s objects")
            subprocess.run(["git", "clone", "--quiet", "--shared", "--no-checkout", str(repo), str(clone)], check=True)
        git(clone, "fetch", "--quiet", str(repo), commit)
    say(f"{repo} {ref} is {commit[:12]}")
    return SourceTree(clone, commit, f"git:{commit}")


def from_tarball(tarball: Path, say: Progress) -> SourceTree:
    """A tarball's tree as the one commit of a repository in the cache (made once)."""
    digest = _sha256(tarball)
    repo = cache_dir("kbuild", "trees") / f"tarball-{digest[:16]}"
    with _locked(repo):
        if not (repo / ".git").exists():
            _commit_tarball(tarball, repo, say)
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
                subprocess.run(["dpkg-deb", "-x", str(deb), str(where)], check=True)
            tarballs = sorted(where.glob("usr/src/linux-source-*.tar.*"))
        if len(tarballs) != 1:
            raise TreeError(f"{package} holds {len(tarballs)} source tarballs under /usr/src")
    return from_tarball(tarballs[0], say)


def _commit_tarball(tarball: Path, repo: Path, say: Progress) -> None:
    work = Path(tempfile.mkdtemp(prefix=f".{repo.name}.", dir=repo.parent))
    try:
        say(f"extracting {tarball.name}")
        subprocess.run(["tar", "-xf", str(tarball), "-C", str(work)], check=True)
        tops = [entry for entry in work.iterdir() if entry.is_dir()]
        top = tops[0] if len(tops) == 1 else work
        say(f"committing {tarball.name} as the base of a throwaway repository")
        subprocess.run(["git", "init", "--quiet", str(top)], check=True)
        # -f: Debian's tarball ends its .gitignore with "/*", which would ignore everything.
        git(top, "add", "--all", "--force")
        git(top, "commit", "--quiet", "--no-verify", "-m", f"{tarball.name} as released")
        top.rename(repo)
    finally:
        shutil.rmtree(work, ignore_errors=True)


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


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as file:
        while chunk := file.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()
