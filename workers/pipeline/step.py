"""Steps and the pipeline that runs them (LAVA's Action pipeline, without its long run methods).

A step has a ``name``, the ``phase`` users see it under, a ``scope`` (lab, run or node), a
timeout, ``run(ctx, deadline)`` and ``cleanup(ctx)``. The pipeline runs steps in order,
stops at the first failure and calls ``cleanup`` of every step that started, in reverse
order, whatever happened.

Steps say what they need from the context and what they provide to it (``needs``,
``provides``: names such as "shell" or "nfs"), and a pipeline checks the order when it
is assembled: a step placed before what it needs is a ``PipelineOrderError`` naming both,
raised by whoever assembles it, never an assertion failing mid-run and blamed on the lab.

The pipeline enforces every step's timeout (a step is not trusted to keep it): ``run``
goes on in a thread of its own, and a step still running ``STEP_GRACE_S`` past its
timeout is abandoned — a Python thread cannot be killed, so the pipeline stops waiting,
fails with ``StepTimedOut`` naming the step, and the cleanups (which power the guest off
and end the step's processes) run. Each cleanup has its own budget
(``cleanup_timeout_s``); one that outlives it is a cleanup problem and the others still
run. ``Pipeline.budget_s`` is the most a session may take: past it, whoever keeps its
node leased stops renewing, and the scheduler's lost-worker path takes over.

A step says whose fault its failures are by the exception it raises: ``KernelFault``
(the kernel under test: fail), ``LabFault`` (the lab's own parts: infra-error),
``InputFault`` (a mistake in the campaign that validation could not see: invalid), and
``Stopped`` (cancelled, or the run aborted before the start). Anything else a step lets
escape is the step's ``unexpected`` cause, which is the lab's unless a step says more.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence
from enum import StrEnum
from typing import ClassVar, Generic, TypeVar

from model.runspec import FailureCause

# How long past its timeout a step may take to notice it before it is abandoned.
STEP_GRACE_S = 60.0
CLEANUP_TIMEOUT_S = 120.0


class Scope(StrEnum):
    """What a step sets up, and so how often it runs and who shares it."""

    LAB = "lab"  # long-lived servers of a lab (NFS, later PXE): checked once per run, never torn down by one
    RUN = "run"  # what a run's nodes share (kernel, node image): once per run, before nodes are leased
    NODE = "node"  # one node for one run: boot or attach, mount, workload


class StepFailure(Exception):
    """A step could not do its job; ``cause`` says whose fault that is."""

    cause: ClassVar[FailureCause] = "infra"

    def __init__(self, reason: str, *, takes_node_out: bool = False) -> None:
        super().__init__(reason)
        self.reason = reason
        self.takes_node_out = takes_node_out


class KernelFault(StepFailure):
    """The evidence points at the kernel under test."""

    cause = "kernel"


class LabFault(StepFailure):
    """The lab's own parts failed (NFS server, QEMU, image, SSH keys, network)."""

    cause = "infra"


class InputFault(StepFailure):
    """The campaign asked for something this node cannot do; validation could not know."""

    cause = "input"


class StepTimedOut(LabFault):
    """A step ran past its timeout and the pipeline abandoned it."""


class Cancelled(StepFailure):
    """Someone cancelled the run (or the worker lost the node's lease)."""

    cause = "cancelled"


class Aborted(StepFailure):
    """Another node of the run failed before the start."""

    cause = "aborted"


Ctx = TypeVar("Ctx")


class Step(Generic[Ctx]):
    """One step of a pipeline over a context ``Ctx``."""

    name: ClassVar[str] = "step"
    phase: ClassVar[str] = "step"
    scope: ClassVar[Scope] = Scope.NODE
    # Whose fault an unexpected exception in this step is.
    unexpected: ClassVar[type[StepFailure]] = LabFault
    # What the step uses of the context, and what it puts there for later steps.
    needs: ClassVar[frozenset[str]] = frozenset()
    provides: ClassVar[frozenset[str]] = frozenset()

    def timeout_s(self, ctx: Ctx) -> float:
        """How long ``run`` may take."""
        return 60.0

    def describe(self, ctx: Ctx) -> str:
        """A detail for the progress line when the step starts its phase."""
        return ""

    def cleanup_timeout_s(self, ctx: Ctx) -> float:
        """How long ``cleanup`` may take before the pipeline goes on without it."""
        return CLEANUP_TIMEOUT_S

    def run(self, ctx: Ctx, deadline: float) -> None:
        """Do the step's work by ``deadline`` (monotonic seconds); raise a StepFailure if not."""
        raise NotImplementedError

    def cleanup(self, ctx: Ctx) -> None:
        """Undo what ``run`` did, as far as it got (called even when ``run`` failed)."""


class PipelineOrderError(ValueError):
    """A pipeline was assembled with a step before what it needs."""


class PipelineHooks(Generic[Ctx]):
    """What the pipeline tells its owner: phases, stop checks, cleanup problems."""

    def check_stop(self) -> None:
        """Raise Cancelled or Aborted when the run must stop before the next step."""

    def enter(self, step: Step[Ctx]) -> None:
        """``step`` is about to run."""

    def left(self, step: Step[Ctx], seconds: float) -> None:
        """``step`` returned or raised after ``seconds``."""

    def cleanup_failed(self, step: Step[Ctx], error: Exception) -> None:
        """``step.cleanup`` raised ``error`` (the other cleanups still run)."""


class Pipeline(Generic[Ctx]):
    """Steps run in order; on any outcome, the cleanups of started steps in reverse order."""

    def __init__(self, steps: Sequence[Step[Ctx]]) -> None:
        names = [step.name for step in steps]
        if len(set(names)) != len(names):
            raise ValueError(f"step names repeat: {names}")
        _check_order(steps)
        self.steps = list(steps)

    @property
    def names(self) -> list[str]:
        return [step.name for step in self.steps]

    def budget_s(self, ctx: Ctx) -> float:
        """The most a run of this pipeline may take: every step's timeout and grace, every cleanup's budget."""
        return sum(step.timeout_s(ctx) + STEP_GRACE_S + step.cleanup_timeout_s(ctx) for step in self.steps)

    def run(self, ctx: Ctx, hooks: PipelineHooks[Ctx]) -> None:
        """Run every step; the first StepFailure (typed) propagates after the cleanups."""
        started: list[Step[Ctx]] = []
        try:
            for step in self.steps:
                hooks.check_stop()
                started.append(step)
                self._run_step(step, ctx, hooks)
        finally:
            for step in reversed(started):
                _cleanup(step, ctx, hooks)

    @staticmethod
    def _run_step(step: Step[Ctx], ctx: Ctx, hooks: PipelineHooks[Ctx]) -> None:
        hooks.enter(step)
        began = time.monotonic()
        timeout = step.timeout_s(ctx)
        try:
            finished, error = _bounded(
                f"step-{step.name}", lambda: step.run(ctx, began + timeout), timeout + STEP_GRACE_S
            )
            if not finished:
                raise StepTimedOut(
                    f"step {step.name} did not end within its {timeout:.0f} s (and {STEP_GRACE_S:.0f} s of grace): abandoned"
                )
            if isinstance(error, StepFailure):
                raise error
            if error is not None:  # a bug or an unforeseen fault: typed, never a hang or a pass
                raise step.unexpected(f"{step.name}: {type(error).__name__}: {error}") from error
        finally:
            hooks.left(step, time.monotonic() - began)


def _check_order(steps: Sequence[Step[Ctx]]) -> None:
    """Every step's needs are provided by a step before it."""
    provided: dict[str, str] = {}
    for step in steps:
        missing = sorted(step.needs - provided.keys())
        if missing:
            later = {what: other.name for other in steps for what in other.provides if what in missing}
            where = "; ".join(
                f"{what} ({f'provided by {later[what]}, later' if what in later else 'provided by no step'})"
                for what in missing
            )
            raise PipelineOrderError(f"step {step.name} needs {where}: order {[s.name for s in steps]}")
        provided.update(dict.fromkeys(step.provides, step.name))


def _cleanup(step: Step[Ctx], ctx: Ctx, hooks: PipelineHooks[Ctx]) -> None:
    budget = step.cleanup_timeout_s(ctx)
    finished, error = _bounded(f"cleanup-{step.name}", lambda: step.cleanup(ctx), budget)
    if not finished:  # one stuck cleanup must not keep the others (power off!) from running
        hooks.cleanup_failed(step, TimeoutError(f"did not end within its {budget:.0f} s: abandoned"))
    elif error is not None:  # one failed cleanup must not skip the others
        hooks.cleanup_failed(step, error)


def _bounded(name: str, work: Callable[[], None], seconds: float) -> tuple[bool, Exception | None]:
    """Run ``work`` in a daemon thread for at most ``seconds``: (finished, what it raised).

    Unfinished work is left running (a thread cannot be killed); the caller goes on."""
    raised: list[Exception] = []

    def body() -> None:
        try:
            work()
        except Exception as err:  # handed to the pipeline's thread, which decides
            raised.append(err)
        except BaseException as err:  # SystemExit and the like: never read as "finished fine"
            raised.append(RuntimeError(f"{type(err).__name__}: {err}"))

    thread = threading.Thread(target=body, name=f"swaplab-{name}", daemon=True)
    thread.start()
    thread.join(seconds)
    if thread.is_alive():
        return False, None
    return True, raised[0] if raised else None


def wait_until(condition: Callable[[], bool], deadline: float, poll_s: float = 0.2) -> bool:
    """Poll ``condition`` until it holds (True) or ``deadline`` passes (False)."""
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(poll_s)
    return condition()
