"""Steps and the pipeline that runs them (LAVA's Action pipeline, without its long run methods).

A step has a ``name``, the ``phase`` users see it under, a ``scope`` (lab, run or node), a
timeout, ``run(ctx, deadline)`` and ``cleanup(ctx)``. The pipeline runs steps in order,
stops at the first failure and calls ``cleanup`` of every step that started, in reverse
order, whatever happened.

Steps say what they need from the context and what they provide to it (``needs``,
``provides``: names such as "shell" or "nfs"), and a pipeline checks the order when it
is assembled: a step placed before what it needs is a ``PipelineOrderError`` naming both,
raised by whoever assembles it, never an assertion failing mid-run and blamed on the lab.

A step says whose fault its failures are by the exception it raises: ``KernelFault``
(the kernel under test: fail), ``LabFault`` (the lab's own parts: infra-error),
``InputFault`` (a mistake in the campaign that validation could not see: invalid), and
``Stopped`` (cancelled, or the run aborted before the start). Anything else a step lets
escape is the step's ``unexpected`` cause, which is the lab's unless a step says more.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from enum import StrEnum
from typing import ClassVar, Generic, TypeVar

from model.runspec import FailureCause


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
        try:
            step.run(ctx, began + step.timeout_s(ctx))
        except StepFailure:
            raise
        except Exception as err:  # a bug or an unforeseen fault: typed, never a hang or a pass
            raise step.unexpected(f"{step.name}: {type(err).__name__}: {err}") from err
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
    try:
        step.cleanup(ctx)
    except Exception as err:  # one failed cleanup must not skip the others (power off!)
        hooks.cleanup_failed(step, err)


def wait_until(condition: Callable[[], bool], deadline: float, poll_s: float = 0.2) -> bool:
    """Poll ``condition`` until it holds (True) or ``deadline`` passes (False)."""
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(poll_s)
    return condition()
