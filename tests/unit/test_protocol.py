"""The contract between the planes: every task the control plane sends is one the data
plane registers, names are written in one place, and a message says its version."""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import pytest

from model import protocol
from model.kernel import KernelSource
from model.runspec import RunSetupSpec

REPO = Path(__file__).resolve().parents[2]


def _registered(app_module: str) -> set[str]:
    """The task names a worker started as ``celery -A app_module`` knows (a fresh process:
    no other test's imports register anything on the app)."""
    code = (
        f"import json; from {app_module} import app; app.loader.import_default_modules(); "
        "print(json.dumps(sorted(app.tasks)))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=REPO).stdout
    return set(json.loads(out.strip().splitlines()[-1]))


def test_every_task_the_control_plane_sends_is_registered_by_a_lab_worker() -> None:
    registered = _registered("workers.app")
    assert set(protocol.SENT_TO_DATA_PLANE) <= registered, set(protocol.SENT_TO_DATA_PLANE) - registered
    assert not set(protocol.CONTROL_TASKS) & registered  # a lab's worker never loads the control plane


def test_the_control_worker_registers_its_own_tasks_and_the_data_planes() -> None:
    assert set(protocol.CONTROL_TASKS) | set(protocol.SENT_TO_DATA_PLANE) <= _registered("orchestrator.app")


def _string_constants(path: Path) -> list[tuple[int, str]]:
    tree = ast.parse(path.read_text(), filename=str(path))
    return [
        (node.lineno, node.value)
        for node in ast.walk(tree)
        if isinstance(node, ast.Constant) and isinstance(node.value, str)
    ]


def test_task_names_are_written_only_in_the_protocol_module() -> None:
    names = set(protocol.SENT_TO_DATA_PLANE) | set(protocol.CONTROL_TASKS) | {protocol.BENCH_BARRIER}
    found = [
        f"{path.relative_to(REPO)}:{line}"
        for folder in ("orchestrator", "workers", "model", "bench")
        for path in sorted((REPO / folder).rglob("*.py"))
        if path != REPO / "model" / "protocol.py"
        for line, text in _string_constants(path)
        if text in names
    ]
    assert not found, found


@pytest.mark.parametrize(
    ("message", "says"),
    [
        ({"protocol": protocol.PROTOCOL_VERSION + 1}, "protocol version 2"),
        ({}, "no protocol version"),
        ({"protocol": "1"}, "protocol version 1"),  # a string is not our version
        ({"protocol": True}, "protocol version True"),
    ],
)
def test_another_version_is_named_as_skew(message: dict[str, object], says: str) -> None:
    reason = protocol.version_skew(message)
    assert reason is not None and reason.startswith("version skew") and says in reason


def test_a_message_made_here_speaks_this_version() -> None:
    spec = RunSetupSpec(
        campaign="c-20261202-120000-abcd", run_id="r001", lab="local", kernel=KernelSource(package="linux-image-amd64")
    )
    dumped = spec.model_dump(mode="json")
    assert dumped["protocol"] == protocol.PROTOCOL_VERSION and protocol.version_skew(dumped) is None


def test_states_are_the_enums_values() -> None:
    from model.state import CAMPAIGN_STATES, RUN_STATES, TERMINAL

    assert "provisioning" in RUN_STATES and "skipped" not in CAMPAIGN_STATES
    assert {"done", "cancelled", "skipped"} == {str(state) for state in TERMINAL}
    with pytest.raises(protocol.UnknownStatus):
        protocol.run_status("runnning")
