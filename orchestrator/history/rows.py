"""A campaign record (result.json) checked on arrival and turned into rows.

The record crosses a process boundary (Redis, a file on disk, possibly an older swaplab's),
so it is validated before anything is written, with the record's own schema
(``model.result``): ``campaign_id`` and ``runs`` are required, every other field is
optional (an older record lacks the figures, kernel_info, settings and redone) and a
missing or null one takes its default. Fields the schema does not know are ignored there
and kept in the stored record.

Before validation the record is made storable: a non-finite float (NaN, ±inf: Python's json
writes them, JSON and PostgreSQL's json refuse them) becomes null, and NUL characters
(PostgreSQL's text refuses them) are dropped from strings. That cleaned record is the one
stored and returned by ``ResultsDb.campaign``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from pydantic import ValidationError

from model.hashes import BisectionRecord
from model.result import Campaign, Node, Run, SkippedRun, described
from orchestrator.history.errors import InvalidRecord
from orchestrator.history.models import BisectionRow, CampaignRow, CriterionRow, FigureRow, NodeRow, RunRow


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
        problems = described(exc)
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
        bisection=campaign.bisection,
        record=record,
        runs=runs,
    )


def bisection_row(shown: Mapping[str, Any], stored_at: float) -> BisectionRow:
    """The row of one finished bisection (``shown``: as ``--status --json`` shows it), or
    InvalidRecord naming every field that is wrong."""
    try:
        record = BisectionRecord.model_validate(dict(shown))
    except ValidationError as exc:
        raise InvalidRecord(f"bisection record refused: {described(exc)}") from None
    result = record.result or {}
    culprit = result.get("culprit")
    return BisectionRow(
        id=record.id,
        name=record.name,
        status=record.status,
        on=record.on,
        figure=record.figure,
        outcome=result.get("outcome"),
        culprit=culprit.get("position") if isinstance(culprit, dict) else None,
        created_at=record.created_at,
        finished_at=record.finished_at if record.finished_at is not None else stored_at,
        record=storable(record.model_dump()),
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
        timing=settings.timing,
        faults=list(settings.faults),
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
