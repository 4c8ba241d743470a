"""The schema of a finished campaign's record, result.json: campaign, run and node entries.

The scheduler checks the record it assembles against these models, the results database
validates what it stores, the webhook reads its payload, the reports render and the
comparisons read their runs through them; records written by an older swaplab still load —
``campaign_id`` and ``runs`` are required, every other field is optional and a missing or
null one takes its default. Fields a model does not know are ignored by it (and kept in
the stored document), so a newer record loads too.

``RESULT_SCHEMA_VERSION`` is written into every record (``schema_version``); work that
changes what a field means, or adds one writers did not write before, bumps it, and a
record without one is version 0. Reading a field swaplab already wrote is no change of the
record: the reports' fields (a node's ``series``, ``reasons``, ``phases_s`` and workload
outcome, a run's ``window``, the campaign's ``reproduce``, ``wall_s`` and ``result_dir``, a
comparison's ``figures``, ``method`` and kernels) joined the schema at version 1, optional
and with the shape they always had.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Annotated, Any, Final

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, ValidationError, model_validator

from model.display import printable

RESULT_SCHEMA_VERSION: Final = 1
CAMPAIGN_ID_MAX: Final = 200  # the results database's column holds this many characters

Name = Annotated[str, StringConstraints(min_length=1)]


class _Part(BaseModel):
    """A part of a record: unknown keys ignored, a null field taken as missing."""

    model_config = ConfigDict(extra="ignore", coerce_numbers_to_str=True)

    @model_validator(mode="before")
    @classmethod
    def _null_is_missing(cls, data: Any) -> Any:
        # An older writer puts null where a newer one puts [] or {}: both mean "nothing".
        return {k: v for k, v in data.items() if v is not None} if isinstance(data, dict) else data


class Figure(_Part):
    """One performance figure of a node: value, unit, direction, the Prometheus cross-check."""

    value: float | None = None
    unit: str | None = None
    better: str | None = None
    prometheus: float | None = None
    agrees: bool | None = None


class Criterion(_Part):
    """One criterion judged on a node."""

    name: Name
    value: float | None = None
    op: str | None = None
    threshold: float | None = None
    outcome: str | None = None
    severity: str | None = None
    builtin: bool = False
    query: str | None = None
    detail: str | None = None


class NodeWorkload(_Part):
    """What the workload on a node reported (the reports read how long it ran)."""

    elapsed_s: float | None = None


class NfsServer(_Part):
    """The NFS server that served a node (records before it was kept say nothing)."""

    backend: str | None = None
    address: str | None = None
    kernel: str | None = None
    export: str | None = None
    export_options: str | None = None


class Boot(_Part):
    """How a node booted (records before it was kept say nothing)."""

    path: str | None = None
    mac: str | None = None
    kernel_sha256: str | None = None
    served_from: str | None = None
    bmc: str | None = None
    bmc_actions: list[str] = []


class Fault(_Part):
    """A fault a node's session injected, as it happened (model.faults.FaultRecord)."""

    index: int | None = None
    kind: str | None = None
    target: str | None = None
    node: str | None = None
    measured_on: str = ""
    planned: str | None = None
    started_at: float | None = None
    ended_at: float | None = None
    swap_out_mibps_before: float | None = None
    recovery_s: float | None = None
    recovery_note: str = ""
    missed: str = ""


class Node(_Part):
    """One node's part of a run."""

    node: Name
    verdict: str | None = None
    reasons: list[str] = []
    criteria: list[Criterion] = []
    figures: dict[str, Figure] = {}
    kernel: dict[str, Any] = {}
    ram_mib: int | None = None
    phases_s: dict[str, float | None] = {}
    workload: NodeWorkload = Field(default_factory=NodeWorkload)
    data_path: str = ""
    nfs_server: NfsServer = Field(default_factory=NfsServer)
    boot: Boot = Field(default_factory=Boot)
    faults: list[Fault] = []
    # The per-tick samples the reports plot (``t`` is the time axis); a null is a gap.
    series: dict[str, list[float | None]] = {}


class Redone(_Part):
    """An earlier attempt of a run and why it was redone."""

    attempt: int | None = None
    reason: str = ""


class KernelInfo(_Part):
    """The kernel a run booted: release, version, where it came from, its patches."""

    release: str | None = None
    version: str | None = None
    source: str | None = None
    artifact: str | None = None
    patches: list[str] = []


class Nfs(_Part):
    """The NFS mount a run swapped over."""

    version: str | None = None
    options: str | None = None
    backend: str | None = None
    mount_options: list[str] = []  # the campaign's own shape of the options


class Workload(_Part):
    """The workload a run ran."""

    name: str | None = None
    mib: int | None = None
    ram_ratio: float | None = None
    passes: int | None = None
    timeout_s: int | None = None
    allow_oom: bool | None = None


class Settings(_Part):
    """What a run ran under: NFS, sysctls, node and swap sizes, workload."""

    nfs: Nfs = Field(default_factory=Nfs)
    sysctl: dict[str, str] = {}
    node_ram_mib: int | None = None
    swap_mib: int | None = None
    workload: Workload = Field(default_factory=Workload)
    # The nodes' clock (model.figures.timing_label); records from before it was kept ran on host time.
    timing: str = Field(default="host", max_length=40)
    # The faults the run injected, as the campaign planned them: runs with faults are
    # compared only with runs with the same faults.
    faults: list[str] = []


class Window(_Part):
    """The window a run was judged over in Prometheus (epoch seconds)."""

    start: float | None = None
    end: float | None = None
    seconds: float | None = None


class Run(_Part):
    """One run of the campaign, as judged."""

    run_id: Name
    kernel: str = ""
    kernel_label: str | None = None
    variant: str | None = None
    workload: str | None = None
    repeat: int | None = None
    attempt: int = 1
    verdict: str | None = None
    exit_code: int | None = None
    started_at: float | None = None
    finished_at: float | None = None
    reasons: list[str] = []
    redone: list[Redone] = []
    kernel_info: KernelInfo = Field(default_factory=KernelInfo)
    settings: Settings = Field(default_factory=Settings)
    window: Window = Field(default_factory=Window)
    nodes: list[Node] = []

    def release(self) -> str:
        """The kernel release the run booted: its kernel_info, or what an older record's
        first node says of its kernel; empty when no node booted."""
        if self.kernel_info.release:
            return self.kernel_info.release
        booted = next((node.kernel for node in self.nodes if node.kernel), {})
        return str(booted.get("uname_r") or booted.get("kver") or "")

    @model_validator(mode="after")
    def _nodes_unique(self) -> Run:
        names = [node.node for node in self.nodes]
        if len(names) != len(set(names)):
            raise ValueError(f"run {self.run_id} names a node twice: {', '.join(names)}")
        return self


class SkippedRun(_Part):
    """A run that never started."""

    run_id: Name
    kernel: str = ""
    reason: str = ""


class ComparedFigure(_Part):
    """One figure of a comparison: baseline (A) against candidate (B), its outcome."""

    figure: Name
    unit: str | None = None
    better: str | None = None
    n_a: int | None = None
    n_b: int | None = None
    median_a: float | None = None
    median_b: float | None = None
    scale: str | None = None  # "ratio", or "difference" when a side has a 0 (A's median 0 in older records)
    ratio: float | None = None
    difference: float | None = None
    change_pct: float | None = None
    confidence: float | None = None
    ci_low: float | None = None
    ci_high: float | None = None  # null: the interval's upper end was infinite
    p_value: float | None = None
    p_holm: float | None = None
    detectable: float | None = None  # the smallest change the runs would see 4 times in 5 (% for ratios)
    unadjusted: str | None = None  # a secondary figure's outcome before Holm's adjustment undid it
    drift: float | None = None  # the interval's allowance for drift between sides run apart
    tolerance: float | None = None
    abs_tolerance: float | None = None
    min_repeats: int | None = None
    outcome: str | None = None
    summary: str | None = None


class ComparisonMethod(_Part):
    """How a comparison's figures were compared (the same for every comparison of a campaign)."""

    statistic: str | None = None
    interval: str | None = None
    resamples: int | None = None
    confidence: float | None = None
    drift: float | None = None
    seed: int | None = None
    rank_test: str | None = None


class Comparison(_Part):
    """One comparison of a comparison campaign: a candidate side against the baseline."""

    baseline: str | None = None
    candidate: str | None = None
    axis: str | None = None
    workload: str | None = None
    # The other axis's value of the cell: the kernel of a variant comparison, the variant
    # of a kernel comparison.
    kernel: str | None = None
    variant: str | None = None
    primary: str | None = None
    verdict: str | None = None
    regressed: bool | None = None
    rule: str | None = None
    method: ComparisonMethod = Field(default_factory=ComparisonMethod)
    figures: list[ComparedFigure] = []
    # An instance comparison's kernels: the releases each side's passing runs booted.
    baseline_kernels: list[str] = []
    candidate_kernels: list[str] = []
    # Why a side has nothing to be compared with (an instance comparison's unmatched cell).
    note: str | None = None


class Reproduce(_Part):
    """The campaign file and the command that runs the campaign again."""

    file: str | None = None
    command: str | None = None


class Campaign(_Part):
    """A finished campaign's record (result.json)."""

    # 0: a record from before the schema had a version (it loads: every field has a default).
    schema_version: int = 0
    campaign_id: Annotated[str, StringConstraints(min_length=1, max_length=CAMPAIGN_ID_MAX)]
    campaign: str = ""
    file: str | None = None
    reproduce: Reproduce = Field(default_factory=Reproduce)
    lab: str | None = None
    started_at: float | None = None
    finished_at: float | None = None
    wall_s: float | None = None
    verdict: str | None = None
    exit_code: int | None = None
    result_dir: str | None = None
    runs: list[Run] = Field(...)  # required: a record without runs is not a finished campaign
    skipped_runs: list[SkippedRun] = []
    comparisons: list[Comparison] = []
    reasons: list[str] = []  # why the campaign has its verdict beyond its runs' (a regression)
    # The bisection (``swaplab bisect``) that ran this campaign as one of its steps.
    bisection: Annotated[str, StringConstraints(min_length=1, max_length=CAMPAIGN_ID_MAX)] | None = None

    @model_validator(mode="after")
    def _runs_unique(self) -> Campaign:
        ids = [run.run_id for run in self.runs] + [run.run_id for run in self.skipped_runs]
        if len(ids) != len(set(ids)):
            raise ValueError(f"a run id appears twice: {', '.join(ids)}")
        return self


class RecordError(ValueError):
    """A record that does not match the schema; its message names every wrong field."""


def campaign_of(record: Any) -> Campaign:
    """``record`` read through the schema (a Campaign is taken as it is). Raises
    RecordError, in one printable line, naming every field that is wrong."""
    if isinstance(record, Campaign):
        return record
    if not isinstance(record, Mapping):
        raise RecordError(f"campaign record refused: expected a JSON object, got {type(record).__name__}")
    try:
        return Campaign.model_validate(dict(record))
    except ValidationError as err:
        cid = printable(record.get("campaign_id")).strip()[:100]
        where = f" {cid}" if cid else ""
        # A field's path may hold a key of the record (a figure's name): shown, never obeyed.
        problems = described(err)
        raise RecordError(
            printable(f"campaign record{where} does not match result.json's schema: {problems}")
        ) from None


def schema_problems(record: Any) -> str | None:
    """What in ``record`` does not match the schema (every field named), or None."""
    try:
        Campaign.model_validate(record)
    except ValidationError as err:
        return described(err)
    return None


def described(err: ValidationError) -> str:
    """A record's validation error in one line, every wrong field named by its path."""
    return "; ".join(f"{'.'.join(str(p) for p in e['loc']) or 'record'}: {e['msg']}" for e in err.errors())
