"""One node, one run: the node pipeline its driver calls for, run to a node result.

``run_node_session`` takes a JSON run spec and returns a JSON node result. Its
collaborators (progress, barrier, cancel check) are injected, so the same function runs
inside a Celery task or a test. It never judges pass/fail: it records the evidence and,
when it had to stop early, *whose fault* that was (kernel, infra, input, aborted,
cancelled) as the failing step said.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from typing import Any

from model.console import EventTally, parse_console
from model.paths import results_root
from model.runspec import Failure, NodeResult, NodeRunSpec
from workers.admission import admit_node
from workers.collab import Barrier, CancelCheck, Progress
from workers.console_log import ConsoleLog, tail_lines
from workers.drivers import DriverError, make_driver
from workers.drivers.base import NodeAccess
from workers.exporter import NODES
from workers.pipeline.context import NodeContext
from workers.pipeline.step import LabFault, Pipeline, PipelineHooks, Step, StepFailure
from workers.pipeline.strategy import node_pipeline

RESULT_FILES = ("console.log", "samples.jsonl", "workload.log", "nfs-server.log")


def run_node_session(
    spec: dict[str, Any],
    progress: Progress,
    barrier: Barrier,
    cancel: CancelCheck,
    on_budget: Callable[[float], None] = lambda seconds: None,
) -> dict[str, Any]:
    """Run one node of one run end to end; JSON in, JSON out. ``on_budget`` learns the
    most the session may take (its pipeline's budget) before it starts."""
    session = NodeSession(NodeRunSpec.model_validate(spec), progress, barrier, cancel)
    if session.pipeline is not None and session.ctx is not None:
        on_budget(session.pipeline.budget_s(session.ctx))
    return session.run().model_dump(mode="json")


class NodeSession(PipelineHooks[NodeContext]):
    """Runs the node pipeline and turns its outcome into a NodeResult."""

    def __init__(self, spec: NodeRunSpec, progress: Progress, barrier: Barrier, cancel: CancelCheck) -> None:
        self.spec = spec
        self.progress = progress
        self.barrier = barrier
        self.result = NodeResult(run_id=spec.run_id, node=spec.node)
        self.dir = spec.result_dir(results_root())
        self.ctx: NodeContext | None = None
        self.pipeline: Pipeline[NodeContext] | None = None
        self.setup_error: StepFailure | None = None
        try:
            lab, node = admit_node(spec)  # this worker's own lab and node, or InputFault
            driver: NodeAccess = make_driver(node, self.dir)
            self.pipeline, strategy = node_pipeline(driver)
        except StepFailure as refused:
            self.setup_error = refused
            return
        except (DriverError, LookupError) as err:
            self.setup_error = LabFault(str(err))
            return
        self.ctx = NodeContext(
            spec, progress, barrier, cancel, lab, node, driver, self.result, self.dir, persistent=strategy.persistent
        )

    def run(self) -> NodeResult:
        self.result.started_at = time.time()
        try:
            if self.setup_error is not None:
                raise self.setup_error
            assert self.pipeline is not None and self.ctx is not None
            self.pipeline.run(self.ctx, self)
        except StepFailure as failure:
            self._fail(failure)
        finally:
            self._finish()
        return self.result

    # -- PipelineHooks -----------------------------------------------------------------------
    def check_stop(self) -> None:
        assert self.ctx is not None
        self.ctx.check_stop()

    def enter(self, step: Step[NodeContext]) -> None:
        ctx = self.ctx
        assert ctx is not None
        if step.phase != ctx.phase:
            ctx.phase = step.phase
            if ctx.series is not None:
                ctx.series.phase = step.phase
            self.progress.phase(ctx.name, step.phase, step.describe(ctx))

    def left(self, step: Step[NodeContext], seconds: float) -> None:
        phases = self.result.phases
        phases[step.phase] = round(phases.get(step.phase, 0.0) + seconds, 3)

    def cleanup_failed(self, step: Step[NodeContext], error: Exception) -> None:
        problem = f"{step.name}: {error}"
        self.result.cleanup_problems.append(problem)
        self.progress.phase(self.spec.node, "teardown", f"cleanup: {problem}")

    # -- outcome -------------------------------------------------------------------------------
    def _fail(self, failure: StepFailure) -> None:
        phase = self.ctx.phase if self.ctx is not None else "start"
        self.result.failure = Failure(
            cause=failure.cause, phase=phase, reason=failure.reason, takes_node_out=failure.takes_node_out
        )
        self.progress.phase(self.spec.node, phase, f"stopped ({failure.cause}): {failure.reason}")
        if self.ctx is None or not self.ctx.passed_barrier:
            self.barrier.abort(self.spec.node, failure.reason)

    def _finish(self) -> None:
        """After every cleanup: console events, the last metrics scrape, node-result.json."""
        ctx = self.ctx
        if ctx is not None:
            ctx.phase = "teardown"
            self._record_console(ctx)
            self._finish_metrics(ctx)
            if ctx.persistent:
                self.result.left_clean = not self.result.cleanup_problems and not ctx.unreachable
        self.result.finished_at = time.time()
        self.result.files = {name: name for name in RESULT_FILES if (self.dir / name).exists()}
        self.dir.mkdir(parents=True, exist_ok=True)
        (self.dir / "node-result.json").write_text(json.dumps(self.result.model_dump(mode="json"), indent=2))
        failure = self.result.failure
        self.progress.phase(self.spec.node, "done", "" if failure is None else f"({failure.cause})")

    def _record_console(self, ctx: NodeContext) -> None:
        """The console's events, capped (the first of each kind, every kind counted), and its tail."""
        log = ConsoleLog.find(ctx.console)  # the writer saw every line, the ones left out of the file too
        tally = log.tally() if log is not None else EventTally.of(parse_console(ctx.console_text()))
        self.result.console_events = [event.to_json() for event in tally.kept]
        self.result.console_event_counts = tally.count_json()
        self.result.console_events_dropped = tally.dropped
        self.result.console_tail = tail_lines(ctx.console)

    def _finish_metrics(self, ctx: NodeContext) -> None:
        if ctx.series is None:
            return
        ctx.count_console(final=True)
        ctx.series.phase = "done"
        NODES.finish(ctx.series)  # returns once Prometheus scraped the final values
        self.result.metrics_to = time.time()
