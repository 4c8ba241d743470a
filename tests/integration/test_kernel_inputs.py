"""A submitter's kernel files reach nothing outside themselves, with the real tools.

Each test does what a submitter who wants root's files would: a ``.deb`` or a modules
directory whose ``kernel/x.ko`` is a link to a root-owned file, next to an ``x.ko.gz``
whose decompression would be written through that link; a device file or a setuid file in
them; a format-patch directory whose ``0001.patch`` is a link to a root-only file with a
``Subject:`` line. Each is refused, the target's content and owner are what they were
(checked from outside), and no error quotes the target.
"""

from __future__ import annotations

import gzip
import os
import shutil
import stat
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest

from model.kernel import BuildSpec, KernelSource, TarballSource
from model.protocol import StageFailure
from model.runspec import BuildMessage
from tests.conftest import require_tools
from workers import tasks
from workers.kernel import KernelInputError, fetch_kernel

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]
KVER = "9.9.9-swaplab"
SECRET = "Subject: root's secret line\nroot:$6$hash:19000:0:99999:7:::\n"
Plant = Callable[[Path, Path], None]  # (the kernel/ directory of the modules, the target)


@pytest.fixture
def target(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A root-owned file in a root-only directory: what the submitter's link points at."""
    monkeypatch.setenv("SWAPLAB_CACHE", str(tmp_path / "cache"))
    private = tmp_path / "root-only"
    private.mkdir(mode=0o700)
    secret = private / "shadow"
    secret.write_text(SECRET)
    secret.chmod(0o600)
    return secret


def _linked_module(kernel: Path, target: Path) -> None:
    (kernel / "x.ko").symlink_to(target)
    (kernel / "x.ko.gz").write_bytes(gzip.compress(b"\x7fELF written through the link"))


def _device(kernel: Path, _target: Path) -> None:
    os.mknod(kernel / "null.ko", 0o600 | stat.S_IFCHR, os.makedev(1, 3))


def _setuid(kernel: Path, _target: Path) -> None:
    shell = kernel / "sh.ko"
    shutil.copy("/bin/sh", shell)
    shell.chmod(0o4755)


def _fifo(kernel: Path, _target: Path) -> None:
    os.mkfifo(kernel / "blocks.ko")


def _escaping_chain(kernel: Path, _target: Path) -> None:
    """Every link's text stays inside; followed, the pair leads out (``here`` is ``.``)."""
    (kernel / "here").symlink_to(".")
    (kernel / "up").symlink_to("here/../../../../../..")


PLANTS = {"linked": _linked_module, "device": _device, "setuid": _setuid, "fifo": _fifo, "chain": _escaping_chain}
WHY = {
    "linked": "link leaving the tree",
    "device": "character device",
    "setuid": "setuid",
    "fifo": "FIFO",
    "chain": "link leaving the tree",
}


def _kernel_tree(root: Path, plant: Plant, target: Path) -> Path:
    """A package-shaped tree: boot/vmlinuz-<kver> and lib/modules/<kver>/kernel with the plant."""
    (root / "boot").mkdir(parents=True)
    (root / "boot" / f"vmlinuz-{KVER}").write_bytes(b"\0" * 0x202 + b"HdrS")
    kernel = root / "lib" / "modules" / KVER / "kernel"
    kernel.mkdir(parents=True)
    (kernel / "fine.ko").write_bytes(b"\x7fELF fine")
    plant(kernel, target)
    return root


def _unchanged(target: Path) -> None:
    assert target.read_text() == SECRET
    info = target.stat()
    assert (info.st_uid, stat.S_IMODE(info.st_mode)) == (0, 0o600)
    assert not (target.parent / "x.ko").exists()


@pytest.mark.parametrize("kind", sorted(set(PLANTS) - {"fifo"}))  # dpkg-deb -b packs no FIFO
def test_a_deb_with_a_planted_member_is_refused(tmp_path: Path, target: Path, kind: str) -> None:
    require_tools(("dpkg-deb", "depmod"))
    tree = _kernel_tree(tmp_path / "pkg", PLANTS[kind], target)
    (tree / "DEBIAN").mkdir()
    (tree / "DEBIAN" / "control").write_text(
        f"Package: linux-image-{KVER}\nVersion: 1.0\nArchitecture: amd64\nMaintainer: t <t@example.org>\n"
        "Description: a kernel with a planted member\n"
    )
    deb = tmp_path / "k.deb"
    subprocess.run(["dpkg-deb", "-b", "-Zgzip", str(tree), str(deb)], check=True, capture_output=True)

    with pytest.raises(KernelInputError, match=WHY[kind]) as refused:
        fetch_kernel(KernelSource(deb=deb))

    assert "secret" not in str(refused.value)
    _unchanged(target)
    assert not list((tmp_path / "cache" / "kernels").glob("deb-*")), "nothing of it may stay in the cache"


@pytest.mark.parametrize("kind", sorted(PLANTS))
def test_a_modules_directory_with_a_planted_member_is_refused(tmp_path: Path, target: Path, kind: str) -> None:
    require_tools(("depmod",))
    tree = _kernel_tree(tmp_path / "build", PLANTS[kind], target)

    with pytest.raises(KernelInputError, match=WHY[kind]) as refused:
        fetch_kernel(KernelSource(vmlinuz=tree / "boot" / f"vmlinuz-{KVER}", modules=tree))

    assert "secret" not in str(refused.value)
    _unchanged(target)


def test_a_kernel_image_that_is_a_link_is_refused(tmp_path: Path, target: Path) -> None:
    tree = _kernel_tree(tmp_path / "build", lambda _kernel, _target: None, target)
    (tmp_path / "vmlinuz").symlink_to(target)
    with pytest.raises(KernelInputError, match="symbolic link"):
        fetch_kernel(KernelSource(vmlinuz=tmp_path / "vmlinuz", modules=tree))
    _unchanged(target)


def test_a_patch_linked_to_a_root_only_file_is_refused_without_quoting_it(
    tmp_path: Path, target: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The build task as a submitter meets it: the run's build_failure is the input's, and
    says which file was refused, never what the file it points to holds."""
    source = tmp_path / "linux-9.9"
    source.mkdir()
    (source / "Makefile").write_text("all:\n\t@true\n")
    tarball = tmp_path / "linux-9.9.tar.gz"
    subprocess.run(["tar", "-czf", str(tarball), "-C", str(tmp_path), "linux-9.9"], check=True)
    series = tmp_path / "series"
    series.mkdir()
    (series / "0001-mm-swap-evil.patch").symlink_to(target)
    (series / "0002-fine.patch").write_text("From x\nSubject: [PATCH 2/2] fine\n\n")
    spec = BuildSpec(source=TarballSource(tarball=tarball), patches=series)
    message = BuildMessage(campaign="c-20261201-120000-abcd", run_id="r001", lab="local", kernel={"build": spec})
    monkeypatch.setattr(tasks, "admit_build", lambda message: message.kernel.build)
    said: list[str] = []

    failure = tasks._build(None, message, said.append)  # type: ignore[arg-type]  # no lock reached

    assert isinstance(failure, StageFailure) and failure.cause == "input"
    assert "0001-mm-swap-evil.patch is a symbolic link" in failure.reason
    assert "secret" not in failure.reason and not any("secret" in line for line in said)
    _unchanged(target)
