"""The end-to-end modules' shared lab-in-a-box: one for the whole session.

``lab_in_a_box`` brings ``tests/fixtures/labs/e2e-box.yml`` up with the real CLI
(``swaplab lab up --json``: the lab network in its namespace, the server VM from the
cached server image, provisioned through ansible-runner) the first time a test asks for
it, and every later test of any module gets the same one. An idle TCG VM still costs
CPU, so the lab is taken down (``swaplab lab down``) right after the last test that uses
it, not at the end of the session.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from model.lab import Lab, load_lab
from tests.conftest import require_tools

REPO = Path(__file__).resolve().parents[2]
BOX_INVENTORY = REPO / "tests" / "fixtures" / "labs" / "e2e-box.yml"
SWAPLAB = Path(sys.executable).with_name("swaplab")
BOX_TOOLS = ("qemu-system-x86_64", "qemu-img", "mmdebstrap", "mke2fs", "nft", "ip", "dropbearkey", "ssh")
UP_TIMEOUT_S = 1200.0  # a cold server image build, a TCG boot and Ansible, on a busy host
_LAST_USER = pytest.StashKey[bool]()


@dataclass
class LabInABox:
    """The session's lab-in-a-box: its inventory, lab model and what `lab up` said."""

    inventory: Path
    lab: Lab
    report: dict[str, Any]
    up_seconds: float
    progress: list[str] = field(default_factory=list)

    def cli(self, *args: str, timeout: float = UP_TIMEOUT_S) -> subprocess.CompletedProcess[str]:
        return subprocess.run([str(SWAPLAB), *args], capture_output=True, text=True, timeout=timeout, check=False)

    def down(self) -> subprocess.CompletedProcess[str]:
        return self.cli("lab", "down", "--json", "-i", str(self.inventory), timeout=300)


_box: LabInABox | None = None


@pytest.fixture(scope="session")
def lab_in_a_box() -> Iterator[LabInABox]:
    global _box
    require_tools(BOX_TOOLS)
    lab = load_lab(BOX_INVENTORY)
    began = time.monotonic()
    proc = subprocess.run(
        [str(SWAPLAB), "lab", "up", "--json", "-i", str(BOX_INVENTORY)],
        capture_output=True, text=True, timeout=UP_TIMEOUT_S, check=False,
    )  # fmt: skip
    sys.stderr.write(proc.stderr)
    assert proc.returncode == 0, f"swaplab lab up failed:\n{proc.stderr[-4000:]}"
    _box = LabInABox(BOX_INVENTORY, lab, json.loads(proc.stdout), round(time.monotonic() - began, 1))
    _box.progress = proc.stderr.splitlines()
    print(f"\n  lab-in-a-box up in {_box.up_seconds} s: {_box.report}", flush=True)
    try:
        yield _box
    finally:
        _box.down()  # idempotent: the last user's teardown may have done it already
        _box = None


def pytest_collection_modifyitems(session: pytest.Session, config: pytest.Config, items: list[pytest.Item]) -> None:
    users = [item for item in items if "lab_in_a_box" in getattr(item, "fixturenames", ())]
    if users:
        users[-1].stash[_LAST_USER] = True


def pytest_runtest_teardown(item: pytest.Item, nextitem: pytest.Item | None) -> None:
    if item.stash.get(_LAST_USER, False) and _box is not None:
        _box.down()
