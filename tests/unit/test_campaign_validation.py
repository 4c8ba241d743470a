"""Campaign validation: a good file passes; each kind of bad file names file, line, field."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from model.campaign import load_campaign
from orchestrator.cli import main
from tests.campaign_issues import first_issue

REPO = Path(__file__).resolve().parents[2]
INVENTORY = REPO / "inventory" / "local.yml"

GOOD = f"""\
name: unit
lab: {INVENTORY}
kernels:
  - package: linux-image-amd64
nodes: 2
node:
  ram_mib: 256
nfs:
  version: 4.1
swap:
  size_mib: 512
workloads:
  - name: w
    mib: 384
    passes: 1
    timeout_s: 300
"""


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "campaign.yaml"
    path.write_text(text)
    return path


def only_issue(tmp_path: Path, text: str) -> tuple[int | None, str, str]:
    return first_issue(tmp_path, text)


def test_good_campaign_loads_with_resolved_sizes(tmp_path: Path) -> None:
    campaign = load_campaign(write(tmp_path, GOOD))
    assert campaign.ram_mib == 256
    assert campaign.spec.nfs.version == "4.1"
    assert campaign.planned_overcommit_mib(campaign.spec.workloads[0]) == 128
    assert campaign.lab.name == "local"


def test_shipped_campaigns_are_valid() -> None:
    shipped = sorted([*(REPO / "campaigns").glob("*.yaml"), *(REPO / "bench" / "campaigns").glob("*.yaml")])
    assert len(shipped) > 8
    for path in shipped:
        load_campaign(path)


@pytest.mark.parametrize(
    ("old", "new", "line", "field", "words"),
    [
        (
            "  ram_mib: 256\n",
            "  ram_mib: 256\n  colour: blue\n",
            8,
            "node.colour",
            "unknown key; allowed here: ram_mib, cpus",
        ),
        ("nodes: 2", "nodes: two", 5, "nodes", "valid integer"),
        ("  size_mib: 512", "  size_mib: -512", 11, "swap.size_mib", "greater than 0"),
        ("  version: 4.1", "  version: 5", 9, "nfs.version", "unknown NFS version '5'; allowed: 4.1, 4.2"),
        ("  version: 4.1", "  version: 3", 9, "nfs.version", "rpcbind"),
        ("  size_mib: 512", "  size_mib: 64", 11, "swap.size_mib", "smaller than the planned overcommit"),
        ("    mib: 384", "    mib: 128", 14, "workloads[0].mib", "nothing would swap"),
        ("    mib: 384", "    mib: 384\n    ram_ratio: 1.5", 13, "workloads[0]", "exactly one of 'mib'"),
        ("nodes: 2", "nodes: 9", 5, "nodes", "lab 'local' has 4"),
        ("  ram_mib: 256", "  ram_mib: 4096", 7, "node.ram_mib", "above the lab's node limit"),
        ("  - package: linux-image-amd64", "  - package: 'linux; rm -rf /'", 4, "kernels[0].package", "package"),
        ("  - package: linux-image-amd64", "  - {}", 4, "kernels[0]", "exactly one"),
        ("    passes: 1", "    passes: 0", 15, "workloads[0].passes", "greater than or equal to 1"),
        (
            "nfs:\n  version: 4.1",
            "nfs:\n  version: 4.1\n  mount_options: [vers=3]",
            10,
            "nfs.mount_options",
            "reserved",
        ),
        ("name: unit", "name: Unit Test!", 1, "name", "should match pattern"),
    ],
)
def test_bad_field_is_named_with_its_line(
    tmp_path: Path, old: str, new: str, line: int, field: str, words: str
) -> None:
    assert old in GOOD
    got_line, got_field, message = only_issue(tmp_path, GOOD.replace(old, new, 1))
    assert (got_line, got_field) == (line, field)
    assert words in message


def test_missing_inventory_names_the_lab_field(tmp_path: Path) -> None:
    line, field, message = only_issue(tmp_path, GOOD.replace(str(INVENTORY), "nowhere/lab.yml"))
    assert (line, field) == (2, "lab")
    assert "does not exist" in message


def test_missing_required_field(tmp_path: Path) -> None:
    text = GOOD.replace("swap:\n  size_mib: 512\n", "")
    _line, field, message = only_issue(tmp_path, text)
    assert field == "swap"
    assert "required" in message


def test_yaml_syntax_error_has_its_line(tmp_path: Path) -> None:
    line, _, message = only_issue(tmp_path, GOOD.replace("nodes: 2", "nodes: [2"))
    assert line is not None and line >= 5
    assert "invalid YAML" in message


def test_oom_opt_in_allows_workload_beyond_ram_and_swap(tmp_path: Path) -> None:
    text = GOOD.replace("  size_mib: 512", "  size_mib: 64").replace(
        "    timeout_s: 300", "    timeout_s: 300\n    allow_oom: true"
    )
    campaign = load_campaign(write(tmp_path, text))
    assert campaign.spec.workloads[0].allow_oom


def test_ram_ratio_is_relative_to_node_ram(tmp_path: Path) -> None:
    campaign = load_campaign(write(tmp_path, GOOD.replace("    mib: 384", "    ram_ratio: 1.5")))
    assert campaign.spec.workloads[0].touch_mib(campaign.ram_mib) == 384


def test_validate_command_exits_2_and_prints_location(tmp_path: Path) -> None:
    path = write(tmp_path, GOOD.replace("nodes: 2", "nodes: -1"))
    result = CliRunner().invoke(main, ["validate", str(path)])
    assert result.exit_code == 2
    assert f"{path}:5: nodes:" in result.output


def test_validate_json_lists_runs(tmp_path: Path) -> None:
    result = CliRunner().invoke(main, ["validate", "--json", str(write(tmp_path, GOOD))])
    assert result.exit_code == 0, result.output
    assert json.loads(result.output)["runs"] == ["r001 linux-image-amd64 / w #1"]


def test_sysctl_names_are_checked(tmp_path: Path) -> None:
    text = GOOD.replace("  ram_mib: 256\n", "  ram_mib: 256\n  sysctl: {'net.core.x; reboot': 1}\n")
    line, field, message = only_issue(tmp_path, text)
    assert (line, field) == (8, "node.sysctl")
    assert "vm.min_free_kbytes" in message
