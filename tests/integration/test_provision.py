"""Provisioning through ansible-runner's Python API, with real Ansible on this machine.

The playbook (tests/fixtures/playbooks/provision-check.yml) runs against one host with
``ansible_connection: local`` into a temporary directory: the first run changes things,
the second changes nothing; a task's failure is a ProvisionError naming host, task and
message; a secret handled by a ``no_log`` task, or in the worker's environment, is nowhere in the
kept artifacts; every
task and result became a progress line.
"""

from __future__ import annotations

import hashlib
import signal
import sys
from pathlib import Path
from typing import Any

import pytest

from workers.lab.provision import ProvisionError, check_inventory, run_playbook

pytestmark = [pytest.mark.integration, pytest.mark.timeout(180)]

PLAYBOOK = Path(__file__).resolve().parents[1] / "fixtures" / "playbooks" / "provision-check.yml"
SECRET = "s3cret-lab-token-1f2e"


def inventory() -> dict[str, Any]:
    host = {"ansible_connection": "local", "ansible_python_interpreter": sys.executable}
    return {"lab_servers": {"hosts": {"nfs1": host}}}


def test_a_second_run_changes_nothing_and_the_secret_stays_hidden(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A credential in the worker's environment, as a service's password would be.
    monkeypatch.setenv("SWAPLAB_CHECK_PASSWORD", SECRET)
    target, artifacts, lines = tmp_path / "target", tmp_path / "artifacts", []
    target.mkdir()
    variables = {"check_dir": str(target), "check_secret": SECRET}

    first = run_playbook(PLAYBOOK, inventory(), artifacts, variables, progress=lines.append)
    second = run_playbook(PLAYBOOK, inventory(), artifacts, variables)

    assert first.successful and (first.changed, first.ok) == (2, 0), first
    assert second.successful and (second.changed, second.ok) == (0, 2), second
    assert (target / "marker").read_text() == "provisioned\n"
    assert (target / "secret-hash").read_text() == hashlib.sha256(SECRET.encode()).hexdigest() + "\n"
    assert "ansible: task Write the marker file" in lines and "ansible: nfs1: changed: Use the secret" in lines
    # The artifacts are kept, per run; the secret is in none of them (nor its hash).
    kept = [path for path in artifacts.rglob("*") if path.is_file()]
    assert {first.artifacts, second.artifacts} <= {path.parent for path in kept} | {p.parent.parent for p in kept}
    assert (first.artifacts / "stdout").is_file()
    for path in kept:
        text = path.read_text(errors="replace")
        assert SECRET not in text and hashlib.sha256(SECRET.encode()).hexdigest() not in text, path


def test_a_failed_task_names_host_task_and_message(tmp_path: Path) -> None:
    target = tmp_path / "target"
    target.mkdir()
    variables = {"check_dir": str(target), "check_secret": SECRET, "check_fail": True}
    with pytest.raises(ProvisionError) as failed:
        run_playbook(PLAYBOOK, inventory(), tmp_path / "artifacts", variables)
    message = str(failed.value)
    # marker is a file: a directory below it cannot be made.
    assert "nfs1: task 'Create the export directory'" in message, message
    assert "marker" in message and "stdout" in message, message


def test_an_unreachable_host_is_a_provision_error(tmp_path: Path) -> None:
    host = {"ansible_host": "127.0.0.1", "ansible_port": 9, "ansible_user": "nobody"}
    unreachable = {"lab_servers": {"hosts": {"gone": {**host, "ansible_ssh_common_args": "-o ConnectTimeout=3"}}}}
    with pytest.raises(ProvisionError, match="gone: task 'Write the marker file'"):
        run_playbook(PLAYBOOK, unreachable, tmp_path / "artifacts", {"check_dir": "/nonexistent", "check_secret": "x"})


@pytest.mark.parametrize("name", ["all:!x", "web*", "../etc", ""])
def test_names_ansible_would_read_as_patterns_are_refused(name: str) -> None:
    with pytest.raises(ValueError, match="letters, digits"):
        check_inventory({"lab_servers": {"hosts": {name: {}}}})


def test_a_playbook_leaves_the_processs_signal_handlers_as_they_were(tmp_path: Path) -> None:
    # ansible-runner would install its own SIGTERM/SIGINT handlers in the main thread for
    # good: Ctrl-C and SIGTERM swallowed afterwards, the next playbook "canceled".
    before = {sig: signal.getsignal(sig) for sig in (signal.SIGTERM, signal.SIGINT)}
    target = tmp_path / "target"
    target.mkdir()
    run_playbook(PLAYBOOK, inventory(), tmp_path / "artifacts", {"check_dir": str(target), "check_secret": "x"})
    assert {sig: signal.getsignal(sig) for sig in before} == before
