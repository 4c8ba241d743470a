"""The contract between the control plane and the data plane: task names, the protocol
version every message carries, and the states a campaign and a run go through.

Both planes import these names; neither writes a task name or a state as a literal. A
worker deployed apart from the control plane may speak another version: a message that
says so (or says nothing, from before versions) is refused as *version skew* — an
infra-error naming both versions — never judged as an invalid campaign.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from typing import Final, Literal

from pydantic import BaseModel, ConfigDict, field_validator

# Whose fault a failure is: the kernel under test's, the lab's, the submitter's; or the run
# was stopped (aborted by the scheduler, cancelled by a user).
FailureCause = Literal["kernel", "infra", "input", "aborted", "cancelled"]

REASON_MAX: Final = 4000  # characters of a stage's failure reason kept in the run's hash

# Bumped whenever a message's or a record's fields change meaning or a required field is added.
PROTOCOL_VERSION: Final = 1

# -- the data plane's tasks: the control plane sends them by name ----------------------------
BUILD_KERNEL: Final = "swaplab.build_kernel"
PREPARE_RUN: Final = "swaplab.prepare_run"
RUN_NODE: Final = "swaplab.run_node"
BENCH_BARRIER: Final = "swaplab.bench_barrier"  # bench/ only: the coordinated start alone

# -- the control plane's own tasks ------------------------------------------------------------
ADVANCE_CAMPAIGN: Final = "swaplab.advance_campaign"
EVALUATE_RUN: Final = "swaplab.evaluate_run"
RECORD_RESULTS: Final = "swaplab.record_results"
SCHEDULE_TICK: Final = "swaplab.schedule_tick"
ADVANCE_BISECTION: Final = "swaplab.advance_bisection"

# What the control plane sends to a lab's or the build queue: a data-plane worker that does
# not register one of these leaves runs waiting forever, so a test ties the two together.
SENT_TO_DATA_PLANE: Final = (BUILD_KERNEL, PREPARE_RUN, RUN_NODE)
CONTROL_TASKS: Final = (ADVANCE_CAMPAIGN, EVALUATE_RUN, RECORD_RESULTS, SCHEDULE_TICK, ADVANCE_BISECTION)


class CampaignStatus(StrEnum):
    QUEUED = "queued"
    RUNNING = "running"
    EVALUATING = "evaluating"
    DONE = "done"
    CANCELLED = "cancelled"


class RunStatus(StrEnum):
    QUEUED = "queued"
    BUILDING = "building"
    PREPARING = "preparing"
    PROVISIONING = "provisioning"
    RUNNING = "running"
    EVALUATING = "evaluating"
    DONE = "done"
    CANCELLED = "cancelled"
    SKIPPED = "skipped"  # not started because a critical criterion failed in an earlier run


# A campaign's final states are a run's too (done, cancelled): one set serves both.
TERMINAL: Final = frozenset({RunStatus.DONE, RunStatus.CANCELLED, RunStatus.SKIPPED})
CAMPAIGN_TERMINAL: Final = frozenset({CampaignStatus.DONE, CampaignStatus.CANCELLED})


@dataclass(frozen=True)
class SetupStage:
    """A once-per-run stage before any node is leased (the kernel build, the run's setup),
    done by a data-plane task that beats while it works.

    Its fields in the run's hash: the control plane writes ``<name>_attempt`` when it sends
    the task; the task writes only ``owner``, ``beat`` and its outcome (``result`` and
    ``done``, or ``failure``), and only while the run is still in ``status`` at that
    attempt (``workers.coordination.run_state``: a compare-and-set, never a read then a write).
    """

    name: str
    what: str
    status: RunStatus
    result: str
    done: str
    failure: str

    @property
    def attempt(self) -> str:
        return f"{self.name}_attempt"

    @property
    def owner(self) -> str:
        return f"{self.name}_owner"

    @property
    def beat(self) -> str:
        return f"{self.name}_beat"

    def task_fields(self) -> frozenset[str]:
        """The fields of the run's hash this stage's task may write."""
        return frozenset({self.owner, self.beat, self.result, self.done, self.failure})


BUILD_STAGE: Final = SetupStage("build", "kernel build", RunStatus.BUILDING, "built", "built_at", "build_failure")
PREPARE_STAGE: Final = SetupStage(
    "prepare", "run setup", RunStatus.PREPARING, "prepared", "prepared_at", "prepare_failure"
)


class StageFailure(BaseModel):
    """Why a setup stage failed, as its task writes it and the scheduler reads it."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    cause: FailureCause
    reason: str

    @field_validator("reason")
    @classmethod
    def _tail(cls, reason: str) -> str:
        # A build log's or a message's last lines say why; the hash keeps no more than that.
        return reason[-REASON_MAX:]


class UnknownStatus(ValueError):
    """A state no plane of this version knows: a bug, or a record from another version."""


def run_status(value: object) -> RunStatus:
    try:
        return RunStatus(str(value))
    except ValueError:
        raise UnknownStatus(f"unknown run status {str(value)[:40]!r}") from None


def campaign_status(value: object) -> CampaignStatus:
    try:
        return CampaignStatus(str(value))
    except ValueError:
        raise UnknownStatus(f"unknown campaign status {str(value)[:40]!r}") from None


def version_skew(message: object) -> str | None:
    """Why ``message`` is from another protocol version, or None when it speaks ours.

    Checked before a message is validated: an unknown field from a newer control plane is
    skew to report, not a campaign to call invalid.
    """
    if not isinstance(message, dict):
        return None  # not a message at all: validation says what is wrong with it
    theirs = message.get("protocol")
    if theirs == PROTOCOL_VERSION and type(theirs) is int:
        return None
    said = "no protocol version" if theirs is None else f"protocol version {str(theirs)[:20]}"
    return f"version skew: the message has {said}, this worker speaks version {PROTOCOL_VERSION}"
