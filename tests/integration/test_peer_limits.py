"""A node that misbehaves on purpose, over a real SSH connection (dropbear on 127.0.0.1,
``tests/integration/local_sshd.py``): what it sends costs bounded memory and disk, and
when it goes silent every conversation ends by its deadline with the verdict the evidence
rules give.

The "node tool" of each test is a small script that does what a hostile or broken node
would: print megabytes without a newline, never answer the clock exchange, freeze its
whole SSH session.
"""

from __future__ import annotations

import os
import signal
import time
import tracemalloc
from pathlib import Path

import pytest

from model.campaign import NfsSpec
from model.faults import FaultTimes
from model.kernel import KernelSource
from model.lab import Lab, NodeConfig
from model.runspec import NodeResult, NodeRunSpec, PreparedKernel, WorkloadRef
from tests.integration.local_sshd import LocalSshd, local_sshd_fixture, node_shell_fixture  # noqa: F401  (fixtures)
from workers.coordination.streams import SamplerStream, WorkloadStream
from workers.drivers.base import MachineState
from workers.node_ssh import MAX_STDOUT_BYTES, NodeShell
from workers.pipeline import swap_steps
from workers.pipeline.context import NodeContext
from workers.pipeline.step import KernelFault, LabFault

pytestmark = [pytest.mark.integration, pytest.mark.timeout(60)]

FLOOD_BYTES = 16 * 1024 * 1024  # sent without a newline; the old readers held all of it, twice
MEMORY_BOUND = 8 * 1024 * 1024  # Python allocations while it streams (paramiko's 2 MiB window included)
TICK = "@@ 1000 2000\n## /proc/vmstat\npswpout 5\npswpin 7\n@@end\n"


@pytest.fixture
def shell(node_shell: NodeShell) -> NodeShell:
    return node_shell


def _tool(tmp_path: Path, body: str) -> str:
    """A stand-in for swaplab-node on the "node" (this host): a shell script."""
    tool = tmp_path / "swaplab-node"
    tool.write_text(f"#!/bin/sh\n{body}\n")
    tool.chmod(0o755)
    return str(tool)


def _flood(then: str) -> str:
    return f"head -c {FLOOD_BYTES} /dev/zero | tr '\\0' x; printf '{then}'"


def test_a_sampler_that_never_sends_a_newline_costs_one_line(shell: NodeShell, tmp_path: Path) -> None:
    tracemalloc.start()
    try:
        stream = SamplerStream(
            shell.open_channel(_flood("\\n" + TICK.replace("\n", "\\n"))), tmp_path / "samples.jsonl"
        )
        assert stream.wait_for_first(timeout_s=30), "the tick after the flood was not parsed"
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    stream.close()
    assert stream.received > FLOOD_BYTES
    [record] = stream.records()
    assert record["pswpout"] == 5 and record["pswpin"] == 7
    assert peak < MEMORY_BOUND, f"{peak / 2**20:.1f} MiB held for a line without end"
    assert (tmp_path / "samples.jsonl").stat().st_size < 1000  # the flood is not a sample


def test_a_workload_that_floods_without_newlines_is_read_within_bounds(shell: NodeShell, tmp_path: Path) -> None:
    log = tmp_path / "workload.log"
    tracemalloc.start()
    try:
        stream = WorkloadStream(shell.open_channel(_flood("\\ndone pages=3 bad=0 elapsed_ns=2000000000\\n")), log)
        finished = stream.wait(time.monotonic() + 40, on_tick=lambda: None, stop=lambda: False)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    outcome = stream.outcome(0, 0)
    assert finished and outcome.done and outcome.pages == 3 and outcome.elapsed_s == 2.0
    assert peak < MEMORY_BOUND, f"{peak / 2**20:.1f} MiB held for a line without end"
    kept = log.read_bytes()
    assert len(kept) < 8192 and f"[swaplab: line cut, {FLOOD_BYTES - 4096} bytes left out]".encode() in kept
    assert kept.endswith(b"done pages=3 bad=0 elapsed_ns=2000000000\n")


def test_a_command_that_floods_its_output_is_cut(shell: NodeShell) -> None:
    done = shell.run("head -c 5000000 /dev/zero | tr '\\0' y", timeout=30)
    assert done.ok
    assert len(done.stdout) < MAX_STDOUT_BYTES + 100 and done.stdout.endswith("more bytes of output not kept]")


def test_a_clock_serve_that_never_answers_fails_the_step_within_its_deadline(shell: NodeShell, tmp_path: Path) -> None:
    ctx = _context(tmp_path, shell, _tool(tmp_path, "exec cat >/dev/null"))  # reads, never answers
    started = time.monotonic()
    with pytest.raises(LabFault, match=r"clock: clock-serve on root@127\.0\.0\.1:\d+ did not answer"):
        swap_steps.ClockStep().run(ctx, deadline=started + 1.0)
    assert time.monotonic() - started < 4.0
    assert ctx.result.clock_offset_ns is None and not ctx.unreachable  # the node itself still answers


def test_a_node_that_freezes_in_clock_serve_is_judged_hung_within_the_deadline(
    shell: NodeShell, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(swap_steps, "CLOCK_ALIVE_PROBE_S", 1.0)
    session_pid = tmp_path / "session.pid"
    # The tool stops the node's SSH session process: from now on nothing on it answers.
    tool = _tool(tmp_path, f"echo $PPID > {session_pid}; kill -STOP $PPID; exec cat >/dev/null")
    ctx = _context(tmp_path, shell, tool)
    started = time.monotonic()
    try:
        with pytest.raises(KernelFault, match="stopped answering while its machine and the NFS server were up"):
            swap_steps.ClockStep().run(ctx, deadline=started + 1.0)
        assert time.monotonic() - started < 5.0
        assert ctx.unreachable
    finally:
        if session_pid.exists():  # the frozen dropbear session: a process this test made
            os.kill(int(session_pid.read_text()), signal.SIGKILL)


def test_a_clock_serve_that_sends_an_endless_line_is_refused(shell: NodeShell, tmp_path: Path) -> None:
    tool = _tool(tmp_path, "head -c 1000 /dev/zero | tr '\\0' 7; exec cat >/dev/null")
    started = time.monotonic()
    with pytest.raises(ValueError, match="more than 64 bytes without a newline"):
        shell.clock_offset(tool, timeout_s=5.0)
    assert time.monotonic() - started < 7.0


# -- a node context around the real shell -------------------------------------------------------


class _RunningMachine:
    """A driver whose machine the lab sees running (a QEMU process that still lives)."""

    def machine_state(self) -> MachineState:
        return MachineState.RUNNING

    def exit_reason(self) -> str | None:
        return None


class _Quiet:
    def phase(self, node: str, phase: str, detail: str = "") -> None: ...

    def swap(self, node: str, out_mib: float, in_mib: float, note: str = "") -> None: ...

    def abort(self, node: str, reason: str) -> None: ...

    def broken(self) -> str | None:
        return None

    def arrive_and_wait(self, node: str, timeout_s: float) -> int:
        raise AssertionError("no barrier here")

    def note_fault(self, index: int, times: FaultTimes) -> bool:
        return True

    def fault_times(self) -> dict[int, FaultTimes]:
        return {}


def _context(tmp_path: Path, shell: NodeShell, tool: str) -> NodeContext:
    node = NodeConfig("node1", "lab", "qemu", 256, 1, "127.0.0.1", 1, {})
    lab = Lab("lab", tmp_path / "lab.yml", "fake", {}, (node,))
    spec = NodeRunSpec(
        campaign="peer-20260101-000000-abcd",
        run_id="r001",
        attempt=1,
        lab="lab",
        node="node1",
        ram_mib=256,
        cpus=1,
        kernel=KernelSource(package="linux-image-amd64"),
        prepared=PreparedKernel(package="p", version="v", kver="6.1.0-1-amd64", source="s", image_hash="0" * 64),
        nfs=NfsSpec(version="4.1", mount_options=[]),
        swap_mib=64,
        workload=WorkloadRef(name="w", mib=64, passes=1, timeout_s=60, seed=1),
        planned_overcommit_mib=64,
        boot_timeout_s=5,
    )
    quiet, machine = _Quiet(), _RunningMachine()
    result = NodeResult(run_id="r001", node="node1")
    ctx = NodeContext(spec, quiet, quiet, lambda: False, lab, node, machine, result, tmp_path / "node")  # type: ignore[arg-type]
    ctx.shell, ctx.tool = shell, tool
    return ctx
