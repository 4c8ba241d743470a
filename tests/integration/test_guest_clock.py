"""On guest time the worker places the workload in host time by when it read the
workload's lines, never by the node's own clock (which runs at the guest's pace)."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from tests.integration.local_sshd import local_sshd_fixture, node_shell_fixture  # noqa: F401  (fixtures)
from workers.coordination.streams import WorkloadStream
from workers.node_ssh import NodeShell

pytestmark = [pytest.mark.integration, pytest.mark.timeout(60)]


def test_the_workloads_host_window_is_when_the_worker_saw_it_start_and_end(
    node_shell: NodeShell, tmp_path: Path
) -> None:
    # A node whose clock is 100 s ahead and says the 1 s it ran took 2.4 s (guest time).
    script = "echo started 1100000000000; sleep 1; echo done pages=3 bad=0 elapsed_ns=2400000000"
    before = time.time_ns()
    stream = WorkloadStream(node_shell.open_channel(script), tmp_path / "workload.log")
    assert stream.wait(time.monotonic() + 30, on_tick=lambda: None, stop=lambda: False)
    after = time.time_ns()
    guest = stream.outcome(start_at_host_ns=0, clock_offset_ns=100 * 10**9, guest_clock=True)
    assert guest.started_seen_host_ns is not None and guest.done_seen_host_ns is not None
    assert before <= guest.started_seen_host_ns < guest.done_seen_host_ns <= after
    assert 0.9 < (guest.done_seen_host_ns - guest.started_seen_host_ns) / 1e9 < 5
    assert guest.started_host_ns == guest.started_seen_host_ns and guest.elapsed_s == 2.4
    window = guest.host_window_s(guest_clock=True)
    assert window == (guest.started_seen_host_ns / 1e9, guest.done_seen_host_ns / 1e9)
    # Host time: the node's stamp translated by the offset, as before.
    host = stream.outcome(start_at_host_ns=0, clock_offset_ns=100 * 10**9)
    assert host.started_host_ns == 1_000 * 10**9
