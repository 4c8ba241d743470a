"""Provisioning a lab's long-lived hosts with Ansible, through ansible-runner's Python API.

A lab's servers (its kernel NFS server, later its boot server) are configured by the
playbooks in ``playbooks/``, once per lab start: never per run or per node (Ansible
costs tens of seconds a run under TCG). ``run_playbook`` runs one playbook against an
inventory given as data and answers with what it did:

* **progress**: each task's start and each host's result become one line each for the
  caller's progress stream (the task's name, the host, ok / changed / failed / skipped);
* **artifacts**: ansible-runner's artifacts (stdout, job events, status) are kept in the
  lab's log directory under a name per run (the environment ansible-runner records in
  ``command`` reduced to its variables' names: the worker's holds credentials); the
  private data directory that held the inventory and the variables is a temporary one,
  removed afterwards, so a secret passed as a variable is not left on disk by us. A task that handles a secret is marked
  ``no_log`` in its playbook, and Ansible then censors its results in every event;
* **failure**: a failed or unreachable host is a ``ProvisionError`` naming the host, the
  task and Ansible's message, the lab's fault (an infra-error), never a test verdict;
* **changes**: the number of changed results, so a second run can show it changed nothing.

Nothing reaches the inventory unchecked: the caller builds it from the validated lab
model, and this module only refuses names Ansible would read as patterns.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import shutil
import sys
import tempfile
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import ansible_runner

Progress = Callable[[str], None]
# Host and group names Ansible takes literally: no pattern characters (``*``, ``:``, ``!``).
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,62}")
# Failure messages are Ansible's; the first lines say what went wrong, the rest is noise.
MESSAGE_MAX = 600
_RESULT = {
    "runner_on_ok": "ok",
    "runner_on_failed": "failed",
    "runner_on_unreachable": "unreachable",
    "runner_on_skipped": "skipped",
}


class ProvisionError(RuntimeError):
    """A playbook did not complete: the lab's fault, naming host, task and message."""


@dataclass(frozen=True)
class TaskFailure:
    """One host's failed (or unreachable) task."""

    host: str
    task: str
    message: str

    def __str__(self) -> str:
        return f"{self.host}: task {self.task!r}: {self.message}"


@dataclass
class PlaybookRun:
    """What a playbook run did (filled from its events as they come)."""

    playbook: str
    artifacts: Path
    status: str = "unstarted"
    rc: int | None = None
    seconds: float = 0.0
    changed: int = 0
    ok: int = 0
    failures: list[TaskFailure] = field(default_factory=list)

    @property
    def successful(self) -> bool:
        return self.status == "successful" and not self.failures


def run_playbook(
    playbook: Path,
    inventory: Mapping[str, Any],
    artifacts: Path,
    extravars: Mapping[str, Any] | None = None,
    progress: Progress = lambda line: None,
    envvars: Mapping[str, str] | None = None,
) -> PlaybookRun:
    """Run ``playbook`` against ``inventory`` (Ansible's YAML inventory as a dict).

    ``artifacts``: the directory ansible-runner's artifacts are kept in (one sub-directory
    per run). Raises ProvisionError when a host failed or was unreachable, or when Ansible
    did not complete; the returned run otherwise.
    """
    check_inventory(inventory)
    artifacts.mkdir(parents=True, exist_ok=True, mode=0o700)
    # Two runs in one second (a retry) must not share a directory.
    ident = f"{playbook.stem}-{time.strftime('%Y%m%d-%H%M%S')}-{secrets.token_hex(3)}"
    outcome = PlaybookRun(playbook=playbook.name, artifacts=artifacts / ident)
    private = Path(tempfile.mkdtemp(prefix="swaplab-ansible-"))  # 0700: holds the variables
    began = time.monotonic()
    try:
        runner = ansible_runner.run(
            private_data_dir=str(private),
            artifact_dir=str(artifacts),
            ident=ident,
            project_dir=str(playbook.resolve().parent),
            playbook=playbook.name,
            inventory=dict(inventory),
            extravars=dict(extravars or {}),
            envvars={
                **_QUIET_ENV,
                "PATH": _path_with_ansible(),
                **(envvars or {}),
                **_CHECKED_ENV,
                # ssh's connection master lives with this run: a later run (perhaps to
                # another machine at the same address) opens its own and checks its host key.
                "ANSIBLE_SSH_CONTROL_PATH_DIR": str(private / "cp"),
            },
            event_handler=lambda event: _on_event(event, outcome, progress),
            # Without a cancel callback of its own, ansible-runner takes over SIGTERM and
            # SIGINT in the main thread for the rest of the process: a later Ctrl-C or
            # SIGTERM would be swallowed, and would cancel the next playbook instead.
            cancel_callback=lambda: False,
            quiet=True,
        )
    finally:
        shutil.rmtree(private, ignore_errors=True)
        _drop_environment(outcome.artifacts / "command")
    outcome.seconds = time.monotonic() - began
    outcome.status, outcome.rc = str(runner.status), runner.rc
    if outcome.failures:
        raise ProvisionError(_failed(outcome))
    if outcome.status != "successful":
        tail = _tail(outcome.artifacts / "stdout")
        raise ProvisionError(f"playbook {outcome.playbook} {outcome.status} (rc {outcome.rc}): {tail}")
    return outcome


# Ansible's own output settings: no cows, no colour codes in the kept stdout, no retry files.
# And host keys checked: ansible-runner turns Ansible's host key checking off unless told
# otherwise, and Ansible then puts StrictHostKeyChecking=no first on ssh's command line,
# where it beats the =yes of the inventory's ssh arguments (ssh takes an option's first value).
_QUIET_ENV = {
    "ANSIBLE_NOCOWS": "1",
    "ANSIBLE_NOCOLOR": "1",
    "ANSIBLE_RETRY_FILES_ENABLED": "0",
}
_CHECKED_ENV = {"ANSIBLE_HOST_KEY_CHECKING": "True"}  # last: no caller turns it off


def _path_with_ansible() -> str:
    """PATH with ansible-playbook's directory first: the one installed beside this Python
    (the project's dependency), which a worker finds even when its virtualenv's bin is not
    on its PATH. ansible-runner's own ``binary`` would make it run the command raw."""
    beside = Path(sys.executable).with_name("ansible-playbook")
    found = str(beside) if beside.is_file() else shutil.which("ansible-playbook")
    if found is None:
        raise ProvisionError("ansible-playbook is not installed (scripts/setup installs ansible-core)")
    return os.pathsep.join([str(Path(found).parent), os.environ.get("PATH", os.defpath)])


def _drop_environment(command: Path) -> None:
    """Keep the command ansible-runner ran, not the environment it records beside it: the
    worker's environment holds its service credentials (a database URL, a Redis password)."""
    try:
        recorded = json.loads(command.read_text())
    except (OSError, ValueError):
        return
    if isinstance(recorded, dict) and "env" in recorded:
        recorded["env"] = sorted(recorded["env"]) if isinstance(recorded["env"], dict) else None
        command.write_text(json.dumps(recorded))


def check_inventory(inventory: Mapping[str, Any]) -> None:
    """Refuse host and group names Ansible would read as patterns or paths."""
    for group, body in inventory.items():
        _check_name("group", group)
        if not isinstance(body, Mapping):
            raise ValueError(f"inventory group {group}: expected a mapping, not {type(body).__name__}")
        for host in body.get("hosts") or {}:
            _check_name("host", host)
        check_inventory(body.get("children") or {})


def _check_name(what: str, name: object) -> None:
    if not isinstance(name, str) or not _NAME.fullmatch(name):
        raise ValueError(f"inventory {what} name {name!r}: letters, digits, '_', '.', '-' only")


def _on_event(event: Mapping[str, Any], outcome: PlaybookRun, progress: Progress) -> bool:
    """Count and report one ansible-runner event; True keeps it in the artifacts."""
    kind, data = event.get("event"), event.get("event_data") or {}
    if kind == "playbook_on_task_start":
        progress(f"ansible: task {data.get('task', '?')}")
    elif kind in _RESULT:
        _on_result(_RESULT[kind], data, outcome, progress)
    return True


def _on_result(result: str, data: Mapping[str, Any], outcome: PlaybookRun, progress: Progress) -> None:
    host, task = str(data.get("host", "?")), str(data.get("task", "?"))
    res = data.get("res") or {}
    if result == "ok" and res.get("changed"):
        result = "changed"
        outcome.changed += 1
    elif result == "ok":
        outcome.ok += 1
    elif result in ("failed", "unreachable") and not data.get("ignore_errors"):
        outcome.failures.append(TaskFailure(host, task, _message(res)))
    progress(f"ansible: {host}: {result}: {task}")


def _message(res: Mapping[str, Any]) -> str:
    """Ansible's reason, first what it says, then a command's stderr; bounded."""
    parts = [str(res.get(key)).strip() for key in ("msg", "stderr") if res.get(key)]
    return (" | ".join(parts) or "no message")[:MESSAGE_MAX]


def _failed(outcome: PlaybookRun) -> str:
    first, more = outcome.failures[0], len(outcome.failures) - 1
    also = f" (and {more} more)" if more else ""
    return f"playbook {outcome.playbook} failed on {first}{also}; log: {outcome.artifacts / 'stdout'}"


def _tail(path: Path, lines: int = 5) -> str:
    try:
        text = path.read_text(errors="replace").strip().splitlines()
    except OSError:
        return "no output"
    return " / ".join(text[-lines:])[:MESSAGE_MAX] or "no output"
