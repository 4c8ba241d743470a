"""``swaplab lab check`` against real parts: this host's QEMU and ganesha, an SSH node nobody answers for.

(A node that answers, and the lab-in-a-box's knfsd, are probed in the end-to-end tests
that have them running.)
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

from tests.conftest import free_port, require_tools

REPO = Path(__file__).resolve().parents[2]
SWAPLAB = Path(sys.executable).with_name("swaplab")


def lab_check(*args: str) -> tuple[int, Any, str]:
    proc = subprocess.run([str(SWAPLAB), "lab", "check", *args], capture_output=True, text=True, timeout=120)
    return proc.returncode, proc.stdout, proc.stderr


def test_the_embedded_lab_is_fit_on_a_set_up_host() -> None:
    require_tools(("qemu-system-x86_64", "ganesha.nfsd"))
    code, out, _ = lab_check("--json", str(REPO / "inventory" / "local.yml"))
    view = json.loads(out)
    assert (code, view["fit"]) == (0, True), view
    assert [p["target"] for p in view["parts"] if p["part"] == "node"] == [f"node{i} (qemu)" for i in range(1, 5)]
    [nfs] = [p for p in view["parts"] if p["part"] == "nfs server"]
    assert "127.0.0.1:12049" in nfs["target"] and nfs["fit"]


def test_an_ssh_node_that_does_not_answer_is_not_fit_and_named(tmp_path: Path) -> None:
    port = free_port()  # nothing listens there
    known_hosts = tmp_path / "known_hosts"
    known_hosts.write_text("")
    inventory = tmp_path / "lab.yml"
    inventory.write_text(
        f"""\
all:
  vars: {{swaplab_lab: checked}}
  children:
    nfs_server:
      hosts:
        localhost: {{swaplab_nfs: ganesha, swaplab_nfs_port: 12055}}
    nodes:
      hosts:
        gone: {{swaplab_driver: ssh, ansible_host: 127.0.0.1, ansible_port: {port}, swaplab_known_hosts: {known_hosts}}}
"""
    )
    code, out, _ = lab_check(str(inventory))
    assert code == 2, out
    [row] = [line for line in out.splitlines() if line.startswith("  node ")]
    assert "NOT FIT" in row and f"root@127.0.0.1:{port}" in row, row
    assert out.splitlines()[-1] == "not fit: gone (ssh)"


def test_a_bad_inventory_names_the_file_and_line(tmp_path: Path) -> None:
    inventory = tmp_path / "lab.yml"
    inventory.write_text(
        "all:\n  children:\n    nfs_server:\n      hosts:\n        localhost: {swaplab_nfs: ganesha}\n"
        "    nodes:\n      hosts:\n        n1: {swaplab_driver: warp, ansible_host: 127.0.0.1}\n"
    )
    code, out, err = lab_check(str(inventory))
    assert code == 2 and f"{inventory}:8" in err and "unknown driver 'warp'" in err, (out, err)
