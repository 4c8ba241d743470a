"""swaplab-node's argument limits: what ``limits`` prints is model.limits, and is what it enforces.

The campaign model validates against model.limits; these tests keep that module equal to
the tool's own limits, and check the tool accepts each limit and refuses one step past it.
"""

from __future__ import annotations

import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from model.limits import NODE_TOOL_LIMITS
from tests.unit import test_node_tool as node_tool_tests

# The same compiled binary and runner as the tool's own tests (a fixture bound by name).
tool = node_tool_tests.tool
_run = node_tool_tests._run

# A moment in which a refused command has long exited: still running then means accepted.
SETTLE_S = 0.5


def _later() -> str:
    """A start instant a minute away: the hog maps its memory, then sleeps without touching it."""
    return str(time.time_ns() + 60 * 10**9)


# Each limit's argument on a command line with the value in place, and whether that command
# ends at once (exit 0) or keeps running (asleep before the hog's work, or sampling).
# hog_mib_max and hog_passes_max would take hours to run: they are given a later start.
COMMANDS: dict[str, tuple[Callable[[str], list[str]], bool]] = {
    "hog_mib_max": (lambda v: ["hog", "--mib", v, "--start-at", _later()], False),
    "hog_mib_min": (lambda v: ["hog", "--mib", v], True),
    "hog_passes_max": (lambda v: ["hog", "--mib", "1", "--passes", v, "--start-at", _later()], False),
    "hog_passes_min": (lambda v: ["hog", "--mib", "1", "--passes", v], True),
    "hog_seed_max": (lambda v: ["hog", "--mib", "1", "--seed", v], True),
    "hog_seed_min": (lambda v: ["hog", "--mib", "1", "--seed", v], True),
    "hog_start_at_max": (lambda v: ["hog", "--mib", "1", "--start-at", v], False),
    "hog_start_at_min": (lambda v: ["hog", "--mib", "1", "--start-at", v], True),
    "sample_interval_ms_max": (lambda v: ["sample", "--interval-ms", v], False),
    "sample_interval_ms_min": (lambda v: ["sample", "--interval-ms", v], False),
}


def _flag(name: str) -> str:
    """The flag a limit bounds: hog_start_at_max is hog's --start-at."""
    _subcommand, argument = name.rsplit("_", 1)[0].split("_", 1)
    return "--" + argument.replace("_", "-")


def _past(name: str) -> int:
    """One step outside the limit: above a maximum, below a minimum."""
    return NODE_TOOL_LIMITS[name] + (1 if name.endswith("_max") else -1)


def _run_briefly(tool: Path, args: list[str]) -> tuple[int | None, str, str]:
    """Exit status (None: still running after SETTLE_S, then killed), stdout, stderr."""
    proc = subprocess.Popen([str(tool), *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        time.sleep(SETTLE_S)
        status = proc.poll()
        if status is None:
            proc.kill()
    finally:
        stdout, stderr = proc.communicate(timeout=10)
    return status, stdout, stderr


def test_limits_prints_exactly_model_limits(tool: Path) -> None:
    out = _run(tool, "limits")
    assert out.returncode == 0, out.stderr
    assert out.stderr == ""
    pairs = [line.split(" ") for line in out.stdout.splitlines()]
    assert all(len(pair) == 2 and pair[1].isdigit() for pair in pairs), out.stdout
    names = [name for name, _ in pairs]
    assert names == sorted(names)
    assert {name: int(value) for name, value in pairs} == NODE_TOOL_LIMITS
    assert len(names) == len(NODE_TOOL_LIMITS)  # no name printed twice


def test_limits_takes_no_arguments(tool: Path) -> None:
    out = _run(tool, "limits", "extra")
    assert out.returncode == 2
    assert "usage" in out.stderr


def test_every_limit_has_a_command() -> None:
    assert set(COMMANDS) == set(NODE_TOOL_LIMITS)


@pytest.mark.parametrize("name", sorted(NODE_TOOL_LIMITS))
def test_limit_is_accepted(tool: Path, name: str) -> None:
    command, ends = COMMANDS[name]
    args = command(str(NODE_TOOL_LIMITS[name]))
    if ends:
        out = _run(tool, *args)
        assert out.returncode == 0, out.stderr
        assert out.stdout.splitlines()[-1].startswith("done "), out.stdout
        return
    status, stdout, stderr = _run_briefly(tool, args)
    if name == "hog_mib_max" and status == 1 and "mmap" in stderr:
        return  # past the argument check; this host will not map 1 TiB (overcommit policy)
    assert status is None, f"exited {status}: {stderr}"
    assert "usage" not in stderr
    if args[0] == "sample":
        assert stdout.startswith("@@ "), stdout[:200]  # ticked at once, then waits out the interval
    else:
        assert stdout == ""  # asleep until the start instant, nothing touched yet


@pytest.mark.parametrize("name", sorted(NODE_TOOL_LIMITS))
def test_one_past_limit_is_refused(tool: Path, name: str) -> None:
    command, _ends = COMMANDS[name]
    args = command(str(_past(name)))
    out = _run(tool, *args)
    assert out.returncode == 2, out.stdout[:200]
    assert out.stdout == ""
    assert f"{_flag(name)} needs an integer in" in out.stderr
    assert "usage" in out.stderr
