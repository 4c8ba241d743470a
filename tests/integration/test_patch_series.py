"""A patch series applied to Debian's real kernel source, as a mailing list delivers it.

The patches are made here, against the tree as extracted today (the package changes with
security updates, so no patch file is stored): commits in a worktree, exported with
``git format-patch``, then the worktree goes back to its base and the series is applied.
One worktree (1.5 GB) serves the whole module; each test starts from its base commit.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.conftest import require_tools
from workers.kbuild.patches import AppliedPatch, PatchError, apply_series, messages, read_series
from workers.kbuild.tree import from_debian, git, worktree

pytestmark = [pytest.mark.integration, pytest.mark.timeout(600)]

ANN = "Ann Swapper <ann@example.org>"
BOB = "Bob Nfs <bob@example.org>"
EVE = "Eve Elsewhere <eve@example.org>"
SWAPFILE, NFS_FILE = "mm/swapfile.c", "fs/nfs/file.c"

# Anchors in the real sources: near the start of the swapon syscall, the header comment of
# fs/nfs/file.c, and a line of nfs_swap_activate far below it (its own hunk).
SWAPON_CHECK = (
    "\tif (swap_flags & ~SWAP_FLAGS_VALID)\n\t\treturn -EINVAL;\n\n\tif (!capable(CAP_SYS_ADMIN))\n\t\treturn -EPERM;\n"
)
PR_INFO = '\tpr_info("swaplab-test: swapon called\\n");\n'
HEADER = " *  nfs regular file handling functions\n"
NEW_HEADER = " *  nfs regular file handling functions, swap over NFS included\n"
HOLES = 'pr_warn("swap activate: swapfile has holes\\n");'
OUTSIDE = 'pr_warn("swap activate: swapfile has holes (changed outside the series)\\n");'
NAMED = 'pr_warn("swap activate: %pD has holes\\n", file);'

SWAP_SUBJECT = "mm: swap: say when swapon is called"
NFS_SUBJECT = "nfs: file: name swap over NFS in the header comment"
HOLES_SUBJECT = "nfs: swap: name the swapfile that has holes"


@dataclass(frozen=True)
class Linux:
    """The shared worktree and the commit every test starts from."""

    path: Path
    base: str


@dataclass(frozen=True)
class Series:
    mbox: Path
    directory: Path
    broken: Path  # patch 2/2 was made on top of a commit that is not in the series
    empty_mbox: Path
    empty_directory: Path


@pytest.fixture(scope="module")
def linux(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Linux]:
    require_tools(("git", "tar", "apt-get", "dpkg-deb"))
    began = time.monotonic()
    tree = from_debian("linux-source-6.1", print)
    with worktree(tree, tmp_path_factory.mktemp("patch-series") / "linux") as path:
        print(f"\ntree and worktree ready in {time.monotonic() - began:.1f} s")
        yield Linux(path, tree.commit)


@pytest.fixture(scope="module")
def series(linux: Linux, tmp_path_factory: pytest.TempPathFactory) -> Series:
    out = tmp_path_factory.mktemp("series")
    _commit(linux.path, SWAPFILE, SWAPON_CHECK, SWAPON_CHECK + PR_INFO, ANN, SWAP_SUBJECT)
    _commit(linux.path, NFS_FILE, HEADER, NEW_HEADER, BOB, NFS_SUBJECT)
    (out / "series.mbox").write_text(git(linux.path, "format-patch", "--stdout", f"{linux.base}..").stdout)
    git(linux.path, "format-patch", "--quiet", "-o", str(out / "series"), f"{linux.base}..")

    # The broken series: patch 2/2 changes a line that a commit outside the series changed first.
    _reset(linux)
    _commit(linux.path, NFS_FILE, HOLES, OUTSIDE, EVE, "nfs: swap: a change that is not in the series")
    outside = git(linux.path, "rev-parse", "HEAD").stdout.strip()
    _commit(linux.path, SWAPFILE, SWAPON_CHECK, SWAPON_CHECK + PR_INFO, ANN, SWAP_SUBJECT)
    _edit(linux.path, NFS_FILE, HEADER, NEW_HEADER)  # a first hunk that applies ...
    _commit(linux.path, NFS_FILE, OUTSIDE, NAMED, BOB, HOLES_SUBJECT)  # ... and one that cannot
    (out / "broken.mbox").write_text(git(linux.path, "format-patch", "--stdout", f"{outside}..").stdout)
    _reset(linux)

    (out / "empty.mbox").write_text("")
    (out / "no-patches").mkdir()
    (out / "no-patches" / "README").write_text("not a patch\n")
    return Series(out / "series.mbox", out / "series", out / "broken.mbox", out / "empty.mbox", out / "no-patches")


@pytest.fixture
def clean(linux: Linux) -> Linux:
    """The worktree at its base commit, whatever the test before left."""
    _reset(linux)
    return linux


def test_an_mbox_applies_as_commits_with_their_subjects_and_authors(clean: Linux, series: Series) -> None:
    began = time.monotonic()
    applied = apply_series(clean.path, series.mbox)
    print(f"\n2 patches applied in {time.monotonic() - began:.1f} s")

    assert applied == [AppliedPatch(SWAP_SUBJECT, ANN), AppliedPatch(NFS_SUBJECT, BOB)]
    assert SWAPON_CHECK + PR_INFO in (clean.path / SWAPFILE).read_text()
    assert NEW_HEADER in (clean.path / NFS_FILE).read_text()
    committers = git(clean.path, "log", "--format=%cn <%ce>", f"{clean.base}..").stdout.split("\n")
    assert committers[:2] == ["swaplab <swaplab@localhost>"] * 2
    assert git(clean.path, "status", "--porcelain").stdout == ""


def test_a_directory_applies_the_same_commits(clean: Linux, series: Series) -> None:
    assert sorted(path.name for path in series.directory.iterdir())[0].startswith("0001-")
    apply_series(clean.path, series.mbox)
    from_mbox = _head(clean)
    _reset(clean)

    applied = apply_series(clean.path, series.directory)

    assert applied == [AppliedPatch(SWAP_SUBJECT, ANN), AppliedPatch(NFS_SUBJECT, BOB)]
    assert SWAPON_CHECK + PR_INFO in (clean.path / SWAPFILE).read_text()
    # Same base, same series: the same commits (committer and its date are fixed).
    assert _head(clean) == from_mbox


def test_a_series_splits_into_its_patches_and_a_prefix_applies_alone(
    clean: Linux, series: Series, tmp_path: Path
) -> None:
    """What a bisection builds: the first patches of an mbox, one file each."""
    each = messages(read_series(series.mbox), "series.mbox")
    assert [message.name for message in each] == ["0001.patch", "0002.patch"]
    assert len(messages(read_series(series.directory), "series")) == 2
    first, both = tmp_path / "first", tmp_path / "both"
    for folder, count in ((first, 1), (both, 2)):
        folder.mkdir()
        for message in each[:count]:
            (folder / message.name).write_bytes(message.data)

    assert apply_series(clean.path, first) == [AppliedPatch(SWAP_SUBJECT, ANN)]
    assert NEW_HEADER not in (clean.path / NFS_FILE).read_text()
    _reset(clean)
    apply_series(clean.path, both)
    split = _head(clean)
    _reset(clean)
    apply_series(clean.path, series.mbox)
    assert _head(clean) == split  # the patches one by one are the series


def test_a_patch_that_does_not_apply_names_itself_and_leaves_the_base(clean: Linux, series: Series) -> None:
    with pytest.raises(PatchError) as caught:
        apply_series(clean.path, series.broken)
    error = caught.value
    print(f"\n{error}")

    assert str(error).startswith(f"patch 2/2 '{HOLES_SUBJECT}' does not apply at {NFS_FILE}:")
    assert (error.index, error.total, error.subject, error.file) == (2, 2, HOLES_SUBJECT, NFS_FILE)
    assert error.line is not None and f"error: patch failed: {NFS_FILE}:{error.line}" in error.detail
    # The rejected hunk is the one around the changed line, not the file's first (which applies).
    assert error.hunk.startswith(f"@@ -{error.line},")
    assert f"-\t\t{OUTSIDE}" in error.hunk and f"+\t\t{NAMED}" in error.hunk
    assert "nfs regular file handling" not in error.hunk
    assert error.hunk in str(error)
    assert git(clean.path, "status", "--porcelain").stdout == ""
    assert _head(clean) == clean.base


@pytest.mark.parametrize("which", ["empty_mbox", "empty_directory"])
def test_an_empty_series_is_refused(clean: Linux, series: Series, which: str) -> None:
    with pytest.raises(PatchError, match=r"is empty: it holds no patch"):
        apply_series(clean.path, getattr(series, which))
    assert _head(clean) == clean.base


def test_a_missing_series_is_refused(clean: Linux, tmp_path: Path) -> None:
    with pytest.raises(PatchError, match=r"neither an mbox file nor a directory"):
        apply_series(clean.path, tmp_path / "nowhere.mbox")


def _edit(repo: Path, path: str, old: str, new: str) -> None:
    file = repo / path
    text = file.read_text(encoding="utf-8")
    assert text.count(old) == 1, f"{path} no longer holds {old!r} once: choose another anchor"
    file.write_text(text.replace(old, new), encoding="utf-8")


def _commit(repo: Path, path: str, old: str, new: str, author: str, subject: str) -> None:
    _edit(repo, path, old, new)
    git(repo, "commit", "--quiet", "--no-verify", "--no-gpg-sign", f"--author={author}", "-m", subject, "--", path)


def _reset(linux: Linux) -> None:
    git(linux.path, "am", "--abort", check=False)  # no session: a harmless failure
    git(linux.path, "reset", "--quiet", "--hard", linux.base)


def _head(linux: Linux) -> str:
    return git(linux.path, "rev-parse", "HEAD").stdout.strip()
