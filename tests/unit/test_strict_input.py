"""Input mistakes are exit 2 from ``swaplab validate``, within a second or two, naming the
file, the line and the field: never a traceback, a hang, a silent change of meaning, or
(past validation) a kernel verdict. One small file per mistake a new user made.

The CLI runs in-process (click's runner) so each case costs milliseconds, not a process.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest
from click.testing import CliRunner

from model.runspec import Failure, NodeResult
from orchestrator.cli import main
from orchestrator.verdict import Verdict, exit_code, judge_node

REPO = Path(__file__).resolve().parents[2]
INVENTORY = (REPO / "inventory" / "local.yml").read_text()
SMOKE = (REPO / "campaigns" / "smoke.yaml").read_text()


def validate(path: Path) -> tuple[int, str]:
    began = time.monotonic()
    result = CliRunner().invoke(main, ["validate", str(path)])
    assert time.monotonic() - began < 2.0, f"validate took {time.monotonic() - began:.1f} s"
    assert result.exception is None or isinstance(result.exception, SystemExit), result.exception
    return result.exit_code, result.stderr


def campaign(tmp_path: Path, text: str = SMOKE, inventory: str = INVENTORY) -> Path:
    (tmp_path / "lab.yml").write_text(inventory)
    path = tmp_path / "c.yaml"
    path.write_text(text.replace("../inventory/local.yml", "lab.yml"))
    return path


def line_of(path: Path, needle: str, nth: int = 1) -> int:
    lines = path.read_bytes().decode(errors="replace").splitlines()
    return [i for i, line in enumerate(lines, 1) if needle in line][nth - 1]


def refused(path: Path, where: Path, needle: str, field: str, words: str, nth: int = 1) -> None:
    """Exit 2 with ``where:<line of needle>: <field>: ...words...`` on stderr."""
    code, stderr = validate(path)
    assert code == 2, stderr
    line = line_of(where, needle, nth)
    expected = f"{where}:{line}: {field}: " if field else f"{where}:{line}: "
    assert expected in stderr, stderr
    assert words in stderr, stderr


# -- tracebacks -------------------------------------------------------------------------------------


def test_a_file_that_is_not_utf8_names_the_line_of_the_bad_byte(tmp_path: Path) -> None:
    path = campaign(tmp_path)
    path.write_bytes(path.read_bytes().replace(b"one node swaps", b"one n\xffde swaps"))
    refused(path, path, "description:", "", "UTF-8")


def test_a_nul_byte_is_refused_with_its_line(tmp_path: Path) -> None:
    path = campaign(tmp_path)
    path.write_bytes(path.read_bytes().replace(b"name: smoke", b"name: sm\x00oke"))
    refused(path, path, "name: sm", "", "")


def test_a_self_referencing_anchor_is_refused(tmp_path: Path) -> None:
    path = campaign(tmp_path, SMOKE + "extra: &a [*a]\n")
    refused(path, path, "extra:", "", "itself")


def test_very_deep_nesting_is_refused(tmp_path: Path) -> None:
    path = campaign(tmp_path, SMOKE + "deep: " + "[" * 5000 + "]" * 5000 + "\n")
    code, stderr = validate(path)
    assert (code == 2 and "deep" in stderr.lower()) or "nest" in stderr.lower(), stderr


def test_a_symlink_loop_as_the_lab_is_refused(tmp_path: Path) -> None:
    path = campaign(tmp_path)
    (tmp_path / "lab.yml").unlink()
    (tmp_path / "lab.yml").symlink_to(tmp_path / "lab.yml")
    refused(path, path, "lab:", "lab", "cannot be resolved")


def test_a_symlink_loop_as_a_kernel_file_is_refused(tmp_path: Path) -> None:
    (tmp_path / "k.deb").symlink_to(tmp_path / "k.deb")
    path = campaign(tmp_path, SMOKE.replace("- package: linux-image-amd64", "- deb: k.deb"))
    refused(path, path, "- deb: k.deb", "kernels[0].deb", "cannot be resolved")


def test_an_integer_host_name_is_refused(tmp_path: Path) -> None:
    path = campaign(tmp_path, inventory=INVENTORY.replace("node4: {", "4: {"))
    refused(path, tmp_path / "lab.yml", "4: {", "all.children.nodes.hosts", "read as a number, not as text")


@pytest.mark.parametrize("host_vars", ["[17224]", "port17224"])
def test_host_vars_that_are_not_a_mapping_are_refused(tmp_path: Path, host_vars: str) -> None:
    path = campaign(tmp_path, inventory=INVENTORY.replace("node4: {ansible_port: 17224}", f"node4: {host_vars}"))
    refused(path, tmp_path / "lab.yml", "node4:", "all.children.nodes.hosts.node4", "must be a mapping")


def test_an_nfs_port_that_is_not_a_number_is_refused(tmp_path: Path) -> None:
    path = campaign(tmp_path, inventory=INVENTORY.replace("swaplab_nfs_port: 12049", "swaplab_nfs_port: abc"))
    lab = tmp_path / "lab.yml"
    refused(path, lab, "swaplab_nfs_port", "all.children.nfs_server.hosts.localhost.swaplab_nfs_port", "integer")
    nfs = CliRunner().invoke(main, ["nfs", "status", "-i", str(lab)])
    assert nfs.exit_code == 2 and f"{lab}:{line_of(lab, 'swaplab_nfs_port')}:" in nfs.stderr


# -- hangs ------------------------------------------------------------------------------------------


def test_a_billion_laughs_answers_at_once(tmp_path: Path) -> None:
    levels = ["a0: &a0 [x, x, x, x, x, x, x, x, x, x]"]
    levels += [f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 10)}]" for i in range(1, 12)]
    path = campaign(tmp_path, SMOKE + "\n".join(levels) + "\n")
    code, stderr = validate(path)  # within 2 s, or validate() fails the test
    assert code == 2 and "alias" in stderr, stderr


def test_a_device_is_refused_without_reading_it() -> None:
    code, stderr = validate(Path("/dev/zero"))
    assert code == 2 and "/dev/zero" in stderr and "regular file" in stderr, stderr


def test_a_fifo_is_refused_without_reading_it(tmp_path: Path) -> None:
    fifo = tmp_path / "c.yaml"
    os.mkfifo(fifo)
    code, stderr = validate(fifo)
    assert code == 2 and "regular file" in stderr, stderr


# -- silent changes of meaning ------------------------------------------------------------------------


def test_a_second_workloads_key_is_refused_not_kept(tmp_path: Path) -> None:
    path = campaign(tmp_path, SMOKE + "workloads:\n  - {name: other, mib: 400}\n")
    refused(path, path, "workloads:", "workloads", "duplicate key 'workloads'", nth=2)


def test_a_duplicate_node_name_is_refused_not_dropped(tmp_path: Path) -> None:
    path = campaign(tmp_path, inventory=INVENTORY.replace("node4: {ansible_port: 17224}", "node3: {ansible_port: 17224}"))
    refused(path, tmp_path / "lab.yml", "node3: {ansible_port: 17224}", "all.children.nodes.hosts.node3", "duplicate key 'node3'")


def test_a_name_with_a_trailing_newline_is_refused(tmp_path: Path) -> None:
    path = campaign(tmp_path, SMOKE.replace("name: smoke", 'name: "smoke\\n"'))
    refused(path, path, 'name: "smoke', "name", "pattern")


def test_a_sysctl_name_with_a_trailing_newline_is_refused(tmp_path: Path) -> None:
    path = campaign(tmp_path, SMOKE.replace("sysctl: {vm.min_free_kbytes: 16384}", 'sysctl: {"vm.x\\n": 1}'))
    refused(path, path, "sysctl:", "node.sysctl", "must look like")


def test_nested_groups_under_nodes_are_refused(tmp_path: Path) -> None:
    nested = INVENTORY.replace("      hosts:\n        node1", "      children:\n        fast: {}\n      hosts:\n        node1")
    path = campaign(tmp_path, inventory=nested)
    refused(path, tmp_path / "lab.yml", "      children:", "all.children.nodes.children", "nested groups")


def test_true_is_not_one_mib(tmp_path: Path) -> None:
    path = campaign(tmp_path, inventory=INVENTORY.replace("swaplab_ram_mib: 1024", "swaplab_ram_mib: true"))
    refused(path, tmp_path / "lab.yml", "swaplab_ram_mib", "all.children.nodes.vars.swaplab_ram_mib", "integer")


def test_version_4_10_is_not_read_as_4_1(tmp_path: Path) -> None:
    path = campaign(tmp_path, SMOKE.replace('version: "4.1"', "version: 4.10"))
    refused(path, path, "version: 4.10", "nfs.version", "'4.10'")
    plain = campaign(tmp_path, SMOKE.replace('version: "4.1"', "version: 4.1"))
    assert validate(plain)[0] == 0  # written plainly, 4.1 still means 4.1


@pytest.mark.parametrize("option", ["v3", "udp", "minorversion=0", "nfsvers=3", "mountproto=udp"])
def test_mount_options_that_change_the_protocol_are_reserved(tmp_path: Path, option: str) -> None:
    path = campaign(tmp_path, SMOKE.replace("mount_options: [hard, timeo=600]", f"mount_options: [hard, {option}]"))
    refused(path, path, "mount_options:", "nfs.mount_options", "set by swaplab")


# -- bad input judged as a kernel or lab verdict ---------------------------------------------------------


def test_a_workload_beyond_the_node_tool_is_refused_even_with_allow_oom(tmp_path: Path) -> None:
    path = campaign(tmp_path, SMOKE.replace("    mib: 384 ", "    allow_oom: true\n    mib: 2000000 "))
    refused(path, path, "mib: 2000000", "workloads[0].mib", "1048576")


def test_a_port_beyond_65535_is_refused(tmp_path: Path) -> None:
    path = campaign(tmp_path, inventory=INVENTORY.replace("ansible_port: 17224", "ansible_port: 70000"))
    refused(path, tmp_path / "lab.yml", "70000", "all.children.nodes.hosts.node4.ansible_port", "65535")


def test_a_kernel_file_that_does_not_exist_is_refused(tmp_path: Path) -> None:
    path = campaign(tmp_path, SMOKE.replace("- package: linux-image-amd64", "- deb: nowhere.deb"))
    refused(path, path, "- deb: nowhere.deb", "kernels[0].deb", "does not exist")


def test_a_file_that_is_not_a_deb_is_refused(tmp_path: Path) -> None:
    path = campaign(tmp_path, SMOKE.replace("- package: linux-image-amd64", "- deb: /etc/passwd"))
    refused(path, path, "- deb: /etc/passwd", "kernels[0].deb", "not a Debian package")


def test_a_vmlinuz_that_is_not_a_kernel_is_refused(tmp_path: Path) -> None:
    (tmp_path / "mods").mkdir()
    text = SMOKE.replace("- package: linux-image-amd64", "- {vmlinuz: /etc/hostname, modules: mods}")
    path = campaign(tmp_path, text)
    refused(path, path, "- {vmlinuz:", "kernels[0].vmlinuz", "not an x86 kernel image")


def test_two_nodes_on_one_ssh_address_are_refused(tmp_path: Path) -> None:
    path = campaign(tmp_path, inventory=INVENTORY.replace("ansible_port: 17224", "ansible_port: 17223"))
    refused(path, tmp_path / "lab.yml", "node4:", "all.children.nodes.hosts.node4", "127.0.0.1:17223 of node3")


def test_duplicate_workload_names_are_refused(tmp_path: Path) -> None:
    text = SMOKE.replace("workloads:\n", "workloads:\n  - {name: overcommit, mib: 300}\n")
    path = campaign(tmp_path, text)
    refused(path, path, "  - name: overcommit", "workloads[1].name", "already workloads[0]")


def test_more_than_a_thousand_runs_are_refused(tmp_path: Path) -> None:
    path = campaign(tmp_path, SMOKE + "repeats: 1001\n")
    refused(path, path, "repeats: 1001", "repeats", "1000")
    kernels = SMOKE.replace("  - package: linux-image-amd64", "\n".join(["  - package: linux-image-amd64"] * 101))
    many = campaign(tmp_path, kernels + "repeats: 10\n")
    refused(many, many, "repeats: 10", "repeats", "101 kernels x 1 workloads x 10 repeats = 1010 runs")


# -- the principle, past validation -----------------------------------------------------------------------------


@pytest.mark.parametrize("cause", ["input", "infra"])
def test_past_validation_an_input_or_lab_failure_is_never_a_kernel_fail(cause: str) -> None:
    failure = Failure.model_validate({"cause": cause, "phase": "workload", "reason": "swaplab-node refused --mib"})
    verdict = judge_node(NodeResult(run_id="r001", node="node1", failure=failure), [])
    assert verdict.verdict is (Verdict.INVALID if cause == "input" else Verdict.INFRA_ERROR)
    assert int(exit_code([verdict])) == (4 if cause == "input" else 2)


# -- local kernel files stay where the lab allows them ---------------------------------------------------


def _deb(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"!<arch>\ndebian-binary   0           0     0     100644  4         `\n2.0\n")
    return path


def test_a_local_kernel_file_needs_a_lab_that_takes_them(tmp_path: Path) -> None:
    _deb(tmp_path / "k.deb")
    path = campaign(tmp_path, SMOKE.replace("- package: linux-image-amd64", "- deb: k.deb"))
    refused(path, path, "- deb: k.deb", "kernels[0].deb", "takes no local kernel files")


def test_a_local_kernel_file_inside_the_labs_kernel_dirs_is_taken(tmp_path: Path) -> None:
    _deb(tmp_path / "kernels" / "k.deb")
    inventory = INVENTORY.replace("    swaplab_lab: local\n", f"    swaplab_lab: local\n    swaplab_kernel_dirs: [{tmp_path / 'kernels'}]\n")
    path = campaign(tmp_path, SMOKE.replace("- package: linux-image-amd64", "- deb: kernels/k.deb"), inventory)
    assert validate(path) == (0, "")


def test_a_link_out_of_the_labs_kernel_dirs_is_refused(tmp_path: Path) -> None:
    outside = _deb(tmp_path / "elsewhere" / "k.deb")
    (tmp_path / "kernels").mkdir()
    (tmp_path / "kernels" / "k.deb").symlink_to(outside)
    inventory = INVENTORY.replace("    swaplab_lab: local\n", f"    swaplab_lab: local\n    swaplab_kernel_dirs: [{tmp_path / 'kernels'}]\n")
    path = campaign(tmp_path, SMOKE.replace("- package: linux-image-amd64", "- deb: kernels/k.deb"), inventory)
    refused(path, path, "- deb: kernels/k.deb", "kernels[0].deb", "outside the directories lab local takes")
