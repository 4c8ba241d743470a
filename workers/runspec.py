"""The JSON contract of a node session: one node's run spec in, one node result out.

Both sides are plain pydantic models so a Celery task can carry them as JSON.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from workers.kernel import KernelSource

FailureCause = Literal["kernel", "infra", "aborted", "cancelled"]


class NodeRef(BaseModel):
    """The node as the inventory describes it (mirrors workers.drivers.base.NodeConfig)."""

    model_config = ConfigDict(frozen=True)

    name: str
    lab: str
    driver: str
    ram_mib: int
    cpus: int
    ssh_host: str
    ssh_port: int
    options: dict[str, Any] = Field(default_factory=dict)


class WorkloadRef(BaseModel):
    """The workload as the node runs it."""

    model_config = ConfigDict(frozen=True)

    name: str
    mib: int
    passes: int
    timeout_s: int
    seed: int


class NodeRunSpec(BaseModel):
    """Everything one node needs for one run (JSON-serialisable)."""

    model_config = ConfigDict(frozen=True)

    campaign: str
    run_id: str
    node: NodeRef
    ram_mib: int
    cpus: int
    sysctl: dict[str, int] = Field(default_factory=dict)
    kernel: KernelSource
    nfs_backend: str
    nfs_settings: dict[str, Any]
    nfs_version: str
    mount_options: list[str]
    swap_mib: int
    workload: WorkloadRef
    planned_overcommit_mib: int
    boot_timeout_s: int
    result_dir: str


class Failure(BaseModel):
    """Why a node session stopped early, classified by cause."""

    cause: FailureCause
    phase: str
    reason: str


class WorkloadOutcome(BaseModel):
    """What the workload on the node reported."""

    exit_status: int | None = None
    done: bool = False
    pages: int = 0
    bad_pages: int = 0
    corrupt: list[str] = Field(default_factory=list)
    started_node_ns: int | None = None
    started_host_ns: int | None = None
    start_at_host_ns: int | None = None
    elapsed_s: float | None = None
    last_line: str = ""


class NodeResult(BaseModel):
    """Evidence from one node for one run; the verdict is judged from it elsewhere."""

    run_id: str
    node: str
    kernel: dict[str, str] = Field(default_factory=dict)
    image_hash: str = ""
    started_at: float = 0.0
    finished_at: float = 0.0
    phases: dict[str, float] = Field(default_factory=dict)
    failure: Failure | None = None
    samples: int = 0
    counters_first: dict[str, float] = Field(default_factory=dict)
    counters_last: dict[str, float] = Field(default_factory=dict)
    workload: WorkloadOutcome = Field(default_factory=WorkloadOutcome)
    clock_offset_ns: int | None = None
    clock_uncertainty_ns: int | None = None
    console_events: list[dict[str, Any]] = Field(default_factory=list)
    console_tail: list[str] = Field(default_factory=list)
    swap_file_nonzero_pages: int | None = None
    files: dict[str, str] = Field(default_factory=dict)
    # The node's series in Prometheus: their labels, and the host-time window (epoch s)
    # from their birth at zero to the scrape that read their final values.
    metrics_labels: dict[str, str] = Field(default_factory=dict)
    metrics_from: float | None = None
    metrics_to: float | None = None
