"""Grouping a comparison campaign's runs into sides, and what a comparison does to the verdict."""

from __future__ import annotations

import itertools
from typing import Any

import pytest

from model.campaign import BaselineSide, CompareSpec
from model.result import Campaign, Comparison, RecordError, Run
from orchestrator.baselines import against_instance, comparable, in_campaign, regressions, side_values

SETTINGS = {"nfs": {"version": "4.1"}, "node_ram_mib": 256, "workload": {"name": "small", "mib": 320}}


def _run(
    variant: str,
    swap_in: float,
    verdict: str = "pass",
    kernel: str = "linux-image-amd64",
    release: str = "6.1.0-57-amd64",
) -> dict[str, Any]:
    figures = {"swap_in_mibps": {"value": swap_in}, "swap_out_mibps": {"value": 20.0}}
    return {
        "run_id": f"r{next(_RUN_IDS):03d}",
        "kernel_info": {"release": release},
        "variant": variant,
        "kernel_label": kernel,
        "workload": "small",
        "verdict": verdict,
        "settings": SETTINGS,
        "nodes": [{"node": "node1", "figures": figures}],
    }


_RUN_IDS = itertools.count(1)


def _record(runs: list[dict[str, Any]], cid: str = "ab-1") -> dict[str, Any]:
    return {"campaign_id": cid, "runs": runs}


SPEC = CompareSpec(primary="swap_in_mibps")


def test_only_passing_runs_give_values() -> None:
    values = side_values([Run.model_validate(_run("a", 10.0)), Run.model_validate(_run("a", 99.0, verdict="fail"))])
    assert values["swap_in_mibps"] == [10.0]


def test_each_variant_is_compared_with_the_baseline_variant() -> None:
    runs: list[dict[str, Any]] = []
    for base, pc0, same in [(14.0, 6.0, 14.3), (14.5, 6.2, 13.9), (13.8, 5.9, 14.1), (14.2, 6.1, 14.0)]:
        runs += [_run("base", base), _run("pc0", pc0), _run("same", same)]
    comparisons = {c["candidate"]: c for c in in_campaign(_record(runs), BaselineSide(variant="base"), SPEC)}
    assert set(comparisons) == {"pc0", "same"}
    for entry in comparisons.values():  # written into result.json: of its schema
        Comparison.model_validate(entry)
    assert comparisons["pc0"]["verdict"] == "regression" and comparisons["same"]["verdict"] == "no change"
    [line] = regressions(comparisons.values())
    assert line.startswith("regression: pc0 vs base (small): swap_in_mibps") and "%" in line


def test_too_few_passing_runs_is_insufficient_data() -> None:
    runs = [_run("base", 14.0), _run("pc0", 6.0), _run("base", 14.1), _run("pc0", 6.1)]
    [entry] = in_campaign(_record(runs), BaselineSide(variant="base"), SPEC)
    assert entry["verdict"] == "insufficient data"


def test_an_instance_is_compared_with_another_of_the_same_settings() -> None:
    old = _record([_run("", rate) for rate in (14.0, 14.2, 13.9, 14.1)], "ab-0")
    new = _record([_run("", rate, release="6.1.0-58-amd64") for rate in (9.0, 9.1, 8.8, 9.2)], "ab-1")
    assert comparable(new, old)
    [entry] = against_instance(new, old, SPEC)
    assert (entry["baseline"], entry["candidate"], entry["verdict"]) == ("ab-0", "ab-1", "regression")
    read = Comparison.model_validate(entry)
    assert (read.baseline_kernels, read.candidate_kernels) == (["6.1.0-57-amd64"], ["6.1.0-58-amd64"])
    assert [figure.figure for figure in read.figures][:2] == ["swap_out_mibps", "swap_in_mibps"]
    assert against_instance(Campaign.model_validate(new), Campaign.model_validate(old), SPEC) == [entry]
    [line] = regressions([entry])
    assert line.endswith(", kernel 6.1.0-57-amd64 -> 6.1.0-58-amd64")  # the night names the kernel that changed
    other = _record([{**_run("", 14.0), "settings": {**SETTINGS, "node_ram_mib": 512}}], "ab-2")
    assert not comparable(new, other)


def test_a_record_the_schema_refuses_is_never_compared() -> None:
    runs = [_run("base", 14.0), _run("pc0", 6.0) | {"nodes": [{"figures": {"swap_in_mibps": {"value": "fast"}}}]}]
    with pytest.raises(RecordError) as refused:
        in_campaign(_record(runs), BaselineSide(variant="base"), SPEC)
    assert "ab-1 does not match" in str(refused.value)
    assert "runs.1.nodes.0.node: Field required" in str(refused.value)
    assert "runs.1.nodes.0.figures.swap_in_mibps.value" in str(refused.value)
    with pytest.raises(RecordError, match=r"runs\.0\.run_id"):
        comparable(_record([{"settings": SETTINGS}]), _record(runs))


def test_two_kernels_on_one_side_are_never_pooled() -> None:
    # A: six runs of 6.1. B: three of 6.1 and three of 5.10 (an 81 % slower swap-out).
    # Pooled, B's median sat between the kernels and said "no change"; matched, each
    # kernel of B is compared with A's only kernel and says what it did.
    old = _record([_run("", 16.0 + i / 10, kernel="6.1") for i in range(6)], "ab-0")
    new_runs = [_run("", 16.0 + i / 10, kernel="6.1") for i in range(3)]
    new_runs += [_run("", 3.0 + i / 10, kernel="5.10", release="5.10.0-30-amd64") for i in range(3)]
    entries = {entry["kernel"]: entry for entry in against_instance(_record(new_runs), old, SPEC)}
    assert set(entries) == {"6.1", "5.10"}
    assert entries["5.10"]["verdict"] == "regression" and entries["6.1"]["verdict"] == "no change"
    assert [f["n_b"] for f in entries["5.10"]["figures"] if f["figure"] == "swap_in_mibps"] == [3]


def test_a_cell_the_baseline_did_not_run_is_said_not_compared_with_something_else() -> None:
    old = _record([_run("base", 14.0 + i / 10, kernel="6.1") for i in range(4)], "ab-0")
    other_settings = [
        {**_run("base", 9.0 + i / 10, kernel="6.1"), "settings": {**SETTINGS, "swap_mib": 1024}} for i in range(4)
    ]
    [entry] = against_instance(_record(other_settings), old, SPEC)
    assert entry["verdict"] == "insufficient data"
    assert "ab-0 has no runs of kernel 6.1, variant base, workload small with the same settings" in entry["note"]
    assert not comparable(_record(other_settings), old)
    # Two baseline kernels and a third on the candidate side: no guess which to compare with.
    two = _record([_run("", 14.0, kernel=k) for k in ("6.1", "6.6") for _ in range(4)], "ab-0")
    [entry] = against_instance(_record([_run("", 9.0, kernel="6.12") for _ in range(4)]), two, SPEC)
    assert entry["note"] == "ab-0 ran 6.1, 6.6 there, not 6.12: not compared"
