"""The Redis hashes of a campaign, a run and a node, as both planes read them.

A hash crosses a process boundary (any Redis writer, a worker of another version), so it
is read through these models: every field the planes act on is typed here, a hash that
does not match raises :class:`CorruptHash` naming the key and the wrong fields, and the
scheduler turns that into a verdict rather than acting on a guess. Writes go through
``orchestrator.store`` (the control plane) and ``workers.coordination.run_state``'s compare-and-sets
(the data plane), with ``model.state.encode_fields``: JSON for containers, "" for None.

Fields a model does not name are kept (``extra="allow"``): the times of each status
(``<status>_at``) and the bookkeeping of one plane the other never reads.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Annotated, Any, ClassVar, Final, Literal, Self

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StringConstraints,
    ValidationError,
    field_validator,
    model_validator,
)

from model.campaign import Variant, WorkloadSpec
from model.kernel import KernelSource
from model.protocol import BUILD_STAGE, PREPARE_STAGE, CampaignStatus, RunStatus, SetupStage, StageFailure
from model.result import Run, described
from model.runspec import NodeResult, PreparedKernel
from model.state import decode_fields


class CorruptHash(ValueError):
    """A hash in Redis that does not read as its model: written by something else than swaplab."""

    def __init__(self, key: str, problems: str) -> None:
        super().__init__(f"{key} in Redis does not read as swaplab wrote it: {problems}")
        self.key = key


class _Hash(BaseModel):
    """A hash as HGETALL returns it, decoded: "" is a field never set (encode_fields' None)."""

    model_config = ConfigDict(extra="allow", frozen=True)

    @model_validator(mode="before")
    @classmethod
    def _empty_is_missing(cls, data: Any) -> Any:
        return {k: v for k, v in data.items() if v != ""} if isinstance(data, dict) else data

    @classmethod
    def check_writable(cls, fields: Mapping[str, Any]) -> None:
        """Refuse a write of a field the model does not name (a time of a status, ``*_at``,
        excepted): a misspelt field would be written and never read."""
        unknown = sorted(name for name in fields if name not in cls.model_fields and not name.endswith("_at"))
        if unknown:  # not an assert: gone under -O, and this is the contract between the planes
            raise ValueError(f"{cls.__name__} has no field {', '.join(unknown)}")

    @classmethod
    def read(cls, key: str, raw: dict[Any, Any]) -> Self | None:
        """The hash at ``key`` from an HGETALL reply; None when it does not exist."""
        if not raw:
            return None
        try:
            return cls.model_validate(decode_fields(raw))
        except ValidationError as err:
            raise CorruptHash(key, described(err)) from None
        except ValueError as err:  # a JSON field that is not JSON
            raise CorruptHash(key, str(err)[:200]) from None


class CampaignHash(_Hash):
    """``swaplab:campaign:<cid>``: the campaign as submitted, its state and its record."""

    id: str
    name: str
    file: str
    lab: str
    status: CampaignStatus
    created_at: float
    campaign: dict[str, Any]  # the submitted campaign; model.campaign.campaign_from_json checks it
    runs: list[str]
    cancel_requested: bool = False
    finished_at: float | None = None
    verdict: str | None = None
    exit_code: int | None = None
    result_dir: str | None = None
    result: dict[str, Any] | None = None  # the finished campaign's record (model.result)
    last_pass_baseline: str | None = None  # JSON: the prefetched baseline record, or an error
    error: str = ""  # why it was abandoned without a record (its state in Redis was unreadable)
    bisection: str = ""  # the bisection that runs it as one of its steps


class RunHash(_Hash):
    """``swaplab:run:<cid>:<rid>``: one run, its status and attempt, its setup stages, its verdict.

    The scheduler writes all of it but the stage fields a stage's task owns
    (``SetupStage.task_fields``) and ``running`` (``workers.coordination.run_state.mark_running``).
    """

    run_id: str
    label: str = ""
    kernel: KernelSource
    workload: WorkloadSpec
    variant: Variant | None = None
    repeat: int
    status: RunStatus
    attempt: int = 0
    nodes: list[str] = []
    started_at: float | None = None
    aborted_attempt: int | None = None  # its node tasks stop (the scheduler gave up on it)
    retry_reason: str = ""
    skipped_reason: str = ""
    evaluation_claim: str = ""
    evaluation_claimed_at: float | None = None
    verdict: str | None = None
    result: dict[str, Any] | None = None  # the run's part of the record: reads as model.result.Run
    # The setup stages' fields (model.protocol.SetupStage names them).
    build_attempt: int = 0
    build_owner: str = ""
    build_beat: float | None = None
    built: dict[str, Any] | None = None
    built_at: float | None = None
    build_failure: Any = None  # read by ``stage_failure``: an unreadable one is the lab's fault
    prepare_attempt: int = 0
    prepare_owner: str = ""
    prepare_beat: float | None = None
    prepared: PreparedKernel | None = None
    prepared_at: float | None = None
    prepare_failure: Any = None

    @field_validator("result")
    @classmethod
    def _result_is_a_run(cls, entry: dict[str, Any] | None) -> dict[str, Any] | None:
        if entry is not None:
            Run.model_validate(entry)  # the record's schema; the dict itself is what the record keeps
        return entry

    def stage_attempt(self, stage: SetupStage) -> int:
        return int(getattr(self, stage.attempt))

    def stage_beat(self, stage: SetupStage) -> float | None:
        beat = getattr(self, stage.beat)
        return float(beat) if beat is not None else None

    def stage_owner(self, stage: SetupStage) -> str:
        return str(getattr(self, stage.owner))

    def stage_done(self, stage: SetupStage) -> bool:
        return getattr(self, stage.done) is not None

    def stage_failure(self, stage: SetupStage) -> StageFailure | None:
        """The stage's failure as its task wrote it; one that does not read as one is the lab's fault."""
        raw = getattr(self, stage.failure)
        if not raw:
            return None
        try:
            return StageFailure.model_validate(raw)
        except ValidationError:
            return StageFailure(cause="infra", reason=f"the {stage.what}'s failure record is unreadable")

    @property
    def stops_campaign(self) -> bool:
        """Whether its verdict stops the campaign (a critical criterion failed)."""
        return bool((self.result or {}).get("stops_campaign"))


class RunAttempt(_Hash):
    """What a data-plane task reads of its run's hash: the status and attempt it checks
    before it acts, the attempt's nodes, whether the scheduler gave the attempt up.

    Only these fields (``FIELDS``, read with HMGET): a lab worker never parses the
    campaign's kernel or workload specs out of the run, so it keeps working beside a
    control plane whose models grew a field.
    """

    FIELDS: ClassVar[tuple[str, ...]] = ("status", "attempt", "nodes", "aborted_attempt")

    status: RunStatus
    attempt: int = 0
    nodes: list[str] = []
    aborted_attempt: int | None = None


class NodeHash(_Hash):
    """``swaplab:node:<cid>:<rid>:<node>``: one node of a run's current attempt.

    The scheduler writes it when it starts the attempt (``queued``) and when it takes the
    node for lost; the node task writes the rest, only while it is its attempt's.
    """

    attempt: int
    status: str  # queued, starting, the node's phases, finishing, done, lost
    owner: str = ""
    started_at: float | None = None
    finished_at: float | None = None
    result: NodeResult | None = None

    @property
    def done(self) -> bool:
        return self.status == "done" and self.result is not None


# The stage fields the run hash types: a stage whose names it lacks would be read as extras.
STAGES: Final = (BUILD_STAGE, PREPARE_STAGE)


class BisectionStep(BaseModel):
    """One line of a bisection's log: a question, its answer and what its runs said."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    prefix: int = Field(ge=0)
    repeats: int = Field(ge=1)
    ends: bool
    step: Literal["good", "bad", "undecided", "skip", "base"]
    why: str
    campaign: str  # the child campaign that asked it
    lab_s: float | None = None  # the child campaign's wall time, its builds included
    runs_s: float | None = None  # its runs' time, one after the other
    reused: list[str] = []  # the stored campaigns whose runs of the same kernel and settings it took
    values: list[float] = []  # the figure of every passing run of the prefix so far
    verdicts: list[str] = []


class SeriesInfo(BaseModel):
    """What a bisection shows of each patch (1-based: patch k is prefix k's last)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    subjects: list[str]
    authors: list[str]
    stats: list[str]  # git's diff stat of each patch
    commits: list[str] | None = None  # a git range's: the commit of each prefix (0: the good one)

    @model_validator(mode="after")
    def _one_per_patch(self) -> SeriesInfo:
        if not self.subjects or not len(self.subjects) == len(self.authors) == len(self.stats):
            raise ValueError("subjects, authors and stats must name the same patches, at least one")
        return self


class BisectionHash(_Hash):
    """``swaplab:bisection:<bid>``: a bisection, what it asked and what its runs said.

    The control plane writes all of it (``orchestrator.bisector``); the CLI reads it. Its
    state is replayed by ``model.bisection.Bisection.from_json`` and its campaign checked
    by ``model.campaign.campaign_from_json`` before either is acted on.
    """

    id: str
    name: str
    status: Literal["running", "done", "cancelled", "failed"]
    created_at: float
    finished_at: float | None = None
    campaign: dict[str, Any]
    on: Literal["figure", "verdict"]
    figure: str
    series: SeriesInfo
    state: dict[str, Any]
    gathered: dict[str, Any]
    steps: list[BisectionStep] = []
    child: str = ""  # the child campaign running now
    asked: str = ""  # what it asks: "base", or JSON [prefix, repeats, ends]
    cancel: bool = False
    result: dict[str, Any] | None = None
    error: str = ""
    # Each prefix's build hash as the submitter's host computed it ([] when it could not):
    # a step takes the stored runs of that kernel under the same settings (``settings``).
    digests: list[Annotated[str, StringConstraints(pattern=r"^[0-9a-f]{64}$")]] = []
    settings: str = ""  # the bisection's own runs' settings (bisect_steps.settings_key), once known
    reused: list[int] = []  # the prefixes that already took stored runs (once each)

    @field_validator("cancel", mode="before")
    @classmethod
    def _flag(cls, value: Any) -> Any:
        return value not in ("", "0", 0, None, False)


class BisectionRecord(BaseModel):
    """A bisection as ``swaplab bisect --status --json`` shows it and the results database
    keeps it once it ended (``orchestrator.bisector.shown_of``)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    id: str = Field(min_length=1, max_length=200)
    name: str
    status: Literal["running", "done", "cancelled", "failed"]
    created_at: float
    finished_at: float | None = None
    on: Literal["figure", "verdict"]
    figure: str
    child: str = ""
    asked: str = ""
    error: str = ""
    steps: list[BisectionStep]
    series: SeriesInfo
    result: dict[str, Any] | None = None
    campaigns: list[str]  # each step's child campaign, in order
