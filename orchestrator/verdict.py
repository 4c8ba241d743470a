"""Verdicts: judging a node result, a run and a campaign, by cause rather than timing.

Pure functions over two kinds of evidence: the *checks* read from what the node session
brought back (console lines, the workload's page verification, why it stopped) and the
*criteria* judged in Prometheus over the run's window (orchestrator.evaluation). A node
passes only when every check passes and every error/critical criterion passed with data.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from enum import StrEnum

from model.console import KERNEL_FAILURE_KINDS, EventKind
from model.exitcode import ExitCode
from model.faults import FaultRecord
from model.runspec import NodeResult
from orchestrator.blame import excuse_criteria, excused_by, fault_outcome
from orchestrator.criteria import CriterionResult, Outcome, Severity
from orchestrator.evaluation import judged

MIB = 2**20


class Verdict(StrEnum):
    """Outcome of a node, a run or a campaign."""

    PASS = "pass"
    FAIL = "fail"
    INFRA_ERROR = "infra-error"
    INVALID = "invalid"


@dataclass(frozen=True)
class Check:
    """One check of the node session's own evidence and its outcome."""

    name: str
    outcome: Outcome
    detail: str
    builtin: bool = True


@dataclass(frozen=True)
class NodeVerdict:
    """The verdict of one node in one run, with the checks and reasons behind it."""

    node: str
    verdict: Verdict
    reasons: list[str]
    checks: list[Check] = field(default_factory=list)
    criteria: list[CriterionResult] = field(default_factory=list)

    @property
    def health_failed(self) -> bool:
        """A built-in kernel health check or criterion failed (exit code 1 territory)."""
        evidence: list[Check | CriterionResult] = [*self.checks, *self.criteria]
        return any(c.builtin and c.outcome is Outcome.FAIL for c in evidence)

    @property
    def criteria_failed(self) -> bool:
        """A user criterion of severity error/critical failed (exit code 3 territory)."""
        return any(not c.builtin and c.counts and c.outcome is Outcome.FAIL for c in self.criteria)

    @property
    def stops_campaign(self) -> bool:
        """A critical criterion failed: the campaign's remaining runs are not started."""
        return any(c.severity is Severity.CRITICAL and c.outcome is Outcome.FAIL for c in self.criteria)

    def to_json(self) -> dict[str, object]:
        """JSON-able form for result.json."""
        return {
            "node": self.node,
            "verdict": self.verdict.value,
            "reasons": self.reasons,
            "checks": [asdict(c) for c in self.checks],
            "criteria": [c.to_json() for c in self.criteria],
        }


def judge_node(result: NodeResult, criteria: list[CriterionResult], faults: Sequence[FaultRecord] = ()) -> NodeVerdict:
    """Judge one node: fail for the kernel, infra-error for the lab, invalid without data.

    ``faults``: the run's faults that disturbed this node (orchestrator.blame): the
    messages they explain do not fail it; one that hit nothing makes it invalid.
    """
    criteria = excuse_criteria(criteria, result.console_events, result.console_event_counts, faults)
    checks = _console_checks(result, faults) + _workload_checks(result) + _fault_checks(result, faults)
    if result.failure is not None:
        checks.append(_failure_check(result))
    if judged(result) and not criteria:
        checks.append(Check("criteria", Outcome.INVALID, "no criterion was evaluated in Prometheus"))
    verdict = _verdict_of(result, checks, criteria)
    return NodeVerdict(result.node, verdict, _reasons(result, checks, criteria), checks, criteria)


def _verdict_of(result: NodeResult, checks: list[Check], criteria: list[CriterionResult]) -> Verdict:
    if any(c.outcome is Outcome.FAIL for c in checks) or any(c.counts and c.outcome is Outcome.FAIL for c in criteria):
        return Verdict.FAIL
    if not judged(result):
        # A mistake in the input that got past validation is never the kernel's: invalid.
        assert result.failure is not None
        return Verdict.INVALID if result.failure.cause == "input" else Verdict.INFRA_ERROR
    if any(c.outcome is Outcome.INVALID for c in checks) or any(c.outcome is Outcome.INVALID for c in criteria):
        return Verdict.INVALID
    return Verdict.PASS


def _reasons(result: NodeResult, checks: list[Check], criteria: list[CriterionResult]) -> list[str]:
    reasons = [f"{c.name}: {c.detail}" for c in checks if c.outcome is not Outcome.PASS]
    reasons += [
        f"{c.name} ({c.severity.value}{', built-in' if c.builtin else ''}): {c.detail}"
        for c in criteria
        if c.outcome is not Outcome.PASS
    ]
    if not judged(result):
        assert result.failure is not None
        reasons.insert(0, f"{result.failure.cause} in {result.failure.phase}: {result.failure.reason}")
    return reasons


def _fault_checks(result: NodeResult, faults: Sequence[FaultRecord]) -> list[Check]:
    checks = []
    for fault in faults:
        outcome, detail = fault_outcome(fault, result.node)
        if outcome is Outcome.PASS and result.failure is not None and result.failure.cause == "kernel":
            outcome, detail = Outcome.FAIL, f"{fault.planned}: the node did not recover: {result.failure.reason}"
        checks.append(Check(f"fault_{fault.index + 1}", outcome, detail))
    excused = [e for e in result.console_events if excused_by(e, faults) is not None]
    if excused:
        kinds = sorted({str(e.get("kind")) for e in excused})
        detail = f"{len(excused)} console message(s) within fault windows ({', '.join(kinds)})"
        checks.append(Check("expected_messages", Outcome.PASS, detail))
    return checks


def _console_checks(result: NodeResult, faults: Sequence[FaultRecord] = ()) -> list[Check]:
    names = {
        EventKind.PANIC: "no_panic",
        EventKind.OOPS: "no_oops",
        EventKind.HUNG_TASK: "no_hung_task",
        EventKind.OOM_KILL: "no_oom_kill",
        EventKind.SWAP_WRITE_ERROR: "no_swap_write_error",
        EventKind.SWAP_ACTIVATE_ERROR: "no_swap_activate_error",
    }
    checks = []
    for kind in sorted(KERNEL_FAILURE_KINDS):
        seen = [e for e in result.console_events if e.get("kind") == kind.value and excused_by(e, faults) is None]
        detail = f"console line {seen[0]['line']}: {seen[0]['text']}" if seen else "console clean"
        checks.append(Check(names[kind], Outcome.FAIL if seen else Outcome.PASS, detail))
    return checks


def _workload_checks(result: NodeResult) -> list[Check]:
    work = result.workload
    if work.bad_pages > 0:
        return [
            Check(
                "data_intact",
                Outcome.FAIL,
                f"{work.bad_pages} pages read back wrong after swap-in: {'; '.join(work.corrupt[:3])}",
            )
        ]
    if work.done and work.exit_status == 0:
        return [
            Check("data_intact", Outcome.PASS, f"{work.pages} pages verified"),
            Check("workload_done", Outcome.PASS, f"finished in {work.elapsed_s:.1f} s"),
        ]
    if result.failure is not None:
        return []  # the session's failure says why the workload did not finish
    return [
        Check(
            "workload_done",
            Outcome.FAIL,
            f"workload ended without finishing (exit status {work.exit_status}; last output {work.last_line!r})",
        )
    ]


def _failure_check(result: NodeResult) -> Check:
    assert result.failure is not None
    if result.failure.cause == "kernel":
        return Check("node_alive", Outcome.FAIL, f"{result.failure.phase}: {result.failure.reason}")
    return Check("node_alive", Outcome.INVALID, f"not judged: {result.failure.cause} in {result.failure.phase}")


def combine(verdicts: Iterable[Verdict]) -> Verdict:
    """The verdict of a group: fail before invalid before infra-error before pass."""
    ranked = [Verdict.FAIL, Verdict.INVALID, Verdict.INFRA_ERROR, Verdict.PASS]
    present = set(verdicts)
    return next((v for v in ranked if v in present), Verdict.INVALID)


def exit_code(node_verdicts: Iterable[NodeVerdict]) -> ExitCode:
    """The exit-code table (docs/ARCHITECTURE.md): the first that applies of 1, 3, 4, 2, 0."""
    verdicts = list(node_verdicts)
    if not verdicts:
        return ExitCode.INVALID
    if any(v.health_failed for v in verdicts):
        return ExitCode.KERNEL_FAIL
    if any(v.criteria_failed for v in verdicts):
        return ExitCode.CRITERIA_FAIL
    if any(v.verdict is Verdict.INVALID for v in verdicts):
        return ExitCode.INVALID
    if any(v.verdict is Verdict.INFRA_ERROR for v in verdicts):
        return ExitCode.BAD_INPUT_OR_INFRA
    return ExitCode.PASS
