"""Comparison campaigns: variants as a matrix axis, a baseline side, interleaved runs."""

from __future__ import annotations

from pathlib import Path

import pytest

from model.campaign import load_campaign
from model.yamlpos import SpecError
from orchestrator.planner import node_specs, plan_runs

REPO = Path(__file__).resolve().parents[2]
CID = "ab-20261129-120000-abcd"
COMPARISON = """\
name: ab
lab: {lab}
kernels:
  - package: linux-image-amd64
nodes: 1
node: {{ram_mib: 256, sysctl: {{vm.min_free_kbytes: 16384}}}}
swap: {{size_mib: 512}}
workloads:
  - {{name: small, mib: 320}}
variants:
  - {{name: base}}
  - {{name: same}}
  - {{name: pc0, sysctl: {{vm.page-cluster: 0}}, nfs_version: "4.2"}}
baseline: {{variant: base}}
compare: {{primary: swap_in_mibps, figures: {{swap_in_mibps: {{tolerance: 0.2, min_repeats: 3}}}}}}
repeats: 4
"""


def _campaign(tmp_path: Path, text: str = COMPARISON):  # type: ignore[no-untyped-def]
    path = tmp_path / "ab.yaml"
    path.write_text(text.format(lab=REPO / "inventory" / "local.yml"))
    return load_campaign(path)


def test_a_comparison_interleaves_its_sides_counterbalanced(tmp_path: Path) -> None:
    runs = plan_runs(_campaign(tmp_path))
    # Every other repeat reversed: a host slowing down steadily weighs on every side alike.
    assert [(r.variant.name if r.variant else None, r.repeat) for r in runs] == [
        ("base", 1), ("same", 1), ("pc0", 1), ("pc0", 2), ("same", 2), ("base", 2),
        ("base", 3), ("same", 3), ("pc0", 3), ("pc0", 4), ("same", 4), ("base", 4),
    ]  # fmt: skip
    assert runs[2].label() == "r003 linux-image-amd64 [pc0] / small #1"


def test_a_campaign_without_baseline_keeps_each_cells_repeats_together(tmp_path: Path) -> None:
    text = COMPARISON.replace("baseline: {{variant: base}}\n", "")
    runs = plan_runs(_campaign(tmp_path, text))
    assert [(r.variant.name if r.variant else None, r.repeat) for r in runs][3:5] == [("base", 4), ("same", 1)]


def test_a_variant_adds_its_sysctls_and_nfs_version_to_its_runs(tmp_path: Path) -> None:
    campaign = _campaign(tmp_path)
    runs = plan_runs(campaign)
    [base] = node_specs(campaign, CID, runs[0], 1, ["node1"])
    [pc0] = node_specs(campaign, CID, runs[2], 1, ["node1"])
    assert base.sysctl == {"vm.min_free_kbytes": 16384} and base.nfs.version == "4.1"
    assert pc0.sysctl == {"vm.min_free_kbytes": 16384, "vm.page-cluster": 0} and pc0.nfs.version == "4.2"


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (("{{variant: base}}", "{{variant: nope}}"), "baseline.variant: 'nope' is none of the variants"),
        (("{{variant: base}}", "{{kernel: linux-image-6.6}}"), "baseline.kernel: 'linux-image-6.6' is none of the kernels"),
        (("{{variant: base}}", "{{kernel: linux-image-amd64}}"), "baseline.kernel: needs a second kernel"),
        (("{{variant: base}}", "{{variant: base, kernel: linux-image-amd64}}"), "name exactly one of"),
        (("primary: swap_in_mibps", "primary: swap_speed"), "unknown figure 'swap_speed'"),
        (("min_repeats: 3", "min_repeats: 1"), "compare.figures.swap_in_mibps.min_repeats"),
        (("min_repeats: 3", "min_repeats: 2"), "compare.figures.swap_in_mibps.min_repeats"),
        (("repeats: 4", "repeats: 3"), "repeats: a comparison needs at least 4 runs a side"),
        (("{{name: same}}", "{{name: base}}"), "variants[1].name: 'base' is already variants[0]"),
        (('nfs_version: "4.2"', 'nfs_version: "3"'), "NFSv3 needs rpcbind"),
    ],
)
def test_comparison_mistakes_name_the_field(tmp_path: Path, change: tuple[str, str], message: str) -> None:
    with pytest.raises(SpecError) as err:
        _campaign(tmp_path, COMPARISON.replace(*change))
    assert message in str(err.value)


def test_last_pass_is_a_baseline_of_its_own(tmp_path: Path) -> None:
    campaign = _campaign(tmp_path, COMPARISON.replace("{{variant: base}}", "last-pass"))
    assert campaign.spec.baseline == "last-pass"


def test_the_validators_floor_is_the_statistics_own() -> None:
    # model/ cannot import the statistics: the two numbers are kept equal here.
    from model.campaign import COMPARISON_MIN_REPEATS, COMPARISON_RECOMMENDED_REPEATS
    from orchestrator.stats import RECOMMENDED_REPEATS, fewest_per_side

    assert fewest_per_side(0.95) == COMPARISON_MIN_REPEATS
    assert COMPARISON_RECOMMENDED_REPEATS == RECOMMENDED_REPEATS
