"""The knfsd backend's server-side swap-file script, run here with this host's python3 and
mkswap exactly as the server VM runs it (``python3 - OP ROOT NODE NAME BYTES``, the script
on stdin), against what a node that is root in its export may leave behind."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import require_tools
from workers.lab.nfs.knfsd import _SWAP_SCRIPT

pytestmark = pytest.mark.integration
MIB = 1 << 20
SIZE = 8 * MIB


def _op(root: Path, op: str, name: str = "swap.r001", size: int = SIZE) -> dict[str, Any]:
    proc = subprocess.run(
        ["python3", "-", op, str(root), "node1", name, str(size)],
        input=_SWAP_SCRIPT, capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    answer: dict[str, Any] = json.loads(proc.stdout.strip().splitlines()[-1])
    return answer


@pytest.fixture
def exports(tmp_path: Path) -> Path:
    require_tools(("python3", "mkswap"))
    (tmp_path / "exports" / "node1").mkdir(parents=True)
    return tmp_path / "exports"


def test_a_swap_file_is_fully_allocated_and_has_a_swap_header(exports: Path) -> None:
    made = _op(exports, "create")
    swap = exports / "node1" / "swap.r001"
    assert made["bytes"] == SIZE and made["allocated"] >= SIZE, made
    assert swap.stat().st_blocks * 512 >= SIZE  # never sparse
    assert swap.read_bytes()[4086:4096] == b"SWAPSPACE2"
    assert swap.stat().st_mode & 0o777 == 0o600
    # Only mkswap's header page is written so far; a node's pages then count one by one.
    assert _op(exports, "pages") == {"pages": 1}
    with swap.open("r+b") as handle:
        handle.seek(5 * 4096)
        handle.write(b"x" * 4096 * 3)
    assert _op(exports, "pages") == {"pages": 4}


def test_a_gone_swap_file_reads_as_none_and_removing_it_twice_is_fine(exports: Path) -> None:
    assert _op(exports, "pages") == {"pages": None}
    _op(exports, "create")
    assert _op(exports, "remove") == {"removed": True}
    assert _op(exports, "remove") == {"removed": True}
    assert os.listdir(exports / "node1") == []


def test_a_link_the_node_left_is_neither_read_nor_followed(exports: Path, tmp_path: Path) -> None:
    secret = tmp_path / "secret"
    secret.write_bytes(b"root-only" * 1000)
    (exports / "node1" / "swap.r001").symlink_to(secret)
    assert _op(exports, "pages") == {"refused": "a symlink"}
    _op(exports, "remove")
    assert secret.read_bytes() == b"root-only" * 1000  # the link went, not what it named
    assert not (exports / "node1" / "swap.r001").is_symlink()


def test_a_directory_or_fifo_in_place_of_the_swap_file_is_refused_then_removed(exports: Path, tmp_path: Path) -> None:
    planted = exports / "node1" / "swap.r001"
    planted.mkdir()
    outside = tmp_path / "outside"
    outside.write_text("keep")
    (planted / "link").symlink_to(outside)
    assert _op(exports, "pages") == {"refused": "a directory"}
    _op(exports, "remove")
    assert not planted.exists() and outside.read_text() == "keep"
    os.mkfifo(planted)
    assert _op(exports, "pages") == {"refused": "a special file"}  # never opened for reading
    made = _op(exports, "create")  # a create replaces whatever was there
    assert made["allocated"] >= SIZE and planted.is_file()


def test_the_node_directory_itself_is_not_followed(exports: Path, tmp_path: Path) -> None:
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (exports / "node1").rmdir()
    (exports / "node1").symlink_to(elsewhere)
    proc = subprocess.run(
        ["python3", "-", "create", str(exports), "node1", "swap.r001", str(SIZE)],
        input=_SWAP_SCRIPT, capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert proc.returncode != 0 and "Not a directory: 'node1'" in proc.stderr, proc.stderr
    assert os.listdir(elsewhere) == []
