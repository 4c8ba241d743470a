"""A command that ends before the worker looks at its channel still counts as started:
only the start deadline's own close means the node did not answer (a real sshd)."""

from __future__ import annotations

import time

import paramiko
import pytest

from tests.integration.local_sshd import local_sshd_fixture, node_shell_fixture  # noqa: F401  (fixtures)
from workers.node_ssh import NodeShell, NodeUnreachable

pytestmark = [pytest.mark.integration, pytest.mark.timeout(60)]


def test_a_quick_command_the_node_closed_before_the_worker_looked_is_its_result(
    node_shell: NodeShell, monkeypatch: pytest.MonkeyPatch
) -> None:
    started = paramiko.Channel.exec_command

    def slow_to_look(channel: paramiko.Channel, command: str) -> None:
        started(channel, command)
        # A loaded worker: the node runs the command, sends its exit and closes the channel
        # before this thread runs again.
        deadline = time.monotonic() + 10
        while not channel.closed and time.monotonic() < deadline:
            time.sleep(0.01)
        assert channel.closed

    monkeypatch.setattr(paramiko.Channel, "exec_command", slow_to_look)
    result = node_shell.run("echo swapped on", timeout=20)
    assert (result.status, result.stdout.strip()) == (0, "swapped on")
    with_input = node_shell.run("true", timeout=20, stdin=b"ignored")
    assert with_input.status == 0


def test_a_command_that_does_not_start_within_its_deadline_is_an_unreachable_node(
    node_shell: NodeShell, monkeypatch: pytest.MonkeyPatch
) -> None:
    def never_answers(channel: paramiko.Channel, command: str) -> None:
        deadline = time.monotonic() + 10
        while not channel.closed and time.monotonic() < deadline:  # until the deadline closes it
            time.sleep(0.01)

    monkeypatch.setattr(paramiko.Channel, "exec_command", never_answers)
    with pytest.raises(NodeUnreachable, match="did not start within 1 s"):
        node_shell.open_channel("true", timeout=1)
