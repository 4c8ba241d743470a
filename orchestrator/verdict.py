"""Verdicts: judging a node result, a run and a campaign, by cause rather than timing.

Pure functions over the evidence a node session returned (counters, console events,
workload outcome, failure cause). The Prometheus-based criteria of a later stage add
checks of their own kind; the rules for combining them are here.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from enum import StrEnum

from orchestrator.console import KERNEL_FAILURE_KINDS, EventKind
from orchestrator.exitcode import ExitCode
from workers.runspec import NodeResult
from workers.samples import counter_increase, swap_moved_bytes

MIB = 2**20


class Verdict(StrEnum):
    """Outcome of a node, a run or a campaign."""

    PASS = "pass"
    FAIL = "fail"
    INFRA_ERROR = "infra-error"
    INVALID = "invalid"


class Outcome(StrEnum):
    """Outcome of one check."""

    PASS = "pass"
    FAIL = "fail"
    INVALID = "invalid"


@dataclass(frozen=True)
class Check:
    """One built-in health check (or, later, a user criterion) and its outcome."""

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

    @property
    def health_failed(self) -> bool:
        """A built-in kernel health check failed (exit code 1 territory)."""
        return any(c.builtin and c.outcome is Outcome.FAIL for c in self.checks)

    @property
    def criteria_failed(self) -> bool:
        """Only a user criterion failed (exit code 3 territory)."""
        return any(not c.builtin and c.outcome is Outcome.FAIL for c in self.checks)

    def to_json(self) -> dict[str, object]:
        """JSON-able form for result.json."""
        return {
            "node": self.node,
            "verdict": self.verdict.value,
            "reasons": self.reasons,
            "checks": [asdict(c) for c in self.checks],
        }


def judge_node(result: NodeResult, planned_overcommit_mib: int) -> NodeVerdict:
    """Judge one node's evidence: fail for the kernel, infra-error for the lab, else data."""
    checks = _console_checks(result) + _counter_checks(result) + _workload_checks(result)
    if result.failure is not None:
        checks.append(_failure_check(result))
    if result.failure is None or result.failure.cause == "kernel":
        checks.append(_swap_check(result, planned_overcommit_mib))
    return NodeVerdict(result.node, _verdict_of(result, checks), _reasons(result, checks), checks)


def _verdict_of(result: NodeResult, checks: list[Check]) -> Verdict:
    if any(check.outcome is Outcome.FAIL for check in checks):
        return Verdict.FAIL
    if result.failure is not None and result.failure.cause != "kernel":
        return Verdict.INFRA_ERROR
    if any(check.outcome is Outcome.INVALID for check in checks):
        return Verdict.INVALID
    return Verdict.PASS


def _reasons(result: NodeResult, checks: list[Check]) -> list[str]:
    reasons = [f"{c.name}: {c.detail}" for c in checks if c.outcome is not Outcome.PASS]
    if result.failure is not None and result.failure.cause != "kernel":
        reasons.insert(0, f"{result.failure.cause} in {result.failure.phase}: {result.failure.reason}")
    return reasons


def _console_checks(result: NodeResult) -> list[Check]:
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
        seen = [e for e in result.console_events if e.get("kind") == kind.value]
        detail = f"console line {seen[0]['line']}: {seen[0]['text']}" if seen else "console clean"
        checks.append(Check(names[kind], Outcome.FAIL if seen else Outcome.PASS, detail))
    return checks


def _counter_checks(result: NodeResult) -> list[Check]:
    if not result.counters_first or not result.counters_last:
        return []
    kills = counter_increase(result.counters_first, result.counters_last, "oom_kill")
    outcome = Outcome.FAIL if kills > 0 else Outcome.PASS
    return [Check("oom_kill_counter", outcome, f"vmstat oom_kill increased by {kills}")]


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


def _swap_check(result: NodeResult, planned_overcommit_mib: int) -> Check:
    if result.samples == 0 or not result.counters_first:
        return Check("swap_used", Outcome.INVALID, "no counter samples from the node")
    out, into = swap_moved_bytes(result.counters_first, result.counters_last)
    detail = f"{out / MIB:.1f} MiB out, {into / MIB:.1f} MiB in (planned overcommit {planned_overcommit_mib} MiB)"
    enough = out >= planned_overcommit_mib * MIB and into >= planned_overcommit_mib * MIB
    return Check("swap_used", Outcome.PASS if enough else Outcome.INVALID, detail)


def combine(verdicts: Iterable[Verdict]) -> Verdict:
    """The verdict of a group: fail before invalid before infra-error before pass."""
    ranked = [Verdict.FAIL, Verdict.INVALID, Verdict.INFRA_ERROR, Verdict.PASS]
    present = set(verdicts)
    return next((v for v in ranked if v in present), Verdict.INVALID)


def exit_code(node_verdicts: Iterable[NodeVerdict]) -> ExitCode:
    """DESIGN.md's table: the first that applies of 1, 3, 4, 2, 0."""
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
