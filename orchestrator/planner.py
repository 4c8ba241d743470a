"""Planning: a campaign's matrix (kernels x variants x workloads x repeats) expanded into runs,
and each run into the JSON run specs of its nodes."""

from __future__ import annotations

import hashlib
import secrets
import time
from dataclasses import dataclass

from model.campaign import Campaign, NfsSpec, Variant, WorkloadSpec
from model.kernel import KernelSource
from model.runspec import NodeRunSpec, PreparedKernel, RunSetupSpec, WorkloadRef


@dataclass(frozen=True)
class RunPlan:
    """One cell of the matrix: a kernel, a variant of the settings, a workload, a repeat number."""

    run_id: str
    kernel: KernelSource
    workload: WorkloadSpec
    repeat: int
    variant: Variant | None = None

    def label(self) -> str:
        """Short human name of the run."""
        variant = f" [{self.variant.name}]" if self.variant is not None else ""
        return f"{self.run_id} {self.kernel.label()}{variant} / {self.workload.name} #{self.repeat}"


def new_campaign_id(name: str) -> str:
    """A campaign id that sorts by time and never collides: ``smoke-20261127-101500-3fa2``."""
    return f"{name}-{time.strftime('%Y%m%d-%H%M%S')}-{secrets.token_hex(2)}"


def plan_runs(campaign: Campaign) -> list[RunPlan]:
    """Every run of the campaign, in a stable order.

    A comparison campaign (one with a baseline) interleaves its sides, counterbalanced:
    repeat 1 of every kernel and variant, then repeat 2 in the reverse order ... (A B B A
    A B B A, never A A B B), so a drift of the host over the campaign's hours spreads over
    every side alike instead of posing as a change (plain A B A B still favours A when the
    host slows down steadily).
    """
    spec = campaign.spec
    variants: list[Variant | None] = list(spec.variants) or [None]
    cells = [(k, v, w) for k in spec.kernels for v in variants for w in spec.workloads]
    repeats = range(1, spec.repeats + 1)
    if spec.baseline is not None:
        order = [(cell, repeat) for repeat in repeats for cell in (cells if repeat % 2 else cells[::-1])]
    else:
        order = [(cell, repeat) for cell in cells for repeat in repeats]
    return [
        RunPlan(f"r{index:03d}", kernel, workload, repeat, variant)
        for index, ((kernel, variant, workload), repeat) in enumerate(order, 1)
    ]


def run_setup_spec(campaign: Campaign, campaign_id: str, run: RunPlan, artifact: str | None = None) -> RunSetupSpec:
    """What the run's setup needs: the lab (its worker knows its NFS server), the kernel,
    and for a ``build`` kernel the artifact its build made."""
    return RunSetupSpec(
        campaign=campaign_id, run_id=run.run_id, lab=campaign.lab.name, kernel=run.kernel, artifact=artifact
    )


def node_specs(
    campaign: Campaign,
    campaign_id: str,
    run: RunPlan,
    attempt: int,
    node_names: list[str],
    prepared: PreparedKernel | None = None,
) -> list[NodeRunSpec]:
    """The run specs of the nodes assigned to ``run`` (``prepared``: what its setup built)."""
    spec = campaign.spec
    return [
        NodeRunSpec(
            campaign=campaign_id,
            run_id=run.run_id,
            attempt=attempt,
            lab=campaign.lab.name,
            node=name,
            ram_mib=campaign.ram_mib,
            cpus=campaign.cpus,
            sysctl=spec.sysctl_of(run.variant),
            kernel=run.kernel,
            prepared=prepared,
            nfs=_nfs(spec.nfs, run.variant),
            swap_mib=spec.swap.size_mib,
            workload=WorkloadRef(
                name=run.workload.name,
                mib=run.workload.touch_mib(campaign.ram_mib) if campaign.ram_mib is not None else run.workload.mib,
                ram_ratio=None if campaign.ram_mib is not None else run.workload.ram_ratio,
                passes=run.workload.passes,
                timeout_s=run.workload.timeout_s,
                seed=_seed(campaign_id, run.run_id, name),
                allow_oom=run.workload.allow_oom,
                stalled_after_s=run.workload.stalled_after_s,
            ),
            planned_overcommit_mib=campaign.planned_overcommit_mib(run.workload),
            boot_timeout_s=spec.boot_timeout_s,
            timing=spec.timing,
            faults=spec.faults,
            run_index=index,
        )
        for index, name in enumerate(node_names)
    ]


def _nfs(nfs: NfsSpec, variant: Variant | None) -> NfsSpec:
    if variant is None or variant.nfs_version is None:
        return nfs
    return nfs.model_copy(update={"version": variant.nfs_version})


def _seed(*parts: str) -> int:
    # A different page pattern for every node of every run: a page that lands in the
    # wrong place (another run's swap slot) cannot verify by accident.
    return int.from_bytes(hashlib.sha256("/".join(parts).encode()).digest()[:6], "big")
