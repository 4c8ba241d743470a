"""Reading and unpacking someone else's files: the rules of workers.untrusted, member by member.

The doors these close, with real kernel files, are tests/integration/test_kernel_inputs.py.
"""

from __future__ import annotations

import io
import os
import tarfile
from pathlib import Path

import pytest

from workers.untrusted import (
    MIB,
    RefusedFile,
    TreeRules,
    check_tree,
    copy_tree,
    extract_tar,
    kbuild_link,
    open_dir,
    read_regular,
)

RULES = TreeRules(max_bytes=MIB, drop_link=kbuild_link, no_git=True)


def _tar(*members: tuple[str, str, str]) -> tarfile.TarFile:
    """An in-memory tar of (kind, name, data or link target) members, opened as a stream."""
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w") as out:
        for kind, name, value in members:
            info = tarfile.TarInfo(name)
            if kind == "file":
                info.size = len(value)
                out.addfile(info, io.BytesIO(value.encode()))
                continue
            info.type = {"dir": tarfile.DIRTYPE, "sym": tarfile.SYMTYPE, "hard": tarfile.LNKTYPE}[kind]
            info.linkname = value
            out.addfile(info)
    raw.seek(0)
    return tarfile.open(fileobj=raw, mode="r|")


def _unpack(tmp_path: Path, *members: tuple[str, str, str]) -> Path:
    dest = tmp_path / "tree"
    dest.mkdir()
    with _tar(*members) as archive:
        extract_tar(archive, dest, RULES, "t.tar")
    return dest


def test_a_plain_tree_unpacks_with_its_inside_links_and_hard_links(tmp_path: Path) -> None:
    dest = _unpack(
        tmp_path,
        ("dir", "./lib/modules/1.0/kernel", ""),
        ("file", "./lib/modules/1.0/kernel/a.ko", "a"),
        ("sym", "./lib/modules/1.0/kernel/b.ko", "a.ko"),
        ("hard", "./lib/modules/1.0/kernel/c.ko", "./lib/modules/1.0/kernel/a.ko"),
        ("sym", "./lib/modules/1.0/build", "/usr/src/linux"),  # kbuild's own: dropped
    )
    kernel = dest / "lib/modules/1.0/kernel"
    assert (kernel / "b.ko").read_text() == "a" and (kernel / "c.ko").stat().st_nlink == 2
    assert not (dest / "lib/modules/1.0/build").is_symlink()


@pytest.mark.parametrize(
    ("members", "why"),
    [
        ((("file", "../escape", "x"),), "climbs out"),
        ((("file", "/etc/escape", "x"),), "absolute"),
        ((("sym", "x.ko", "/etc/shadow"),), "link leaving the tree"),
        ((("sym", "x.ko", "../../etc/shadow"),), "link leaving the tree"),
        ((("sym", "here", "."), ("sym", "up", "here/..")), "link leaving the tree"),
        ((("sym", "d", "."), ("file", "d/x", "written through a link")), "symbolic link"),
        ((("hard", "x.ko", "elsewhere/shadow"),), "not in the tree"),
        ((("file", "a", "1"), ("file", "a", "2")), "appears twice"),
        ((("file", "sub/.git/config", "[core]\n\tfsmonitor = id\n"),), ".git"),
        ((("file", "big", "x" * (MIB + 1)),), "more than 1 MiB"),
    ],
)
def test_a_member_that_would_reach_outside_is_refused(
    tmp_path: Path, members: tuple[tuple[str, str, str], ...], why: str
) -> None:
    with pytest.raises(RefusedFile, match=why):
        _unpack(tmp_path, *members)
    assert sorted(path.name for path in tmp_path.iterdir()) == ["tree"]


def test_a_hard_link_to_a_file_outside_the_tree_is_found(tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.write_text("root's")
    tree = tmp_path / "tree"
    tree.mkdir()
    os.link(outside, tree / "inside")
    fd = open_dir(tree)
    try:
        with pytest.raises(RefusedFile, match="hard link to a file outside"):
            check_tree(fd, RULES, "tree")
    finally:
        os.close(fd)


def test_a_copy_refuses_a_fifo_without_opening_it(tmp_path: Path) -> None:
    source = tmp_path / "source"
    source.mkdir()
    os.mkfifo(source / "x.ko")  # opened for reading, it would block forever
    (tmp_path / "copy").mkdir()
    fd = open_dir(source)
    try:
        with pytest.raises(RefusedFile, match="FIFO"):
            copy_tree(fd, tmp_path / "copy", RULES, "source")
    finally:
        os.close(fd)


def test_a_path_through_a_link_is_refused(tmp_path: Path) -> None:
    (tmp_path / "real").mkdir()
    (tmp_path / "real" / "file").write_text("x")
    (tmp_path / "link").symlink_to(tmp_path / "real")
    assert read_regular(tmp_path / "real" / "file", 10) == b"x"
    with pytest.raises(RefusedFile, match="link is a symbolic link"):
        read_regular(tmp_path / "link" / "file", 10)
    with pytest.raises(RefusedFile, match="larger than 0 bytes"):
        read_regular(tmp_path / "real" / "file", 0)


def test_kbuild_links_are_build_and_source_of_a_release() -> None:
    assert kbuild_link(("lib", "modules", "6.1.0", "build")) and kbuild_link(("source",))
    assert not kbuild_link(("lib", "modules", "6.1.0", "kernel", "build"))
    assert not kbuild_link(("lib", "modules", "6.1.0", "x.ko"))
