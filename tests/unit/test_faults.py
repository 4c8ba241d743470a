"""Faults: what a campaign may ask, how the injector times them and measures recovery, and
how the verdict blames (or excuses) what happened inside a fault's window."""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from pydantic import ValidationError

from model.campaign import load_campaign
from model.console import EventKind
from model.faults import FaultRecord, FaultSpec
from model.runspec import Failure, NodeResult, WorkloadOutcome
from model.yamlpos import SpecError
from orchestrator.blame import excused_by, fault_outcome
from orchestrator.cli import main
from orchestrator.criteria import Outcome, builtin_criteria, judge_values
from orchestrator.verdict import Verdict, judge_node
from workers.faults import actions
from workers.faults.actions import drop_script
from workers.faults.injector import FaultInjector, Planned, recovery_time, swap_out_rate
from workers.lab.nfs.base import NfsServerError
from workers.lab.nfs.knfsd import delay_script, undelay_script

REPO = Path(__file__).resolve().parents[2]
# What Prometheus returns for a clean run of a 128 MiB overcommit, criterion by criterion.
CLEAN = {"swap_out_used": 3e8, "swap_in_used": 2e8, "node_alive": 1.2, "workload_done": 1.0}
MIB_PAGES = 256  # pages of 4 KiB in a MiB


def campaign_text(lab: str, faults: str, nodes: int = 1) -> str:
    return f"""\
name: unit
lab: {REPO / "inventory" / lab}
kernels:
  - package: linux-image-amd64
nodes: {nodes}
node:
  ram_mib: 256
swap:
  size_mib: 512
workloads:
  - name: w
    mib: 384
faults:
{faults}"""


def issues(tmp_path: Path, text: str) -> list[tuple[int | None, str, str]]:
    path = tmp_path / "campaign.yaml"
    path.write_text(text)
    with pytest.raises(SpecError) as caught:
        load_campaign(path)
    return [(issue.line, issue.field, issue.message) for issue in caught.value.issues]


# -- what a campaign may ask ------------------------------------------------------------------


def test_a_server_stall_validates_on_the_embedded_lab(tmp_path: Path) -> None:
    path = tmp_path / "campaign.yaml"
    path.write_text(campaign_text("local.yml", "  - {kind: server-stall, after_swapped_mib: 24, for_s: 5}\n"))
    [fault] = load_campaign(path).spec.faults
    assert fault.describe() == "server-stall on server after 24 MiB swapped out for 5 s"
    assert fault.injected_by(0) and not fault.injected_by(1)


def test_a_link_fault_on_a_lab_without_a_lab_network_names_file_line_and_field(tmp_path: Path) -> None:
    text = campaign_text("local.yml", "  - {kind: loss, percent: 5, at_s: 10, for_s: 5, target: node-1}\n")
    [(line, field, message)] = issues(tmp_path, text)
    assert (line, field) == (14, "faults[0].kind")
    assert "lab network" in message and "'local'" in message


def test_a_link_fault_validates_on_the_lab_network(tmp_path: Path) -> None:
    path = tmp_path / "campaign.yaml"
    faults = "  - {kind: loss, percent: 5, at_s: 10, for_s: 5, target: all-nodes, direction: out}\n"
    path.write_text(campaign_text("netlab.yml", faults))
    [fault] = load_campaign(path).spec.faults
    assert fault.injected_by(0) and fault.injected_by(3)
    assert fault.describe() == "loss 5 % (out) on all-nodes at +10 s for 5 s"


def test_a_fault_on_a_node_the_run_does_not_have_is_refused(tmp_path: Path) -> None:
    text = campaign_text("netlab.yml", "  - {kind: link-down, at_s: 10, for_s: 5, target: node-2}\n")
    [(_line, field, message)] = issues(tmp_path, text)
    assert field == "faults[0].target" and "1 node" in message


def test_faults_given_by_time_must_not_overlap(tmp_path: Path) -> None:
    faults = "  - {kind: server-stall, at_s: 10, for_s: 5}\n  - {kind: server-stall, at_s: 12, for_s: 5}\n"
    [(line, field, message)] = issues(tmp_path, campaign_text("local.yml", faults))
    assert (line, field) == (15, "faults[1].at_s") and "before faults[0] ends (+15 s)" in message


@pytest.mark.parametrize(
    ("fields", "words"),
    [
        ({"kind": "server-stall", "for_s": 5}, "exactly one of 'at_s'"),
        ({"kind": "server-stall", "at_s": 1, "after_swapped_mib": 8, "for_s": 5}, "exactly one of 'at_s'"),
        ({"kind": "server-stall", "at_s": 1, "for_s": 5, "target": "node-1"}, "must be 'server'"),
        ({"kind": "loss", "at_s": 1, "for_s": 5, "target": "node-1"}, "'percent'"),
        ({"kind": "link-down", "at_s": 1, "for_s": 5}, "target 'node-N'"),
        ({"kind": "link-down", "at_s": 1, "for_s": 5, "target": "node-1", "percent": 3}, "'percent'"),
        ({"kind": "server-stall", "at_s": 1, "for_s": 5, "direction": "in"}, "link faults only"),
        ({"kind": "server-stall", "at_s": 1, "for_s": 0}, "greater than 0"),
        ({"kind": "reboot", "at_s": 1, "for_s": 5}, "server-stall"),
        ({"kind": "bandwidth", "at_s": 1, "for_s": 5, "target": "node-1"}, "'mbit'"),
        ({"kind": "loss", "at_s": 1, "for_s": 5, "target": "node-1", "percent": 3, "mbit": 8}, "'mbit'"),
        ({"kind": "bandwidth", "at_s": 1, "for_s": 5, "target": "node-1", "mbit": 0}, "greater than or equal to 0.1"),
        ({"kind": "server-restart", "at_s": 1, "for_s": 5, "target": "all-nodes"}, "must be 'server'"),
        ({"kind": "memory-squeeze", "at_s": 1, "for_s": 5, "target": "node-1"}, "'mib'"),
        ({"kind": "loss", "at_s": 1, "for_s": 5, "target": "node-1", "percent": 3, "flap_s": 1}, "link-down only"),
        ({"kind": "latency", "at_s": 1, "for_s": 5, "target": "node-1"}, "'ms'"),
        (
            {"kind": "latency", "at_s": 1, "for_s": 5, "target": "node-1", "ms": 50, "direction": "out"},
            "no 'direction'",
        ),
        ({"kind": "memory-squeeze", "at_s": 1, "for_s": 5, "mib": 8}, "disturbs a node: target 'node-N'"),
    ],
)
def test_a_fault_that_says_too_much_or_too_little_is_refused(fields: dict[str, Any], words: str) -> None:
    with pytest.raises(ValidationError) as caught:
        FaultSpec.model_validate(fields)
    assert words in str(caught.value)


# -- measuring: rates and recovery ------------------------------------------------------------


def ticks(rates_mibps: list[float], start: float = 1000.0) -> list[dict[str, Any]]:
    """One tick a second, swapping out at the given MiB/s during the second before each tick."""
    records, pages = [], 0.0
    for second, rate in enumerate([0.0, *rates_mibps]):
        pages += rate * MIB_PAGES
        records.append({"host_time_ns": int((start + second) * 1e9), "pswpout": int(pages)})
    return records


def test_recovery_is_the_first_tick_back_at_half_the_rate_before() -> None:
    # 10 MiB/s, a stall from t=1010 to 1015 (nothing moves), then 2, 4, 6, 10 MiB/s.
    samples = ticks([10.0] * 10 + [0.0] * 5 + [2.0, 4.0, 6.0, 10.0])
    before = swap_out_rate(samples, 1000.0, 1010.0)
    assert before == pytest.approx(10.0, rel=0.01)
    recovery, note = recovery_time(samples, 1015.0, before)
    assert recovery == pytest.approx(3.0) and note == ""


def test_no_recovery_is_said_with_why() -> None:
    samples = ticks([10.0] * 10 + [0.0] * 8)
    recovery, note = recovery_time(samples, 1012.0, 10.0)
    assert recovery is None and "below half its rate" in note
    assert recovery_time(samples, 1012.0, 0.0) == (None, "no swap-out before the fault to recover to")


class FakeAction:
    """An action that only notes when it was applied and undone."""

    def __init__(self) -> None:
        self.log: list[tuple[str, float]] = []
        self.done = False

    def apply(self) -> None:
        self.log.append(("apply", time.monotonic()))

    def undo(self) -> None:
        self.log.append(("undo", time.monotonic()))

    def finished(self) -> bool:
        return self.done


class DoneAction(FakeAction):
    """One whose disturbance ends by itself once applied (a squeeze's hog that finished)."""

    def finished(self) -> bool:
        return bool(self.log)


def injector(faults: list[FaultSpec], counter: list[int]) -> tuple[FaultInjector, list[FakeAction]]:
    fakes = [FakeAction() for _ in faults]
    planned = [Planned(i, f, a) for i, (f, a) in enumerate(zip(faults, fakes, strict=True))]  # type: ignore[arg-type]
    latest = lambda: {"pswpout": counter[0], "host_time_ns": time.time_ns()}  # noqa: E731
    return FaultInjector("node1", planned, time.time_ns(), latest, lambda note: None), fakes


def test_faults_start_at_their_moment_last_their_time_and_are_undone_once() -> None:
    counter = [0]
    first = FaultSpec(kind="server-stall", at_s=0.2, for_s=0.3)
    second = FaultSpec(kind="server-stall", after_swapped_mib=4, for_s=0.2)
    faults, fakes = injector([first, second], counter)
    faults.start()
    time.sleep(0.8)
    assert [step for step, _ in fakes[0].log] == ["apply", "undo"]
    assert fakes[1].log == []  # 4 MiB not swapped out yet
    counter[0] = 5 * MIB_PAGES
    time.sleep(0.6)
    faults.stop()
    assert [step for step, _ in fakes[1].log] == ["apply", "undo"]
    (_, on), (_, off) = fakes[0].log
    assert 0.25 <= off - on <= 0.6
    records = faults.records([])
    assert all(r.started_at is not None and r.ended_at is not None and not r.missed for r in records)


def test_a_fault_whose_moment_never_comes_is_missed_and_says_why() -> None:
    faults, fakes = injector([FaultSpec(kind="server-stall", after_swapped_mib=64, for_s=1)], [0])
    faults.start()
    time.sleep(0.3)
    faults.stop()
    [record] = faults.records([])
    assert fakes[0].log == [] and record.started_at is None
    assert record.missed == "the workload ended before 64 MiB were swapped out"


def test_stopping_during_a_fault_undoes_it_at_once() -> None:
    faults, fakes = injector([FaultSpec(kind="server-stall", at_s=0, for_s=600)], [0])
    faults.start()
    time.sleep(0.3)
    stopper = threading.Thread(target=faults.stop)
    began = time.monotonic()
    stopper.start()
    stopper.join(5)
    assert time.monotonic() - began < 2 and [step for step, _ in fakes[0].log] == ["apply", "undo"]


def test_a_fault_that_ends_by_itself_ends_early() -> None:
    fake = DoneAction()
    planned = [Planned(0, FaultSpec(kind="memory-squeeze", target="node-1", mib=8, at_s=0, for_s=600), fake)]  # type: ignore[arg-type]
    faults = FaultInjector("node1", planned, time.time_ns(), lambda: None, lambda note: None)
    faults.start()
    time.sleep(0.8)
    assert [step for step, _ in fake.log] == ["apply", "undo"]
    faults.stop()
    [record] = faults.records([])
    assert record.ended_at is not None and record.started_at is not None
    assert record.ended_at - record.started_at < 1


def test_a_squeeze_beside_the_workload_must_fit_in_ram_and_swap(tmp_path: Path) -> None:
    squeeze = "  - {kind: memory-squeeze, target: node-1, mib: 400, at_s: 5, for_s: 30}\n"
    path = tmp_path / "campaign.yaml"
    path.write_text(campaign_text("local.yml", squeeze))  # 384 MiB touched, 256 MiB RAM, 512 MiB swap
    with pytest.raises(SpecError) as caught:
        load_campaign(path)
    [issue] = caught.value.issues
    assert (
        issue.field == "faults[0].mib"
        and "400 MiB squeezed beside a workload of 384 MiB exceeds the node's 256 MiB of RAM + 512 MiB of swap"
        in issue.message
    )
    path.write_text(campaign_text("local.yml", squeeze.replace("400", "96")))
    [fault] = load_campaign(path).spec.faults
    assert fault.describe() == "memory-squeeze of 96 MiB on node-1 at +5 s for 30 s"


def test_each_kind_says_what_it_does() -> None:
    said = [
        FaultSpec(kind="server-restart", after_swapped_mib=80, for_s=1).describe(),
        FaultSpec(kind="loss", at_s=3, for_s=6, target="node-1", percent=3).describe(),
        FaultSpec(kind="bandwidth", at_s=3, for_s=5, target="all-nodes", mbit=8, direction="out").describe(),
        FaultSpec(kind="link-down", at_s=3, for_s=2, target="node-2", direction="in").describe(),
        FaultSpec(kind="link-down", at_s=3, for_s=9, target="node-1", flap_s=1.5).describe(),
        FaultSpec(kind="latency", at_s=3, for_s=9, target="all-nodes", ms=50).describe(),
    ]
    assert said == [
        "server-restart on server after 80 MiB swapped out for 1 s",
        "loss 3 % (both) on node-1 at +3 s for 6 s",
        "bandwidth 8 Mbit/s (out) on all-nodes at +3 s for 5 s",
        "link-down (in) on node-2 at +3 s for 2 s",
        "link-down flapping every 1.5 s on node-1 at +3 s for 9 s",
        "latency +50 ms on all-nodes at +3 s for 9 s",
    ]


def test_a_latency_fault_is_netem_on_the_servers_lab_nic_for_one_address() -> None:
    script = delay_script("10.77.0.1", "10.77.0.11", 50)
    assert "awk '$4 ~ /^10\\.77\\.0\\.1\\//" in script  # the NIC with the server's lab address
    assert "parent 5e:4 handle 5f: netem delay 50ms" in script
    assert "u32 match ip dst 10.77.0.11/32 flowid 5e:4" in script and "prio 11 " in script
    assert "priomap 1 2 2 2 1 2 0 0 1 1 1 1 1 1 1 1" in script  # band 4 gets filtered frames only
    assert "prio 11 2>/dev/null" in undelay_script("10.77.0.1", "10.77.0.11")
    with pytest.raises(ValueError):
        delay_script("10.77.0.1", "10.77.0.11; reboot", 50)


def test_an_injector_that_fails_mid_fault_undoes_it_and_says_so() -> None:
    def note(line: str) -> None:
        if "began" in line:
            raise RuntimeError("a bug")

    fake = FakeAction()
    planned = [Planned(0, FaultSpec(kind="server-stall", at_s=0, for_s=600), fake)]  # type: ignore[arg-type]
    faults = FaultInjector("node1", planned, time.time_ns(), lambda: None, note)
    faults.start()
    time.sleep(0.5)
    assert [step for step, _ in fake.log] == ["apply", "undo"]  # not left applied until the timeout
    assert "the fault injector failed: RuntimeError('a bug')" in faults.problem
    faults.stop()
    assert [step for step, _ in fake.log] == ["apply", "undo"]


def test_a_shape_fault_shapes_what_the_node_receives_on_its_tap_and_what_it_sends_on_the_servers() -> None:
    entry = actions.shape("c.r001.a1.node1.2", "netlab", "tap-node1", "tap-server", "10.77.0.11", "both", 8).entry
    applied = [" ".join(command) for command in actions.shape_commands(entry, undo=False)]
    assert applied[0] == "qdisc replace dev tap-node1 root handle 5e: tbf rate 8000kbit burst 16384 latency 400ms"
    assert applied[1] == "qdisc add dev tap-server root handle 5e: htb"  # no default: other nodes pass
    assert applied[2] == "class add dev tap-server parent 5e: classid 5e:b htb rate 8000kbit ceil 8000kbit burst 16384"
    assert applied[3] == "qdisc add dev tap-server parent 5e:b bfifo limit 416384"
    assert (
        applied[4]
        == "filter add dev tap-server parent 5e: protocol ip prio 11 u32 match ip src 10.77.0.11/32 flowid 5e:b"
    )
    undone = [" ".join(command) for command in actions.shape_commands(entry, undo=True)]
    assert undone == [
        "qdisc del dev tap-node1 root handle 5e:",
        "filter del dev tap-server parent 5e: protocol ip prio 11",
        "class del dev tap-server classid 5e:b",
    ]


def test_a_drop_fault_is_a_table_of_its_own_that_matches_the_nodes_tap_only() -> None:
    script = drop_script("swaplab_fault_0123abcd", "tap-node1", "out", 12.5)
    assert script.startswith("table bridge swaplab_fault_0123abcd {")
    assert 'iifname "tap-node1" numgen random mod 10000 < 1250 counter drop' in script
    assert "oifname" not in script
    down = drop_script("swaplab_fault_0123abcd", "tap-node1", "both", None)
    assert 'iifname "tap-node1" counter drop' in down and 'oifname "tap-node1" counter drop' in down
    with pytest.raises(ValueError):
        drop_script("swaplab; flush ruleset", "tap-node1", "out", None)


# -- blame --------------------------------------------------------------------------------------


def record(**overrides: Any) -> FaultRecord:
    base: dict[str, Any] = {
        "index": 0,
        "kind": "server-stall",
        "target": "server",
        "node": "node1",
        "planned": "server-stall on server at +10 s for 5 s",
        "started_at": 1000.0,
        "ended_at": 1005.0,
        "grace_s": 30.0,
        "swap_out_mibps_before": 12.0,
        "recovery_s": 1.5,
    }
    return FaultRecord(**{**base, **overrides})


def event(kind: EventKind, at: float | None, line: int = 40) -> dict[str, Any]:
    return {"kind": kind.value, "line": line, "kernel_time_s": 30.0, "text": f"{kind.value} line", "host_time_s": at}


def test_messages_inside_a_window_are_excused_and_outside_are_not() -> None:
    fault = record()
    assert excused_by(event(EventKind.NFS_NOT_RESPONDING, 1003.0), [fault]) is fault
    assert excused_by(event(EventKind.HUNG_TASK, 1034.0), [fault]) is fault  # within the 30 s grace
    assert excused_by(event(EventKind.HUNG_TASK, 1036.0), [fault]) is None
    assert excused_by(event(EventKind.HUNG_TASK, 999.0), [fault]) is None
    assert excused_by(event(EventKind.HUNG_TASK, None), [fault]) is None  # no time: never excused
    assert excused_by(event(EventKind.OOPS, 1003.0), [fault]) is None  # an oops is never a fault's doing
    assert excused_by(event(EventKind.HUNG_TASK, 1003.0), [record(hung_task="fail")]) is None


def test_a_hung_task_longer_than_the_fault_and_its_grace_is_not_the_faults_doing() -> None:
    fault = record()  # 5 s and 30 s of grace: blocks of up to 35 s are the fault's doing

    def hung(seconds: int) -> dict[str, Any]:
        text = f"INFO: task kworker/0:1:52 blocked for more than {seconds} seconds."
        return {**event(EventKind.HUNG_TASK, 1030.0), "text": text}

    assert excused_by(hung(30), [fault]) is fault  # kernel.hung_task_timeout_secs = 30
    assert excused_by(hung(120), [fault]) is None  # the default 120 s: longer than the fault could block


def judged(events: list[dict[str, Any]], faults: list[FaultRecord], **extra: Any) -> Any:
    counts = {kind.value: sum(e["kind"] == kind.value for e in events) for kind in EventKind}
    result = NodeResult(
        run_id="r001",
        node="node1",
        samples=60,
        workload=WorkloadOutcome(exit_status=0, done=True, pages=98304, elapsed_s=60.0),
        console_events=events,
        console_event_counts=counts,
        faults=faults,
        **extra,
    )
    values = {**CLEAN, "no_hung_task": float(counts["hung_task"])}
    criteria = [judge_values(c, c.expr, [values.get(c.name, 0.0)]) for c in builtin_criteria(128)]
    return judge_node(result, criteria, faults)


def test_a_hung_task_during_a_stall_passes_as_recovered_and_the_same_outside_fails() -> None:
    inside = judged([event(EventKind.HUNG_TASK, 1010.0)], [record()])
    assert inside.verdict is Verdict.PASS, inside.reasons
    checks = {c.name: c for c in inside.checks}
    assert checks["fault_1"].detail.endswith("recovered 1.5 s after its end")
    assert checks["expected_messages"].outcome is Outcome.PASS
    [hung] = [c for c in inside.criteria if c.name == "no_hung_task"]
    assert hung.outcome is Outcome.PASS and "expected" in hung.detail
    outside = judged([event(EventKind.HUNG_TASK, 1100.0)], [record()])
    assert outside.verdict is Verdict.FAIL
    assert any(r.startswith("no_hung_task") for r in outside.reasons)


def test_a_fault_that_hit_nothing_or_never_started_makes_the_node_invalid() -> None:
    idle = judged([], [record(swap_out_mibps_before=0.0)])
    assert idle.verdict is Verdict.INVALID
    assert any("the fault hit nothing" in r for r in idle.reasons)
    missed = judged([], [record(started_at=None, ended_at=None, missed="the workload ended before +90 s")])
    assert missed.verdict is Verdict.INVALID and any("did not start" in r for r in missed.reasons)


def test_a_node_that_failed_after_a_fault_is_a_kernel_fail_naming_the_fault() -> None:
    failure = Failure(cause="kernel", phase="workload", reason="the node stopped answering for 120 s")
    hung = judged([], [record()], failure=failure)
    assert hung.verdict is Verdict.FAIL
    [check] = [c for c in hung.checks if c.name == "fault_1"]
    assert check.outcome is Outcome.FAIL and "did not recover" in check.detail


def test_a_fault_measured_on_another_node_says_so() -> None:
    outcome, detail = fault_outcome(record(node="node2"), "node1")
    assert outcome is Outcome.PASS and detail.endswith("(measured on node2)")


def test_validate_says_what_each_fault_will_do() -> None:
    done = CliRunner().invoke(main, ["validate", str(REPO / "campaigns" / "faults.yaml")])
    assert done.exit_code == 0, done.output
    assert (
        "  fault: server-stall on server after 24 MiB swapped out for 15 s (the run has the lab to itself)"
        in done.output
    )
    assert "  fault: server-restart on server after 240 MiB swapped out for 1 s" in done.output


class RestartingServer:
    """An NFS server that records its restarts; its stop fails when told to."""

    def __init__(self, stop_fails: bool = False) -> None:
        self.calls: list[str] = []
        self.stop_fails = stop_fails

    def stop_for_restart(self) -> None:
        self.calls.append("stop")
        if self.stop_fails:
            raise NfsServerError("ganesha.nfsd did not exit")

    def start_after_restart(self) -> None:
        self.calls.append("start")


def test_a_restart_stops_the_server_and_its_undo_starts_it_in_grace(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(actions, "JOURNAL_DIR", tmp_path / "faults")
    server = RestartingServer()
    action = actions.restart("c.r001.a1.node1.1", server)  # type: ignore[arg-type]
    action.apply()
    assert server.calls == ["stop"] and (tmp_path / "faults" / "c.r001.a1.node1.1.json").exists()
    action.undo()
    action.undo()  # once only
    assert server.calls == ["stop", "start"] and not list((tmp_path / "faults").iterdir())


def test_a_restart_whose_stop_fails_is_the_labs_fault_and_starts_the_server_again(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(actions, "JOURNAL_DIR", tmp_path / "faults")
    server = RestartingServer(stop_fails=True)
    with pytest.raises(actions.FaultActionError, match=r"restart of the NFS server failed: ganesha\.nfsd did not exit"):
        actions.restart("c.r001.a1.node1.1", server).apply()  # type: ignore[arg-type]
    assert server.calls == ["stop", "start"] and not list((tmp_path / "faults").iterdir())


def test_a_restart_a_dead_worker_left_is_forgotten_the_labs_next_run_starts_the_server(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(actions, "JOURNAL_DIR", tmp_path / "faults")
    entry = actions._Entry(action="restart", owner_pid=2**22 + 1, owner_start=1)  # no such worker
    actions._journal("dead.r001.a1.node1.1", entry)
    assert actions.undo_leftovers() == ["dead.r001.a1.node1.1 (restart)"]
    assert not list((tmp_path / "faults").iterdir())
