"""Planning: a campaign's matrix (kernels x workloads x repeats) expanded into runs,
and each run into the JSON run specs of its nodes."""

from __future__ import annotations

import hashlib
import secrets
import time
from dataclasses import dataclass

from model.campaign import Campaign, WorkloadSpec
from model.kernel import KernelSource
from model.runspec import NodeRunSpec, PreparedKernel, RunSetupSpec, WorkloadRef


@dataclass(frozen=True)
class RunPlan:
    """One cell of the matrix: a kernel, a workload, a repeat number."""

    run_id: str
    kernel: KernelSource
    workload: WorkloadSpec
    repeat: int

    def label(self) -> str:
        """Short human name of the run."""
        return f"{self.run_id} {self.kernel.label()} / {self.workload.name} #{self.repeat}"


def new_campaign_id(name: str) -> str:
    """A campaign id that sorts by time and never collides: ``smoke-20261127-101500-3fa2``."""
    return f"{name}-{time.strftime('%Y%m%d-%H%M%S')}-{secrets.token_hex(2)}"


def plan_runs(campaign: Campaign) -> list[RunPlan]:
    """Every run of the campaign, in a stable order."""
    spec = campaign.spec
    runs: list[RunPlan] = []
    for kernel in spec.kernels:
        for workload in spec.workloads:
            for repeat in range(1, spec.repeats + 1):
                runs.append(RunPlan(f"r{len(runs) + 1:03d}", kernel, workload, repeat))
    return runs


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
            sysctl=spec.node.sysctl,
            kernel=run.kernel,
            prepared=prepared,
            nfs=spec.nfs,
            swap_mib=spec.swap.size_mib,
            workload=WorkloadRef(
                name=run.workload.name,
                mib=run.workload.touch_mib(campaign.ram_mib) if campaign.ram_mib is not None else run.workload.mib,
                ram_ratio=None if campaign.ram_mib is not None else run.workload.ram_ratio,
                passes=run.workload.passes,
                timeout_s=run.workload.timeout_s,
                seed=_seed(campaign_id, run.run_id, name),
                allow_oom=run.workload.allow_oom,
            ),
            planned_overcommit_mib=campaign.planned_overcommit_mib(run.workload),
            boot_timeout_s=spec.boot_timeout_s,
        )
        for name in node_names
    ]


def _seed(*parts: str) -> int:
    # A different page pattern for every node of every run: a page that lands in the
    # wrong place (another run's swap slot) cannot verify by accident.
    return int.from_bytes(hashlib.sha256("/".join(parts).encode()).digest()[:6], "big")
