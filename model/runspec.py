"""The JSON contract between the planes: what a run's setup and each node session are
given, and what a node session hands back.

- ``RunSetupSpec`` -> the run-scope setup (the lab's NFS server, the kernel and its node
  image), done once per run before any node is leased; it answers ``PreparedKernel``.
- ``NodeRunSpec`` -> one node session; it answers ``NodeResult``.

All are plain pydantic models so a Celery task carries them as JSON, and a worker
validates them again when it reads them (everything read from Redis is input).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator

from model.campaign import STALLED_AFTER_S, NfsSpec, check_sysctl
from model.console import EVENTS_PER_KIND, EventKind
from model.faults import FAULTS_MAX, SERVER_TARGET, FaultRecord, FaultSpec
from model.figures import FIGURE_NAMES, SERIES_KEYS, SERIES_MAX_POINTS, Timing
from model.kernel import KernelSource
from model.limits import HOG_MIB_MAX, HOG_MIB_MIN, HOG_PASSES_MAX, HOG_PASSES_MIN, HOG_SEED_MAX, HOG_SEED_MIN
from model.protocol import PROTOCOL_VERSION
from model.protocol import FailureCause as FailureCause  # re-exported: node results use it

# Whose fault it is that a session stopped early (docs/ARCHITECTURE.md, "Verdicts and exit codes"):
# kernel -> fail; infra -> infra-error; input -> invalid (a mistake validation should have
# caught: never a kernel verdict); aborted/cancelled -> the run stopped for another reason.


class WorkloadRef(BaseModel):
    """The workload as the node runs it."""

    model_config = ConfigDict(frozen=True, extra="forbid", strict=True)

    name: str = Field(pattern=r"^[a-z][a-z0-9_-]{0,30}$")
    # MiB to touch; None: ``ram_ratio`` x the node's RAM, known once the node is reached
    # (a node swaplab does not boot has the RAM it has).
    mib: int | None = Field(default=None, ge=HOG_MIB_MIN, le=HOG_MIB_MAX)
    ram_ratio: float | None = Field(default=None, gt=0, le=64)
    passes: int = Field(ge=HOG_PASSES_MIN, le=HOG_PASSES_MAX)
    timeout_s: int = Field(gt=0, le=7 * 24 * 3600)
    seed: int = Field(ge=HOG_SEED_MIN, le=HOG_SEED_MAX)
    allow_oom: bool = False
    stalled_after_s: int = Field(default=STALLED_AFTER_S, ge=10, le=7 * 24 * 3600)

    def touch_mib(self, ram_mib: int) -> int:
        """MiB this workload touches on a node with ``ram_mib`` of RAM."""
        if self.mib is not None:
            return self.mib
        assert self.ram_ratio is not None
        return round(self.ram_ratio * ram_mib)


class PreparedKernel(BaseModel):
    """The kernel a run's setup resolved and the node image it built (content hash)."""

    model_config = ConfigDict(frozen=True, extra="forbid", strict=True)

    package: str = Field(max_length=200)
    version: str = Field(max_length=200)
    kver: str = Field(pattern=r"^[0-9][0-9A-Za-z.+_~-]{0,99}$")
    source: str = Field(max_length=500)
    image_hash: str = Field(pattern=r"^[0-9a-f]{64}$")
    # For kernels swaplab built: the artifact's hash and the `uname -v` its build pinned;
    # a node that reports anything else booted something else.
    artifact: str | None = Field(default=None, pattern=r"^[0-9a-f]{64}$")
    uts_version: str | None = Field(default=None, max_length=200)


CAMPAIGN_ID = r"^[a-z][a-z0-9_-]{0,40}-[0-9]{8}-[0-9]{6}-[0-9a-f]{4}$"
RUN_ID = r"^r[0-9]{3,4}$"
NAME = r"^[a-z][a-z0-9-]{0,30}$"
MAX_ATTEMPTS = 10


def is_campaign_id(text: object) -> bool:
    """True when ``text`` is a campaign id as swaplab makes them (safe as one path component)."""
    return isinstance(text, str) and re.fullmatch(CAMPAIGN_ID, text) is not None


class _Message(BaseModel):
    # A message is input: exactly these fields, strictly typed (what validate lets through).
    model_config = ConfigDict(frozen=True, extra="forbid", strict=True)

    # The version the sender speaks (model.protocol): checked before the rest is validated.
    protocol: int = Field(default=PROTOCOL_VERSION, ge=PROTOCOL_VERSION, le=PROTOCOL_VERSION)


class BuildMessage(_Message):
    """A run's kernel build, for a worker on the ``build`` queue: which lab (whose inventory
    says where local kernel files may come from) and the ``build`` kernel."""

    campaign: str = Field(pattern=CAMPAIGN_ID)
    run_id: str = Field(pattern=RUN_ID)
    lab: str = Field(pattern=NAME)
    kernel: KernelSource


class RunSetupSpec(_Message):
    """What the run-scope setup needs: which lab and which kernel. The lab's NFS server and
    whether it boots kernels come from the worker's own inventory of that lab."""

    campaign: str = Field(pattern=CAMPAIGN_ID)
    run_id: str = Field(pattern=RUN_ID)
    lab: str = Field(pattern=NAME)
    kernel: KernelSource
    # The artifact the run's build made, for a `build` kernel.
    artifact: str | None = Field(default=None, pattern=r"^[0-9a-f]{64}$")


class NodeRunSpec(_Message):
    """Everything one node needs for one run: only what a campaign may say.

    Which of the lab's nodes (by name), kernel, sizes, sysctls, NFS version and mount
    options, swap size, workload. The node's driver, address, executables and the lab's
    NFS server come from the worker's own inventory; the result directory from the
    worker's own results root.
    """

    campaign: str = Field(pattern=CAMPAIGN_ID)
    run_id: str = Field(pattern=RUN_ID)
    attempt: int = Field(ge=1, le=MAX_ATTEMPTS)
    lab: str = Field(pattern=NAME)
    node: str = Field(pattern=NAME)
    # The VM size for nodes swaplab boots; None for nodes that run already (their own RAM).
    ram_mib: int | None = Field(ge=16, le=1 << 20)
    cpus: int | None = Field(ge=1, le=64)
    sysctl: dict[str, int] = Field(default_factory=dict)
    kernel: KernelSource
    # Set by the run's setup for nodes swaplab boots: the image every node of the run boots.
    prepared: PreparedKernel | None = None
    nfs: NfsSpec
    swap_mib: int = Field(gt=0, le=1 << 20)
    workload: WorkloadRef
    # MiB the workload must push past RAM; None until the node's RAM is known.
    planned_overcommit_mib: int | None = Field(ge=1, le=HOG_MIB_MAX)
    boot_timeout_s: int = Field(gt=0, le=3600)
    # The clock the node runs on (booted nodes only: the lab validated it can).
    timing: Timing = "host"
    # The campaign's faults, and this node's place in the run (which of them it injects).
    faults: list[FaultSpec] = Field(default_factory=list, max_length=FAULTS_MAX)
    run_index: int = Field(default=0, ge=0, le=999)

    _sysctl = field_validator("sysctl")(check_sysctl)

    def own_faults(self) -> list[tuple[int, FaultSpec]]:
        """The faults this node session injects, with their place in the campaign's list."""
        return [(index, fault) for index, fault in enumerate(self.faults) if fault.injected_by(self.run_index)]

    def observed_faults(self) -> list[tuple[int, FaultSpec]]:
        """The server's faults another node session injects: they disturb this node too."""
        return [
            (index, fault)
            for index, fault in enumerate(self.faults)
            if fault.target == SERVER_TARGET and not fault.injected_by(self.run_index)
        ]

    def result_dir(self, results_root: Path) -> Path:
        """Where this node writes its evidence, below the worker's own results root."""
        run = results_root / self.campaign
        if self.attempt > 1:  # a redone run writes beside the lost attempt, which stays as it was
            run = run / f"attempt{self.attempt}"
        return run / self.run_id / self.node


class Failure(BaseModel):
    """Why a node session stopped early, classified by cause."""

    cause: FailureCause
    phase: str
    reason: str
    # The node cannot be used again without a person (no power control and it stopped
    # answering): it leaves the pool until `swaplab lab back` says it is back.
    takes_node_out: bool = False


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
    # When the worker read the workload's "started" and "done" lines (host clock). On guest
    # time the node's clock runs at its own pace: these, not its stamps, place it in host time.
    started_seen_host_ns: int | None = None
    done_seen_host_ns: int | None = None
    last_line: str = ""

    def host_window_s(self, guest_clock: bool) -> tuple[float, float] | None:
        """When the workload ran, in host epoch seconds (None: it never finished).

        Host time: its start on the node's clock translated by the measured offset, plus its
        elapsed time. Guest time: when the worker saw it start and end (the node's seconds
        are not the host's).
        """
        if guest_clock:
            if self.started_seen_host_ns is None or self.done_seen_host_ns is None:
                return None
            return self.started_seen_host_ns / 1e9, self.done_seen_host_ns / 1e9
        if self.started_host_ns is None or self.elapsed_s is None or self.elapsed_s <= 0:
            return None
        return self.started_host_ns / 1e9, self.started_host_ns / 1e9 + self.elapsed_s


class BootRecord(BaseModel):
    """How a node swaplab booted got its kernel: QEMU's -kernel, or the network (PXE) from
    the lab's boot server, with the MAC that asked, the served kernel's hash and what was
    done through the machine's BMC."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    path: str = Field(default="", max_length=20)
    mac: str = Field(default="", max_length=17)
    kernel_sha256: str = Field(default="", max_length=64)
    served_from: str = Field(default="", max_length=200)
    bmc: str = Field(default="", max_length=100)
    bmc_actions: list[str] = Field(default_factory=list, max_length=20)


class NfsServerInfo(BaseModel):
    """Which NFS server served a node: backend, address, the server's kernel, the export and
    its options (sync or async, who may mount it) as the server lists them."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    backend: str = Field(default="", max_length=40)
    address: str = Field(default="", max_length=100)
    kernel: str = Field(default="", max_length=200)
    export: str = Field(default="", max_length=300)
    export_options: str = Field(default="", max_length=500)


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
    # The first EVENTS_PER_KIND console events of each kind, every kind's count, how many not kept.
    console_events: list[dict[str, Any]] = Field(default_factory=list, max_length=EVENTS_PER_KIND * len(EventKind))
    console_event_counts: dict[str, int] = Field(default_factory=dict)
    console_events_dropped: int = 0
    console_tail: list[str] = Field(default_factory=list)
    swap_file_nonzero_pages: int | None = None
    # How the node's NFS traffic reached the server (relay, addresses): figures depend on it.
    data_path: str = Field(default="", max_length=500)
    nfs_server: NfsServerInfo = Field(default_factory=NfsServerInfo)
    boot: BootRecord = Field(default_factory=BootRecord)
    # Where console.log came from: the serial port swaplab captured, a file or command the
    # lab gives, or `dmesg -w` over SSH (no output from before the session started).
    console_source: str = ""
    # RAM the node had and what the workload had to push past it (known at run time for
    # nodes swaplab does not boot).
    ram_mib: int | None = None
    planned_overcommit_mib: int | None = None
    # Whether the node was left as it was found (nodes that outlive the run), and why not.
    left_clean: bool | None = None
    cleanup_problems: list[str] = Field(default_factory=list)
    files: dict[str, str] = Field(default_factory=dict)
    # The node's series in Prometheus: their labels, and the host-time window (epoch s)
    # from their birth at zero to the scrape that read their final values.
    metrics_labels: dict[str, str] = Field(default_factory=dict)
    metrics_from: float | None = None
    metrics_to: float | None = None
    # Performance figures over the workload window, from the node's own samples
    # (model.figures), and the per-tick series the reports plot.
    figures: dict[str, float | None] = Field(default_factory=dict)
    figures_from: float | None = None  # the workload window the rates cover (host epoch s)
    figures_to: float | None = None
    series: dict[str, list[float]] = Field(default_factory=dict)
    # The faults this node session injected (model.faults), as they happened.
    faults: list[FaultRecord] = Field(default_factory=list, max_length=FAULTS_MAX)

    @field_validator("figures")
    @classmethod
    def _known_figures(cls, value: dict[str, float | None]) -> dict[str, float | None]:
        unknown = sorted(set(value) - set(FIGURE_NAMES))
        if unknown:
            raise ValueError(f"unknown figure(s): {', '.join(unknown)}")
        return value

    @field_validator("series")
    @classmethod
    def _bounded_series(cls, value: dict[str, list[float]]) -> dict[str, list[float]]:
        unknown = sorted(set(value) - set(SERIES_KEYS))
        if unknown:
            raise ValueError(f"unknown series: {', '.join(unknown)}")
        if any(len(points) > SERIES_MAX_POINTS for points in value.values()):
            raise ValueError(f"a series has more than {SERIES_MAX_POINTS} points")
        return value
