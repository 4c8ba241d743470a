"""What swaplab keeps in its cache is its own: after a node image is built (its initrd holds
the lab's dropbear host key) and the results database opened, another local user reads
none of it. Tried as user ``nobody``, on a cache an older swaplab left readable to all."""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from orchestrator.history.db import ResultsDb
from tests.conftest import require_tools, unavailable
from workers.image import build_node_image, lab_keys
from workers.kernel import KernelArtifacts

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]


@pytest.fixture
def cache(monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A cache where anyone could reach it (pytest's own tmp is root's alone), made as an
    older swaplab did: 0755 directories, a 0644 results database."""
    if os.geteuid() != 0:
        unavailable("trying the cache as another user needs root")
    require_tools(("runuser", "dropbear", "dropbearkey", "busybox", "gcc"))
    outer = Path(tempfile.mkdtemp(prefix="swaplab-cache-modes-"))
    outer.chmod(0o755)
    root = outer / "swaplab"
    (root / "images").mkdir(parents=True, mode=0o755)
    root.chmod(0o755)
    (root / "images").chmod(0o755)
    (root / "results.db").touch(mode=0o644)  # an empty file is an empty SQLite database
    (root / "results.db").chmod(0o644)
    monkeypatch.setenv("SWAPLAB_CACHE", str(root))
    monkeypatch.delenv("SWAPLAB_DB_URL")  # the default: results.db in the cache
    try:
        yield root
    finally:
        shutil.rmtree(outer)


def _as_nobody(*argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["runuser", "-u", "nobody", "--", *argv], capture_output=True, text=True, timeout=30)


def test_another_user_reads_no_image_key_or_results_database(cache: Path, tmp_path: Path) -> None:
    vmlinuz = tmp_path / "vmlinuz"
    vmlinuz.write_bytes(b"not booted here")
    kernel = KernelArtifacts("linux-image-test", "1", "6.1.0-test", vmlinuz, tmp_path / "no-modules", "test")
    image = build_node_image(kernel, lab_keys("modes"), with_node_tool=False)
    with ResultsDb() as db:
        db.upgrade()
        assert db.where == f"sqlite:///{cache / 'results.db'}"

    modes = {
        path: oct(path.stat().st_mode & 0o7777)
        for path in (
            cache,
            cache / "images",
            image.initrd.parent,
            image.initrd,
            cache / "keys" / "modes",
            cache / "results.db",
        )
    }
    assert list(modes.values()) == ["0o700", "0o700", "0o700", "0o600", "0o700", "0o600"], modes
    assert (cache / "results.db").stat().st_size > 0  # the migrations ran in the narrowed file
    for target in (image.initrd, cache / "results.db", cache / "keys" / "modes" / "dropbear_ed25519_host_key"):
        tried = _as_nobody("cat", str(target))
        assert tried.returncode != 0 and "Permission denied" in tried.stderr, (target, tried)
    listing = _as_nobody("ls", str(cache))
    assert listing.returncode != 0 and "Permission denied" in listing.stderr
    # Every other thing in the cache: nobody reaches any of it by name either.
    paths = [str(path) for path in cache.rglob("*")]
    readable = _as_nobody("sh", "-c", 'for p; do test -r "$p" && echo "$p"; done; true', "sh", *paths)
    assert len(paths) > 10 and readable.stdout == ""
