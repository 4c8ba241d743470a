"""Judging a run: its criteria in Prometheus, its nodes' verdicts, what its record says.

The scheduler owns the state machine (who judges, under which claim, when a campaign
ends); what a run's verdict *is* lives here, a pure function of the run, its node results
and Prometheus' answers, so ``swaplab check`` and re-judging use the same code.
"""

from __future__ import annotations

from typing import Any

from model.campaign import Campaign
from model.figures import timing_label
from model.hashes import RunHash
from model.runspec import NodeResult
from orchestrator.criteria import Criterion, CriterionSpec
from orchestrator.evaluation import evaluate_run, run_criteria
from orchestrator.prometheus import PrometheusApi
from orchestrator.results import run_entry


def run_context(campaign: Campaign, run: RunHash, results: list[NodeResult]) -> dict[str, Any]:
    """What a run's record says besides its verdict: why it was redone, which kernel it ran
    (release, source, artifact, patches) and the settings it ran under."""
    prepared = run.prepared
    built = run.built or {}
    booted = next((r.kernel for r in results if r.kernel.get("kver")), {})
    redone = [{"attempt": run.attempt - 1, "reason": run.retry_reason}] if run.retry_reason else []
    variant = run.variant
    return {
        "redone": redone,
        # The sides a comparison groups runs by: the kernel as the campaign names it, the variant.
        "kernel_label": run.kernel.label(),
        "variant": variant.name if variant is not None else None,
        "kernel_info": {
            "release": booted.get("kver") or (prepared.kver if prepared else None) or built.get("release"),
            "version": booted.get("uname_v") or built.get("uts_version"),
            "source": (prepared.source if prepared else None) or run.label,
            "artifact": built.get("artifact") or (prepared.artifact if prepared else None),
            "patches": list(built.get("patches") or []),
        },
        "settings": {
            "nfs": {
                **campaign.spec.nfs.model_dump(mode="json"),
                **({"version": variant.nfs_version} if variant is not None and variant.nfs_version else {}),
            },
            "sysctl": campaign.spec.sysctl_of(variant),
            "node_ram_mib": next((r.ram_mib for r in results if r.ram_mib), campaign.ram_mib),
            "swap_mib": campaign.spec.swap.size_mib,
            "workload": run.workload.model_dump(mode="json"),
            "timing": timing_label(campaign.spec.timing),
            "faults": [fault.describe() for fault in campaign.spec.faults],
        },
    }


def judge_run(
    campaign: Campaign,
    run: RunHash,
    meta: dict[str, Any],
    results: list[NodeResult],
    user: list[CriterionSpec],
    api: PrometheusApi,
) -> dict[str, Any]:
    """Evaluate a run's criteria in Prometheus and judge its nodes: its part of result.json."""
    planned = campaign.planned_overcommit_mib(run.workload)
    criteria = [Criterion.from_spec(c) for c in user]

    def for_node(result: NodeResult) -> list[Criterion]:
        # Nodes that run already learn their RAM at run time: their own overcommit.
        overcommit = result.planned_overcommit_mib if result.planned_overcommit_mib is not None else planned
        return run_criteria(overcommit or 0, criteria)

    return run_entry(meta, results, evaluate_run(for_node, api, results))
