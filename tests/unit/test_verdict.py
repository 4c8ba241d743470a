"""Verdict rules: by cause, never a vacuous pass; exit codes in the order docs/ARCHITECTURE.md gives."""

from __future__ import annotations

from typing import Any

from model.console import parse_console
from model.exitcode import ExitCode
from model.runspec import Failure, NodeResult, WorkloadOutcome
from orchestrator.criteria import Criterion, CriterionResult, Severity, builtin_criteria, judge_values
from orchestrator.verdict import Verdict, combine, exit_code, judge_node

MIB = 2**20
# What Prometheus returns for a clean run of a 128 MiB overcommit, criterion by criterion.
CLEAN = {
    "no_hung_task": 0.0,
    "no_oops_or_panic": 0.0,
    "no_swap_write_error": 0.0,
    "no_oom_kill": 0.0,
    "swap_out_used": 300.0 * MIB,
    "swap_in_used": 200.0 * MIB,
    "node_alive": 1.2,
    "workload_done": 1.0,
}


def result(**overrides: Any) -> NodeResult:
    base: dict[str, Any] = {
        "run_id": "r001",
        "node": "node1",
        "samples": 60,
        "workload": WorkloadOutcome(exit_status=0, done=True, pages=98304, elapsed_s=60.0),
    }
    base.update(overrides)
    return NodeResult(**base)


def criteria(extra: list[Criterion] | None = None, **values: float | None) -> list[CriterionResult]:
    """Judge the built-in set (plus ``extra``) on the given values; None = no data."""
    data = {**CLEAN, **values}
    judged = []
    for criterion in builtin_criteria(128) + (extra or []):
        value = data.get(criterion.name, 0.0)
        judged.append(judge_values(criterion, criterion.expr, [] if value is None else [value]))
    return judged


def user(name: str, op: str, value: float, severity: Severity = Severity.ERROR) -> Criterion:
    return Criterion(name, "x", op, value, severity, "")


def events(text: str) -> list[dict[str, Any]]:
    return [e.to_json() for e in parse_console(text)]


def test_clean_run_with_enough_swap_passes() -> None:
    verdict = judge_node(result(), criteria())
    assert verdict.verdict is Verdict.PASS
    assert exit_code([verdict]) is ExitCode.PASS


def test_swap_below_the_planned_overcommit_is_invalid_not_pass() -> None:
    verdict = judge_node(result(), criteria(swap_out_used=50.0 * MIB, swap_in_used=50.0 * MIB))
    assert verdict.verdict is Verdict.INVALID
    assert exit_code([verdict]) is ExitCode.INVALID


def test_a_criterion_without_data_makes_the_run_invalid() -> None:
    verdict = judge_node(result(), criteria(no_oom_kill=None))
    assert verdict.verdict is Verdict.INVALID
    assert any("no_oom_kill" in reason and "no data" in reason for reason in verdict.reasons)


def test_a_node_judged_without_any_criterion_is_invalid() -> None:
    assert judge_node(result(), []).verdict is Verdict.INVALID


def test_oom_kill_on_the_console_fails_even_if_the_counter_missed_it() -> None:
    oom = "[   42.000000] Out of memory: Killed process 123 (swaplab-node) total-vm:1kB"
    verdict = judge_node(result(console_events=events(oom)), criteria())
    assert verdict.verdict is Verdict.FAIL and verdict.health_failed
    assert exit_code([verdict]) is ExitCode.KERNEL_FAIL


def test_oom_counter_increase_fails_even_without_console_line() -> None:
    verdict = judge_node(result(), criteria(no_oom_kill=1.0))
    assert verdict.verdict is Verdict.FAIL and verdict.health_failed
    assert exit_code([verdict]) is ExitCode.KERNEL_FAIL


def test_only_a_user_threshold_failing_exits_3_naming_it() -> None:
    verdict = judge_node(result(), criteria([user("swap_out_rate", ">", 10.0 * 2**30)]))
    assert verdict.verdict is Verdict.FAIL and not verdict.health_failed
    assert exit_code([verdict]) is ExitCode.CRITERIA_FAIL
    assert any(reason.startswith("swap_out_rate (error)") for reason in verdict.reasons)


def test_a_failing_warning_is_reported_but_the_run_passes() -> None:
    verdict = judge_node(result(), criteria([user("slow", ">", 10.0 * 2**30, Severity.WARNING)]))
    assert verdict.verdict is Verdict.PASS and exit_code([verdict]) is ExitCode.PASS
    assert any(reason.startswith("slow (warning)") for reason in verdict.reasons)


def test_a_failing_critical_criterion_stops_the_campaign() -> None:
    verdict = judge_node(result(), criteria([user("must", ">", 10.0 * 2**30, Severity.CRITICAL)]))
    assert verdict.stops_campaign and exit_code([verdict]) is ExitCode.CRITERIA_FAIL
    assert not judge_node(result(), criteria([user("must", ">=", 0.0, Severity.CRITICAL)])).stops_campaign


def test_corrupted_pages_fail() -> None:
    work = WorkloadOutcome(exit_status=3, done=True, pages=98304, bad_pages=2, corrupt=["corrupt page=5 pass=1"])
    verdict = judge_node(result(workload=work), criteria())
    assert verdict.verdict is Verdict.FAIL
    assert any("corrupt page=5" in reason for reason in verdict.reasons)


def test_hang_is_a_kernel_fail_with_its_reason() -> None:
    failure = Failure(cause="kernel", phase="workload", reason="node stopped answering (hang)")
    verdict = judge_node(result(failure=failure, workload=WorkloadOutcome()), criteria())
    assert verdict.verdict is Verdict.FAIL
    assert any("hang" in reason for reason in verdict.reasons)


def test_lab_failure_is_infra_error_and_not_a_kernel_fail() -> None:
    failure = Failure(cause="infra", phase="nfs", reason="ganesha did not start")
    verdict = judge_node(result(failure=failure, samples=0, workload=WorkloadOutcome()), [])
    assert verdict.verdict is Verdict.INFRA_ERROR
    assert not verdict.health_failed
    assert exit_code([verdict]) is ExitCode.BAD_INPUT_OR_INFRA


def test_panic_at_boot_is_fail_even_when_qemu_stopped() -> None:
    failure = Failure(cause="kernel", phase="boot", reason="kernel crashed while booting")
    panic = "[    1.2] Kernel panic - not syncing: VFS: Unable to mount root fs"
    verdict = judge_node(
        result(failure=failure, console_events=events(panic), samples=0, workload=WorkloadOutcome()), criteria()
    )
    assert verdict.verdict is Verdict.FAIL


def test_workload_killed_without_evidence_is_still_not_a_pass() -> None:
    work = WorkloadOutcome(exit_status=-1, done=False, last_line="progress write 1 128")
    assert judge_node(result(workload=work), criteria()).verdict is Verdict.FAIL


def test_mixed_results_exit_in_design_order() -> None:
    fail = judge_node(result(), criteria(no_oom_kill=1.0))
    threshold = judge_node(result(), criteria([user("fast", ">", 1e12)]))
    invalid = judge_node(result(), criteria(swap_out_used=None))
    lab_fault = Failure(cause="infra", phase="boot", reason="qemu")
    infra = judge_node(result(failure=lab_fault, workload=WorkloadOutcome()), [])
    passed = judge_node(result(), criteria())
    assert exit_code([passed, infra, invalid, threshold, fail]) is ExitCode.KERNEL_FAIL
    assert exit_code([passed, infra, invalid, threshold]) is ExitCode.CRITERIA_FAIL
    assert exit_code([passed, infra, invalid]) is ExitCode.INVALID
    assert exit_code([passed, infra]) is ExitCode.BAD_INPUT_OR_INFRA
    assert exit_code([]) is ExitCode.INVALID
    assert combine([Verdict.PASS, Verdict.INFRA_ERROR, Verdict.INVALID]) is Verdict.INVALID
