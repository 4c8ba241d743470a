"""The commits of a git range ``good..bad`` to bisect, oldest first, each described.

A bisection over a range builds one commit per prefix: prefix 0 is ``good``, prefix k the
range's k-th commit, prefix n ``bad``. The range must be linear — ``good`` an ancestor of
``bad`` and no merge between them — so that prefix k holds exactly the first k commits,
as prefix k of a patch series holds its first k patches; a range with merges is refused
(git bisects across merges by the commits' graph, which a line of prefixes cannot say).

The repository is the submitter's and is read in the submitter's own process (the CLI),
never changed. Nothing its configuration names is run: no system or global configuration,
no fsmonitor, hooks, external diff, textconv, signature check or colour, and no transport
at all (a partial clone's lazy fetch could otherwise start ``core.sshCommand`` or an
upload-pack of the repository's choosing). Git itself refuses a repository another user
owns (``safe.directory``, which only the configuration dropped here could widen): root
reads only a repository of its own, or of the user who ran sudo.
"""

from __future__ import annotations

import os
import subprocess
from dataclasses import dataclass
from pathlib import Path

from workers.kbuild.tree import _COMMIT, _REF, TreeError

MAX_COMMITS = 10_000  # as many as a series' prefix may hold (BuildSpec.patches_upto)
STAT_FILES = 20  # a commit's diff stat names at most this many files
_HARDENED = (
    "-c",
    "core.fsmonitor=false",
    "-c",
    "core.hooksPath=/dev/null",
    "-c",
    "log.showSignature=false",
    "-c",
    "core.quotePath=true",
    "-c",
    "color.ui=never",
)
# A header per commit: a NUL (no diff stat holds one: git quotes paths), then the commit,
# the author and the subject on a line each (neither can hold a newline).
_FORMAT = "--format=%x00%H%n%an <%ae>%n%s"
_LOG = ("log", "--reverse", "--topo-order", "--no-ext-diff", "--no-textconv", "--no-color", "--stat", _FORMAT)


class RangeError(TreeError):
    """A range that cannot be bisected: a ref that is not there, not an ancestor, merges.
    ``field`` is the source's field it is about (``good`` for the range as a whole)."""

    def __init__(self, message: str, field: str = "good") -> None:
        super().__init__(message)
        self.field = field


@dataclass(frozen=True)
class RangeCommit:
    """One commit of the range, as a bisection shows it."""

    commit: str
    subject: str
    author: str
    stat: str  # git's diff stat against its parent


@dataclass(frozen=True)
class Range:
    """A linear range: the good commit and those after it up to the bad one, oldest first."""

    good: str
    commits: list[RangeCommit]

    @property
    def prefixes(self) -> list[str]:
        """The commit each prefix builds: ``good``, then the range's, oldest first."""
        return [self.good, *(entry.commit for entry in self.commits)]


def read_range(repo: Path, good: str, bad: str) -> Range:
    """The commits of ``good..bad`` in ``repo``, oldest first; RangeError when the range is
    empty, not linear, or ``good`` is not an ancestor of ``bad``."""
    good_commit, bad_commit = resolve(repo, good, "good"), resolve(repo, bad, "ref")
    ancestor = _git(repo, "merge-base", "--is-ancestor", good_commit, bad_commit)
    if ancestor.returncode == 1:
        raise RangeError(f"{good} is not an ancestor of {bad} in {repo}: a bisection needs good..bad in one line")
    _checked(ancestor, repo, "merge-base")
    merges = _checked(_git(repo, "rev-list", "--merges", f"{good_commit}..{bad_commit}"), repo, "rev-list").split()
    if merges:
        raise RangeError(
            f"{good}..{bad} in {repo} holds {len(merges)} merge(s) (the newest {merges[0][:12]}): "
            "a bisection takes a linear range only"
        )
    count = int(_checked(_git(repo, "rev-list", "--count", f"{good_commit}..{bad_commit}"), repo, "rev-list"))
    if count == 0:
        raise RangeError(f"{good}..{bad} in {repo} holds no commit: nothing to bisect")
    if count > MAX_COMMITS:
        raise RangeError(f"{good}..{bad} in {repo} holds {count} commits, more than {MAX_COMMITS}: narrow it")
    shown = (*_LOG, f"--stat-count={STAT_FILES}", f"{good_commit}..{bad_commit}")
    commits = parse_log(_checked(_git(repo, *shown), repo, "log"))
    if len(commits) != count:
        raise RangeError(f"git log of {good}..{bad} in {repo} listed {len(commits)} commits, rev-list {count}")
    return Range(good_commit, commits)


def resolve(repo: Path, ref: str, field: str) -> str:
    """The commit ``ref`` (the source's ``field``) names in ``repo``; RangeError when there is none."""
    if not _REF.fullmatch(ref) or ".." in ref:
        raise RangeError(f"{field} {ref!r} is not a branch, tag or commit name", field)
    proc = _git(repo, "rev-parse", "--verify", "--quiet", "--end-of-options", f"{ref}^{{commit}}")
    commit = proc.stdout.strip()
    if proc.returncode != 0 or not _COMMIT.fullmatch(commit):
        words = proc.stderr.strip()[-400:]
        raise RangeError(f"{repo} has no commit {ref!r}" + (f": {words}" if words else ""), field)
    return commit


def parse_log(out: str) -> list[RangeCommit]:
    """``git log`` in ``_FORMAT`` with ``--stat``, one entry per commit in its order."""
    commits = []
    for entry in out.split("\0")[1:]:
        commit, author, rest = [*entry.split("\n", 2), "", ""][:3]
        subject, _, stat = rest.partition("\n")
        if not _COMMIT.fullmatch(commit):
            raise RangeError(f"git log printed {commit[:60]!r} where a commit id belongs")
        commits.append(RangeCommit(commit, subject, author, stat.strip("\n") or "(no change)"))
    return commits


def _git(repo: Path, *args: str) -> subprocess.CompletedProcess[str]:
    argv = ["git", "--no-pager", "-C", str(repo), *_HARDENED, *args]
    try:
        return subprocess.run(
            argv, capture_output=True, encoding="utf-8", errors="replace", env=_env(), check=False, timeout=300
        )
    except (OSError, subprocess.TimeoutExpired) as err:
        raise RangeError(f"git {args[0]} in {repo}: {err}") from None


def _checked(proc: subprocess.CompletedProcess[str], repo: Path, what: str) -> str:
    if proc.returncode != 0:
        raise RangeError(f"git {what} in {repo}: {(proc.stderr or proc.stdout).strip()[-400:]}")
    return proc.stdout.strip()


def _env() -> dict[str, str]:
    env = {name: value for name, value in os.environ.items() if not name.startswith("GIT_")}
    return env | {
        "LC_ALL": "C",
        "LANGUAGE": "C",
        "GIT_CONFIG_NOSYSTEM": "1",
        "GIT_CONFIG_GLOBAL": os.devnull,
        # No protocol is allowed, whatever the repository's configuration says: reading a
        # range never needs one, and a lazy fetch would run what the configuration names.
        "GIT_ALLOW_PROTOCOL": "none",
        "GIT_TERMINAL_PROMPT": "0",
    }
