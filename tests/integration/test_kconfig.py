"""swaplab's config fragment and its check against a real kernel tree and real kconfig.

Debian's linux-source-6.1 (cached after the first run) is checked out once for the module;
each test runs tuxmake's ``config`` target (merge_config.sh + olddefconfig with the host
toolchain, about 5 s) in its own build directory and reads the resulting ``.config`` back
with workers.kbuild.kconfig. Nothing is compiled.
"""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import require_tools
from workers.kbuild.kconfig import (
    REQUIRED,
    SWAPLAB_FRAGMENT,
    Kconfig,
    MissingOption,
    describe,
    missing_options,
    parse_config,
    read_kconfig,
)
from workers.kbuild.tree import from_debian, worktree

pytestmark = pytest.mark.integration

TUXMAKE = Path(sys.executable).with_name("tuxmake")
CONFIG_TOOLS = ("git", "gcc", "make", "flex", "bison", "bc", "ccache", "apt-get", "dpkg-deb")


@pytest.fixture(scope="module")
def src(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """One checkout of Debian's 6.1 kernel source for every test here (1.5 GB, ~10 s)."""
    require_tools(CONFIG_TOOLS)
    assert TUXMAKE.is_file(), f"{TUXMAKE} missing: install the dev dependencies"
    tree = from_debian("linux-source-6.1", print)
    with worktree(tree, tmp_path_factory.mktemp("kconfig") / "linux") as where:
        yield where


@pytest.fixture(scope="module")
def kconfig(src: Path) -> Kconfig:
    return read_kconfig(src)


def configure(src: Path, work: Path, base: str, *fragments: Path) -> str:
    """tuxmake's config target for x86_64 (fragments merged in this order); the .config text."""
    build, out = work / "build", work / "out"
    adds = [arg for fragment in fragments for arg in ("--kconfig-add", str(fragment))]
    argv = [
        str(TUXMAKE), "-C", str(src), "-b", str(build), "-o", str(out),
        "--runtime", "null", "--target-arch", "x86_64", "--toolchain", "gcc",
        "--kconfig", base, *adds, "--wrapper", "ccache", "-j", "2", "config",
    ]  # fmt: skip
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=300, check=False)
    assert proc.returncode == 0, f"tuxmake config failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return (build / ".config").read_text()


def fragment_without(work: Path, *names: str) -> Path:
    """A copy of swaplab's fragment without the lines that set ``names``."""
    lines = SWAPLAB_FRAGMENT.read_text().splitlines()
    dropped = {f"CONFIG_{name}=y" for name in names}
    copy = work / "swaplab-without.config"
    copy.write_text("".join(f"{line}\n" for line in lines if line not in dropped))
    return copy


def by_name(missing: list[MissingOption]) -> dict[str, MissingOption]:
    return {option.name: option for option in missing}


# ---------------------------------------------------------------- the Kconfig reader


def test_kconfig_dependencies_of_the_real_tree(src: Path) -> None:
    started = time.monotonic()
    kconfig = read_kconfig(src)
    elapsed = time.monotonic() - started
    print(f"read {len(kconfig.depends_on)} symbols in {elapsed:.2f} s")
    assert elapsed < 5
    assert len(kconfig.depends_on) > 10_000
    deps = kconfig.depends_on
    assert {"NFS_FS", "SWAP"} <= set(deps["NFS_SWAP"].replace("&&", " ").split())
    assert deps["SWAP"] == "MMU && BLOCK && !ARCH_NO_SWAP"
    # fs/Kconfig sources fs/nfs/Kconfig inside `if NETWORK_FILESYSTEMS`: that counts too.
    assert deps["NFS_FS"] == "NETWORK_FILESYSTEMS && INET && FILE_LOCKING && MULTIUSER"
    assert deps["DETECT_HUNG_TASK"] == "DEBUG_KERNEL"
    # x86's own definitions only: arch/x86/Kconfig's MMU is `def_bool y`, no dependency.
    assert deps["MMU"] == ""
    assert "NFS_SWAP" in kconfig.selected_by["SUNRPC_SWAP"]
    assert all(name in deps for name in REQUIRED)


# ---------------------------------------------------------------- swaplab's fragment


@pytest.mark.parametrize("base", ["tinyconfig", "defconfig"])
def test_swaplab_fragment_gives_a_node_everything(src: Path, kconfig: Kconfig, tmp_path: Path, base: str) -> None:
    text = configure(src, tmp_path, base, SWAPLAB_FRAGMENT)
    missing = missing_options(text, src, kconfig=kconfig)
    assert missing == [], describe(missing)
    # Not one line of the fragment is dropped or overridden (a dead line would mislead).
    final = parse_config(text)
    wanted = parse_config(SWAPLAB_FRAGMENT.read_text())
    assert {name: final.get(name, "n") for name in wanted} == wanted


def test_without_block_swap_is_dropped_and_block_named(src: Path, kconfig: Kconfig, tmp_path: Path) -> None:
    text = configure(src, tmp_path, "tinyconfig", fragment_without(tmp_path, "BLOCK"))
    missing = missing_options(text, src, kconfig=kconfig)
    print(describe(missing))
    named = by_name(missing)
    assert set(named) == {"BLOCK", "SWAP", "NFS_SWAP", "SUNRPC_SWAP"}
    assert "BLOCK" in named["SWAP"].unmet
    assert named["NFS_SWAP"].unmet == ["SWAP"]
    assert named["NFS_SWAP"].root_causes == ["BLOCK"]
    assert named["SUNRPC_SWAP"].selectors_unset == ["NFS_SWAP"]
    assert describe(missing).splitlines() == [
        "BLOCK is not set: it has no dependencies, so the base config or a fragment leaves it off",
        "SWAP is not set: it depends on MMU && BLOCK && !ARCH_NO_SWAP; BLOCK is not set",
        "NFS_SWAP is not set: it depends on NETWORK_FILESYSTEMS && NFS_FS && SWAP; SWAP is not set"
        " (at the root: BLOCK is not set)",
        "SUNRPC_SWAP is not set: it depends on NETWORK_FILESYSTEMS && SUNRPC, which holds;"
        " it is turned on by NFS_SWAP, not set",
    ]


# ---------------------------------------------------------------- a user's fragment


def dependency_closure(kconfig: Kconfig, names: tuple[str, ...]) -> set[str]:
    """The names and every symbol their dependency expressions name, transitively."""
    seen: set[str] = set()
    todo = list(names)
    while todo:
        name = todo.pop()
        if name in seen or name not in kconfig.depends_on:
            continue
        seen.add(name)
        expr = kconfig.depends_on[name]
        todo.extend(word for word in expr.replace("!", " ").replace("(", " ").replace(")", " ").split())
    return seen


def test_a_user_fragment_cannot_take_away_what_a_node_needs(src: Path, kconfig: Kconfig, tmp_path: Path) -> None:
    """The user's fragment turns off every required option and all they depend on, before
    swaplab's: swaplab's comes last and names each of them, so nothing sticks."""
    closure = dependency_closure(kconfig, REQUIRED)
    assert {"NET", "BLOCK", "NETDEVICES", "DEBUG_KERNEL", "VIRTIO_MENU"} <= closure
    user = tmp_path / "user.config"
    user.write_text("".join(f"# CONFIG_{name} is not set\n" for name in sorted(closure)) + "CONFIG_IKCONFIG=y\n")
    text = configure(src, tmp_path, "defconfig", user, SWAPLAB_FRAGMENT)
    missing = missing_options(text, src, kconfig=kconfig)
    assert missing == [], describe(missing)
    assert parse_config(text)["IKCONFIG"] == "y"  # the user's fragment was merged all the same


def test_a_removed_dependency_the_fragment_does_not_pin_is_named(src: Path, kconfig: Kconfig, tmp_path: Path) -> None:
    """A newer tree may give a required option a dependency swaplab's fragment does not set
    yet (simulated: its copy without NETDEVICES and NET_CORE). defconfig sets them, and a
    user's ``# CONFIG_NETDEVICES is not set`` then sticks: the check must say so."""
    user = tmp_path / "user.config"
    user.write_text("# CONFIG_NETDEVICES is not set\n")
    swaplab = fragment_without(tmp_path, "NETDEVICES", "NET_CORE")
    text = configure(src, tmp_path, "defconfig", user, swaplab)
    missing = missing_options(text, src, kconfig=kconfig)
    print(describe(missing))
    named = by_name(missing)
    assert set(named) == {"VIRTIO_NET"}
    assert named["VIRTIO_NET"].unmet == ["NETDEVICES", "NET_CORE"]
    assert named["VIRTIO_NET"].root_causes == ["NETDEVICES"]
    assert describe(missing) == (
        "VIRTIO_NET is not set: it depends on NETDEVICES && NET_CORE && VIRTIO;"
        " NETDEVICES is not set, NET_CORE is not set (at the root: NETDEVICES is not set)"
    )
