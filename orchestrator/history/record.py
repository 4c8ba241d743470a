"""A campaign record (result.json) checked on arrival and turned into rows.

The record crosses a process boundary (Redis, a file on disk, possibly an older swaplab's),
so it is validated before anything is written: ``campaign_id`` and ``runs`` are required,
every other field is optional (an older record lacks the figures, kernel_info, settings and
redone of issue 12) and a missing or null one takes its default. Fields this module does not
know are ignored here and kept in the stored record.

Before validation the record is made storable: a non-finite float (NaN, ±inf: Python's json
writes them, JSON and PostgreSQL's json refuse them) becomes null, and NUL characters
(PostgreSQL's text refuses them) are dropped from strings. That cleaned record is the one
stored and returned by ``ResultsDb.campaign``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, ValidationError, model_validator

from orchestrator.history.errors import InvalidRecord
from orchestrator.history.models import CAMPAIGN_ID_MAX, CampaignRow, CriterionRow, FigureRow, NodeRow, RunRow

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


class Node(_Part):
    """One node's part of a run."""

    node: Name
    verdict: str | None = None
    criteria: list[Criterion] = []
    figures: dict[str, Figure] = {}
    kernel: dict[str, Any] = {}
    ram_mib: int | None = None


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


class Workload(_Part):
    """The workload a run ran."""

    name: str | None = None
    mib: int | None = None
    passes: int | None = None


class Settings(_Part):
    """What a run ran under: NFS, sysctls, node and swap sizes, workload."""

    nfs: Nfs = Field(default_factory=Nfs)
    sysctl: dict[str, str] = {}
    node_ram_mib: int | None = None
    swap_mib: int | None = None
    workload: Workload = Field(default_factory=Workload)


class Run(_Part):
    """One run of the campaign, as judged."""

    run_id: Name
    kernel: str = ""
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
    nodes: list[Node] = []

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


class Campaign(_Part):
    """A finished campaign's record (result.json)."""

    campaign_id: Annotated[str, StringConstraints(min_length=1, max_length=CAMPAIGN_ID_MAX)]
    campaign: str = ""
    file: str | None = None
    lab: str | None = None
    started_at: float | None = None
    finished_at: float | None = None
    verdict: str | None = None
    exit_code: int | None = None
    runs: list[Run] = Field(...)  # required: a record without runs is not a finished campaign
    skipped_runs: list[SkippedRun] = []

    @model_validator(mode="after")
    def _runs_unique(self) -> Campaign:
        ids = [run.run_id for run in self.runs] + [run.run_id for run in self.skipped_runs]
        if len(ids) != len(set(ids)):
            raise ValueError(f"a run id appears twice: {', '.join(ids)}")
        return self


def storable(value: Any) -> Any:
    """``value`` (a JSON document) with non-finite floats as None and NUL characters dropped."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, str):
        return value.replace("\x00", "")
    if isinstance(value, Mapping):
        return {storable(k): storable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [storable(v) for v in value]
    return value


def parse(record: Any) -> Campaign:
    """The validated record, or InvalidRecord naming every field that is wrong."""
    if not isinstance(record, Mapping):
        raise InvalidRecord(f"campaign record refused: expected a JSON object, got {type(record).__name__}")
    try:
        return Campaign.model_validate(dict(record))
    except ValidationError as exc:
        cid = record.get("campaign_id")
        where = f" {cid}" if isinstance(cid, str) and cid else ""
        problems = "; ".join(f"{'.'.join(str(p) for p in e['loc']) or 'record'}: {e['msg']}" for e in exc.errors())
        raise InvalidRecord(f"campaign record{where} refused: {problems}") from None


def campaign_row(campaign: Campaign, record: dict[str, Any], stored_at: float) -> CampaignRow:
    """The rows of one validated campaign (``record``: the document kept whole)."""
    runs = [run_row(i, run) for i, run in enumerate(campaign.runs)]
    runs += [skipped_row(len(runs) + i, run) for i, run in enumerate(campaign.skipped_runs)]
    return CampaignRow(
        id=campaign.campaign_id,
        name=campaign.campaign,
        file=campaign.file,
        lab=campaign.lab,
        started_at=campaign.started_at,
        finished_at=campaign.finished_at if campaign.finished_at is not None else stored_at,
        stored_at=stored_at,
        verdict=campaign.verdict,
        exit_code=campaign.exit_code,
        record=record,
        runs=runs,
    )


def run_row(position: int, run: Run) -> RunRow:
    """One run's row with its nodes; what an older record lacks is read from its nodes."""
    info, settings = run.kernel_info, run.settings
    first_kernel = run.nodes[0].kernel if run.nodes else {}
    passed = run.verdict == "pass"
    return RunRow(
        position=position,
        run_id=run.run_id,
        kernel=run.kernel,
        # Records before kernel_info: the release the node booted (kver, then uname -r).
        release=info.release or _text(first_kernel.get("kver") or first_kernel.get("uname_r")),
        kernel_version=info.version or _text(first_kernel.get("uname_v")),
        source=info.source or _text(first_kernel.get("source")),
        artifact=info.artifact,
        patches=info.patches,
        workload=settings.workload.name or run.workload,
        workload_mib=settings.workload.mib,
        workload_passes=settings.workload.passes,
        repeat=run.repeat,
        attempt=run.attempt,
        redone=[r.model_dump() for r in run.redone],
        reasons=run.reasons,
        verdict=run.verdict,
        exit_code=run.exit_code,
        started_at=run.started_at,
        finished_at=run.finished_at,
        nfs_version=settings.nfs.version,
        nfs_options=settings.nfs.options,
        nfs_backend=settings.nfs.backend,
        sysctls=settings.sysctl,
        node_ram_mib=settings.node_ram_mib or (run.nodes[0].ram_mib if run.nodes else None),
        swap_mib=settings.swap_mib,
        nodes=[node_row(node, passed) for node in run.nodes],
    )


def skipped_row(position: int, run: SkippedRun) -> RunRow:
    """A run that never started (an earlier critical failure stopped the campaign)."""
    return RunRow(
        position=position,
        run_id=run.run_id,
        kernel=run.kernel,
        patches=[],
        attempt=0,
        redone=[],
        reasons=[run.reason] if run.reason else [],
        verdict="skipped",
        sysctls={},
        nodes=[],
    )


def node_row(node: Node, run_passed: bool) -> NodeRow:
    """One node's row with its criteria and figures."""
    return NodeRow(
        node=node.node,
        verdict=node.verdict,
        criteria=[CriterionRow(**c.model_dump()) for c in node.criteria],
        figures=[FigureRow(name=name, run_passed=run_passed, **f.model_dump()) for name, f in node.figures.items()],
    )


def _text(value: Any) -> str | None:
    return str(value) if value not in (None, "") else None
