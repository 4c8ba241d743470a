"""A ``build:`` kernel runs the submitter's code as the build user, never as root.

The attacker's build: a source tarball and a one-patch series whose patch puts
``$(shell ...)`` lines at the top of the Makefile, then ``$(error)`` — make reads them at
the config stage, so nothing is compiled. They try to write into a root-only directory,
into the artifact cache and into another lineage's directory, to read a root-only file,
and they note who they are, their HOME and their network in a file in /tmp. Checked from
outside: nothing was written where root alone may write, the /tmp file belongs to the build
user, the build saw no network and no secret, and the build failed as the input's fault
(the run is invalid). A host without the build user refuses to build at all.

And the real thing up to its config stage: Debian's 6.1 tree checked out, patched and
configured by the build user, its Kconfig files read back by root without following links.
"""

from __future__ import annotations

import difflib
import os
import pwd
import shutil
import stat
import subprocess
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import pytest

from model.kernel import BuildSpec, DebianSource, GitSource, TarballSource
from model.protocol import StageFailure
from model.runspec import BuildMessage
from tests.conftest import require_tools
from workers import tasks
from workers.kbuild import artifacts, lineage, sandbox
from workers.kbuild.build import BuildError, build_kernel
from workers.kbuild.sandbox import BUILD_USER, SandboxError
from workers.kbuild.tree import from_debian, git

pytestmark = [pytest.mark.integration, pytest.mark.timeout(180)]
SECRET = "swaplab-root-only-secret"
OTHER = "0" * 24  # another lineage's key


class Attack:
    """The tree, the evil series and the places it aims at."""

    def __init__(self, tmp: Path, public: Path) -> None:
        self.tmp = tmp
        self.root_only = tmp / "root-only"
        self.root_only.mkdir(mode=0o700)
        (self.root_only / "secret").write_text(SECRET)
        self.probe = Path("/tmp") / f"swaplab-build-probe-{uuid.uuid4().hex[:12]}"
        self.other_lineage = artifacts.kbuild_dir() / "lineages" / OTHER
        self.tarball = self._tarball()
        self.series = self._series()
        # A git source is read by the build user: it lies where that user may read it.
        self.repo = public / "linux"
        subprocess.run(["git", "clone", "-q", str(tmp / "work"), str(self.repo)], check=True)
        subprocess.run(["git", "-C", str(self.repo), "reset", "-q", "--hard", "HEAD~1"], check=True)
        subprocess.run(["chmod", "-R", "o+rX", str(public)], check=True)

    def _tarball(self) -> Path:
        tree = self.tmp / "linux-9.9"
        tree.mkdir()
        (tree / "Makefile").write_text("tinyconfig:\n\t@true\n")
        (tree / "Kconfig").write_text("")
        (tree / "Kbuild").write_text("")
        tarball = self.tmp / "linux-9.9.tar.gz"
        subprocess.run(["tar", "-czf", str(tarball), "-C", str(self.tmp), "linux-9.9"], check=True)
        return tarball

    def _series(self) -> Path:
        """git format-patch of the evil Makefile (made with git, as a submitter would)."""
        work = self.tmp / "work"
        subprocess.run(["tar", "-xzf", str(self.tarball), "-C", str(self.tmp)], check=True)
        (self.tmp / "linux-9.9").rename(work)
        identity = ["-c", "user.name=Eve", "-c", "user.email=eve@example.org"]
        subprocess.run(["git", "-C", str(work), "init", "-q"], check=True)
        subprocess.run(["git", "-C", str(work), "add", "."], check=True)
        subprocess.run(["git", "-C", str(work), *identity, "commit", "-qm", "base"], check=True)
        aims = [self.root_only / "owned", artifacts.root() / "owned", self.other_lineage / "owned"]
        evil = "".join(f"$(shell touch {aim})\n" for aim in aims)
        evil += (
            f"$(shell (id -u; echo HOME=$$HOME; cat {self.root_only}/secret; grep -E '^(CapEff|CapBnd|NoNewPrivs)' /proc/self/status; cat /proc/net/dev) >{self.probe} 2>&1)\n"
            "$(error swaplab-test: the patch stops the build here)\n"
        )
        makefile = work / "Makefile"
        makefile.write_text(evil + makefile.read_text())
        subprocess.run(["git", "-C", str(work), *identity, "commit", "-qam", "Makefile: run my code"], check=True)
        series = self.tmp / "evil.mbox"
        patch = subprocess.run(
            ["git", "-C", str(work), "format-patch", "--stdout", "HEAD~1"], check=True, capture_output=True, text=True
        )
        series.write_text(patch.stdout)
        return series

    def spec(self, source: str = "tarball") -> BuildSpec:
        tree = TarballSource(tarball=self.tarball) if source == "tarball" else GitSource(git=self.repo)
        return BuildSpec(source=tree, patches=self.series)


@pytest.fixture
def attack(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Any:
    require_tools(("git", "make", "gcc", "unshare", "setpriv", "ccache"))
    monkeypatch.setenv("SWAPLAB_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(tasks, "admit_build", lambda message: message.kernel.build)
    public = Path(tempfile.mkdtemp(prefix="swaplab-git-source-", dir="/tmp"))
    the_attack = Attack(tmp_path, public)
    yield the_attack
    the_attack.probe.unlink(missing_ok=True)
    shutil.rmtree(public)


@pytest.mark.parametrize("source", ["tarball", "git"])
def test_a_makefile_patch_runs_as_the_build_user_and_reaches_nothing_of_roots(attack: Attack, source: str) -> None:
    try:
        builder = pwd.getpwnam(BUILD_USER)
    except KeyError:
        pytest.fail(f"no user {BUILD_USER}: run scripts/setup")
    with lineage.held(OTHER, sandbox.account()):
        pass  # another lineage's directory, as a build of it would leave it
    message = BuildMessage(
        campaign="c-20261201-120000-abcd", run_id="r001", lab="local", kernel={"build": attack.spec(source)}
    )

    failure = tasks._build(_NoLock(), message, lambda _text: None)  # type: ignore[arg-type]

    assert isinstance(failure, StageFailure) and failure.cause == "input", failure  # invalid, not a host failure
    assert "the patch stops the build here" in failure.reason
    assert os.listdir(attack.root_only) == ["secret"]
    assert not (artifacts.root() / "owned").exists()
    assert not (attack.other_lineage / "owned").exists()
    seen = attack.probe.read_text()
    info = attack.probe.stat()
    assert (info.st_uid, info.st_gid) == (builder.pw_uid, builder.pw_gid), "the build ran as another user"
    assert seen.splitlines()[0] == str(builder.pw_uid)
    assert f"HOME={sandbox.HOME}" in seen
    net_dev = seen[seen.index("Inter-|") :].splitlines()[2:]  # /proc/net/dev, after its two header lines
    interfaces = [line.split(":")[0].strip() for line in net_dev]
    assert interfaces == ["lo"], f"the build saw a network: {interfaces}"
    assert SECRET not in seen and "Permission denied" in seen
    # No capability at all, and no way to gain one (setuid binaries do nothing under no_new_privs).
    status = dict(line.split(":\t") for line in seen.splitlines() if line.startswith(("Cap", "NoNewPrivs")))
    assert status == {"CapEff": "0000000000000000", "CapBnd": "0000000000000000", "NoNewPrivs": "1"}, status
    # The trees stay unreadable to others: the cache's kbuild/ and the lineages are 0700.
    for folder, owner in ((artifacts.kbuild_dir(), 0), (artifacts.kbuild_dir() / "lineages", 0)):
        assert (folder.stat().st_uid, stat.S_IMODE(folder.stat().st_mode)) == (owner, 0o700)
    failed = artifacts.listing()
    assert [(found.meta["status"], found.meta["stage"]) for found in failed] == [("failed", "config")]


def test_a_checkout_killed_mid_way_does_not_wedge_its_lineage(attack: Attack) -> None:
    """A build killed inside ``git worktree add`` leaves the entry locked and work/ gone
    (a reboot empties nothing of the cache): the next build of that lineage still checks out."""
    message = BuildMessage(
        campaign="c-20261201-120000-abcd", run_id="r001", lab="local", kernel={"build": attack.spec()}
    )
    first = tasks._build(_NoLock(), message, lambda _text: None)  # type: ignore[arg-type]
    assert isinstance(first, StageFailure) and first.cause == "input", first
    (home,) = [path for path in (artifacts.kbuild_dir() / "lineages").iterdir() if path.is_dir()]
    stale = home / "repo" / ".git" / "worktrees" / "src"
    stale.mkdir(parents=True, exist_ok=True)
    (stale / "gitdir").write_text("/run/swaplab-build/lineage/work/src/.git\n")
    (stale / "locked").write_text("initializing")
    shutil.rmtree(home / "work", ignore_errors=True)
    for failed in artifacts.listing():  # the failure is cached: forget it so the build runs again
        shutil.rmtree(failed.path)

    again = tasks._build(_NoLock(), message, lambda _text: None)  # type: ignore[arg-type]

    assert isinstance(again, StageFailure) and again.cause == "input", again  # the patch's error, not git's
    assert "the patch stops the build here" in again.reason


def test_without_the_build_user_nothing_is_built(attack: Attack, monkeypatch: pytest.MonkeyPatch) -> None:
    """A worker set up before builds dropped root: an infra-error naming scripts/setup."""
    monkeypatch.setattr(sandbox, "BUILD_USER", "swaplab-no-such-user")
    with pytest.raises(SandboxError, match="scripts/setup"):
        build_kernel(attack.spec(), lambda _text: None)
    message = BuildMessage(
        campaign="c-20261201-120000-abcd", run_id="r001", lab="local", kernel={"build": attack.spec()}
    )
    failure = tasks._build(_NoLock(), message, lambda _text: None)  # type: ignore[arg-type]
    assert isinstance(failure, StageFailure) and failure.cause == "infra"
    assert "scripts/setup" in failure.reason
    assert not attack.probe.exists() and os.listdir(attack.root_only) == ["secret"]
    assert artifacts.listing() == []  # nothing cached: once set up, the same inputs build


def test_debians_tree_is_patched_and_configured_by_the_build_user(tmp_path: Path) -> None:
    """A patch that makes SWAP depend on BROKEN: the config stage, as the build user in its
    own checkout of the real tree, stops the build with kconfig's reason, before compiling."""
    require_tools(("git", "make", "gcc", "flex", "bison", "bc", "ccache", "apt-get", "dpkg-deb", "unshare", "setpriv"))
    tree = from_debian("linux-source-6.1", print)  # the shared cache (~/.cache/swaplab)
    old = git(tree.repo, "show", f"{tree.commit}:mm/Kconfig").stdout.splitlines(keepends=True)
    anchor = old.index("\tdepends on MMU && BLOCK && !ARCH_NO_SWAP\n")
    new = [*old[: anchor + 1], "\tdepends on BROKEN\n", *old[anchor + 1 :]]
    diff = "".join(difflib.unified_diff(old, new, "a/mm/Kconfig", "b/mm/Kconfig"))
    series = tmp_path / "broken-swap.mbox"  # a path of this run: a lineage of its own, never cached
    series.write_text(
        "From 0000000000000000000000000000000000000000 Mon Sep 17 00:00:00 2001\n"
        "From: Eve <eve@example.org>\nDate: Mon, 1 Dec 2025 00:00:00 +0000\n"
        f"Subject: [PATCH] mm: swap needs BROKEN ({uuid.uuid4().hex[:8]})\n\n---\n"
        f"diff --git a/mm/Kconfig b/mm/Kconfig\n{diff}"
    )
    spec = BuildSpec(source=DebianSource(debian="linux-source-6.1"), patches=series)
    began = time.monotonic()

    with pytest.raises(BuildError) as stopped:
        build_kernel(spec, print)

    print(f"checked out, patched and configured in {time.monotonic() - began:.0f} s")
    assert (stopped.value.cause, stopped.value.stage) == ("input", "config")
    assert "SWAP is not set: it depends on MMU && BLOCK && !ARCH_NO_SWAP && BROKEN" in stopped.value.reason


class _NoLock:
    """The build task's Redis client, for its one use here: the lock across build workers."""

    def lock(self, *_args: object, **_kwargs: object) -> _NoLock:
        return self

    def __enter__(self) -> None:
        return None

    def __exit__(self, *_exc: object) -> None:
        return None
