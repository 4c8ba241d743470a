"""Verdict rules: by cause, never a vacuous pass; exit codes in DESIGN.md's order."""

from __future__ import annotations

from typing import Any

from orchestrator.console import parse_console
from orchestrator.exitcode import ExitCode
from orchestrator.verdict import Verdict, combine, exit_code, judge_node
from workers.runspec import Failure, NodeResult, WorkloadOutcome

PAGES_PER_MIB = 256


def result(**overrides: Any) -> NodeResult:
    base: dict[str, Any] = {
        "run_id": "r001",
        "node": "node1",
        "samples": 60,
        "counters_first": {"pswpout": 0, "pswpin": 0, "oom_kill": 0},
        "counters_last": {"pswpout": 300 * PAGES_PER_MIB, "pswpin": 200 * PAGES_PER_MIB, "oom_kill": 0},
        "workload": WorkloadOutcome(exit_status=0, done=True, pages=98304, elapsed_s=60.0),
    }
    base.update(overrides)
    return NodeResult(**base)


def events(text: str) -> list[dict[str, Any]]:
    return [e.to_json() for e in parse_console(text)]


def test_clean_run_with_enough_swap_passes() -> None:
    verdict = judge_node(result(), planned_overcommit_mib=128)
    assert verdict.verdict is Verdict.PASS
    assert exit_code([verdict]) is ExitCode.PASS


def test_swap_below_the_planned_overcommit_is_invalid_not_pass() -> None:
    counters = {"pswpout": 50 * PAGES_PER_MIB, "pswpin": 50 * PAGES_PER_MIB, "oom_kill": 0}
    verdict = judge_node(result(counters_last=counters), planned_overcommit_mib=128)
    assert verdict.verdict is Verdict.INVALID
    assert exit_code([verdict]) is ExitCode.INVALID


def test_no_samples_is_invalid() -> None:
    verdict = judge_node(result(samples=0, counters_first={}, counters_last={}), 128)
    assert verdict.verdict is Verdict.INVALID


def test_oom_kill_on_the_console_fails_even_if_the_counter_missed_it() -> None:
    oom = "[   42.000000] Out of memory: Killed process 123 (swaplab-node) total-vm:1kB"
    verdict = judge_node(result(console_events=events(oom)), 128)
    assert verdict.verdict is Verdict.FAIL and verdict.health_failed
    assert exit_code([verdict]) is ExitCode.KERNEL_FAIL


def test_oom_counter_increase_fails_even_without_console_line() -> None:
    last = {"pswpout": 300 * PAGES_PER_MIB, "pswpin": 200 * PAGES_PER_MIB, "oom_kill": 1}
    assert judge_node(result(counters_last=last), 128).verdict is Verdict.FAIL


def test_corrupted_pages_fail() -> None:
    work = WorkloadOutcome(exit_status=3, done=True, pages=98304, bad_pages=2, corrupt=["corrupt page=5 pass=1"])
    verdict = judge_node(result(workload=work), 128)
    assert verdict.verdict is Verdict.FAIL
    assert any("corrupt page=5" in reason for reason in verdict.reasons)


def test_hang_is_a_kernel_fail_with_its_reason() -> None:
    failure = Failure(cause="kernel", phase="workload", reason="node stopped answering (hang)")
    verdict = judge_node(result(failure=failure, workload=WorkloadOutcome()), 128)
    assert verdict.verdict is Verdict.FAIL
    assert any("hang" in reason for reason in verdict.reasons)


def test_lab_failure_is_infra_error_and_not_a_kernel_fail() -> None:
    failure = Failure(cause="infra", phase="nfs", reason="ganesha did not start")
    verdict = judge_node(
        result(failure=failure, samples=0, counters_first={}, counters_last={}, workload=WorkloadOutcome()), 128
    )
    assert verdict.verdict is Verdict.INFRA_ERROR
    assert not verdict.health_failed
    assert exit_code([verdict]) is ExitCode.BAD_INPUT_OR_INFRA


def test_panic_at_boot_is_fail_even_when_qemu_stopped() -> None:
    failure = Failure(cause="kernel", phase="boot", reason="kernel crashed while booting")
    panic = "[    1.2] Kernel panic - not syncing: VFS: Unable to mount root fs"
    verdict = judge_node(
        result(
            failure=failure,
            console_events=events(panic),
            samples=0,
            counters_first={},
            counters_last={},
            workload=WorkloadOutcome(),
        ),
        128,
    )
    assert verdict.verdict is Verdict.FAIL


def test_workload_killed_without_evidence_is_still_not_a_pass() -> None:
    work = WorkloadOutcome(exit_status=-1, done=False, last_line="progress write 1 128")
    assert judge_node(result(workload=work), 128).verdict is Verdict.FAIL


def test_mixed_results_exit_in_design_order() -> None:
    fail = judge_node(result(counters_last={"pswpout": 0, "pswpin": 0, "oom_kill": 1}), 128)
    invalid = judge_node(result(samples=0, counters_first={}, counters_last={}), 128)
    infra = judge_node(
        result(failure=Failure(cause="infra", phase="boot", reason="qemu"), workload=WorkloadOutcome()), 128
    )
    passed = judge_node(result(), 128)
    assert exit_code([passed, infra, invalid, fail]) is ExitCode.KERNEL_FAIL
    assert exit_code([passed, infra, invalid]) is ExitCode.INVALID
    assert exit_code([passed, infra]) is ExitCode.BAD_INPUT_OR_INFRA
    assert exit_code([]) is ExitCode.INVALID
    assert combine([Verdict.PASS, Verdict.INFRA_ERROR, Verdict.INVALID]) is Verdict.INVALID
