"""Trust boundaries with the real pieces: a password-protected redis-server, a real Celery
worker serving one lab from its own inventory, and messages written straight into Redis
by someone who is not swaplab.

Nothing a message says may make a worker run a program, touch another lab, bind an
address or read a file the lab did not allow: each such message makes its run invalid,
and the program it names never runs (it would leave a marker file).
"""

from __future__ import annotations

import json
import os
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
from celery import Celery

from model import protocol
from model.campaign import Campaign, campaign_to_json, load_campaign
from model.state import campaign_key, celery_url, node_key, run_key
from orchestrator.planner import plan_runs
from orchestrator.reports import FILES as REPORT_FILES
from orchestrator.services import LocalRedis, LocalWorker
from orchestrator.store import CampaignStore
from tests.conftest import require_tools

pytestmark = [pytest.mark.integration, pytest.mark.timeout(300)]
REPO = Path(__file__).resolve().parents[2]
E2E_LAB = REPO / "tests" / "fixtures" / "labs" / "e2e.yml"
PROBE_USER = "swaplab-probe"


class Stack:
    """redis-server with its generated password, and one control + lab.e2e worker."""

    def __init__(self, tmp: Path) -> None:
        (tmp / "redis").mkdir()
        self.redis = LocalRedis(data_dir=tmp / "redis")
        self.tmp = tmp
        self.env = {
            **os.environ,
            "SWAPLAB_REDIS_URL": f"unix://{self.redis.socket}?db=0",
            "SWAPLAB_REDIS_PASSWORD_FILE": str(self.redis.password_file),
            "SWAPLAB_RESULTS": str(tmp / "results"),
            "SWAPLAB_LABS": str(E2E_LAB),
            "SWAPLAB_PROMETHEUS_SD_DIR": str(tmp / "targets"),
        }
        self.worker = LocalWorker(["control", "lab.e2e"], 3, tmp / "worker.log", name="trust", env=self.env)

    def client(self) -> redis.Redis:
        return self.redis.client(decode_responses=True)

    def send(self, task: str, args: list[Any], queue: str) -> None:
        """A message put in a queue by someone else than swaplab (a Celery client of their own)."""
        sender = Celery("outsider", broker=celery_url(self.redis.url))
        sender.conf.update(task_serializer="json", broker_connection_retry_on_startup=True)
        sender.send_task(task, args=args, queue=queue)


@pytest.fixture(scope="module", name="stack")
def stack_fixture(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    require_tools(("redis-server",))
    the_stack = Stack(tmp_path_factory.mktemp("trust"))
    the_stack.redis.start()
    yield the_stack
    the_stack.worker.stop()
    the_stack.redis.stop()


def _campaign(tmp: Path) -> Campaign:
    path = tmp / "short.yaml"
    path.write_text((REPO / "tests/fixtures/campaigns/short.yaml").read_text().replace("../labs/e2e.yml", str(E2E_LAB)))
    return load_campaign(path)


def _marker_program(tmp: Path) -> tuple[Path, Path]:
    marker = tmp / "the-message-ran-me"
    program = tmp / "evil.sh"
    program.write_text(f"#!/bin/sh\ntouch {marker}\n")
    program.chmod(0o755)
    return program, marker


def _wait_for(condition: Any, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.2)


def test_another_user_cannot_reach_the_embedded_redis_even_with_its_password(stack: Stack) -> None:
    if os.geteuid() != 0:
        pytest.skip("making a second user needs root")
    subprocess.run(["useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin", PROBE_USER], check=False)
    probe = ["runuser", "-u", PROBE_USER, "--", "env", f"REDISCLI_AUTH={stack.redis.password}", "redis-cli"]
    with_password = subprocess.run(
        [*probe, "-s", str(stack.redis.socket), "ping"], capture_output=True, text=True, timeout=30
    )
    assert "Permission denied" in with_password.stdout + with_password.stderr
    written = subprocess.run(
        [*probe, "-s", str(stack.redis.socket), "set", "swaplab:campaigns", "x"],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert "Permission denied" in written.stdout + written.stderr
    assert stack.client().get("swaplab:campaigns") is None
    peek = subprocess.run(
        ["runuser", "-u", PROBE_USER, "--", "cat", str(stack.redis.password_file)], capture_output=True, text=True
    )
    assert peek.returncode != 0 and "Permission denied" in peek.stderr
    assert oct(stack.redis.password_file.stat().st_mode & 0o777) == "0o600"
    assert oct(stack.redis.data_dir.stat().st_mode & 0o777) == "0o700"
    # No TCP listener at all: nothing of the server's is on the network, loopback included.
    pid = stack.redis.pid()
    assert pid is not None
    sockets = {os.readlink(fd) for fd in Path(f"/proc/{pid}/fd").iterdir() if os.readlink(fd).startswith("socket:")}
    inodes = {int(link[8:-1]) for link in sockets}
    tcp = [
        line.split() for table in ("tcp", "tcp6") for line in Path(f"/proc/net/{table}").read_text().splitlines()[1:]
    ]
    assert not [fields for fields in tcp if int(fields[9]) in inodes]
    assert stack.redis.password not in (stack.tmp / "redis" / "redis.log").read_text()


def test_a_stored_campaign_carrying_a_program_is_refused_before_anything_runs(stack: Stack) -> None:
    """Written straight into Redis: the lab part names a QEMU binary of the writer's choice."""
    program, marker = _marker_program(stack.tmp)
    campaign = _campaign(stack.tmp)
    cid = "evil-20261129-120000-abcd"
    store = CampaignStore(stack.client())
    store.create(cid, campaign, plan_runs(campaign))
    data = campaign_to_json(campaign)
    data["lab"]["qemu_binary"] = str(program)
    stack.client().hset(campaign_key(cid), "campaign", json.dumps(data))
    stack.worker.start(stack.redis.client())  # a starting control worker resumes unfinished campaigns
    _wait_for(lambda: store.campaign(cid).status == "done")
    result = store.campaign(cid).result
    assert (result["verdict"], result["exit_code"]) == ("invalid", 4)
    reason = result["runs"][0]["reasons"][0]
    assert "does not validate" in reason and "qemu_binary" in reason
    assert not marker.exists()
    # Only the campaign's result (and its reports, which the control worker's sinks write
    # after "done", whenever they get to it): no run or node directory, nothing set up, nothing booted.
    assert {p.name for p in (stack.tmp / "results" / cid).iterdir()} - set(REPORT_FILES.values()) == {"result.json"}


def _node_message(tmp: Path, cid: str, **changes: Any) -> dict[str, Any]:
    message: dict[str, Any] = {
        "protocol": protocol.PROTOCOL_VERSION,
        "campaign": cid,
        "run_id": "r001",
        "attempt": 1,
        "lab": "e2e",
        "node": "node1",
        "ram_mib": 256,
        "cpus": 1,
        "sysctl": {},
        "kernel": {"package": "linux-image-amd64"},
        "prepared": None,
        "nfs": {"version": "4.1", "mount_options": ["hard"]},
        "swap_mib": 512,
        "workload": {"name": "short", "mib": 320, "passes": 1, "timeout_s": 60, "seed": 1},
        "planned_overcommit_mib": 64,
        "boot_timeout_s": 60,
    }
    message.update(changes)
    return message


@pytest.mark.parametrize(
    ("case", "changes", "says"),
    [
        ("program", {"options": "PROGRAM"}, "options"),
        ("another lab", {"lab": "other"}, "does not serve lab 'other'"),
        ("bind address", {"nfs_settings": {"bind": "0.0.0.0", "port": 2049}}, "nfs_settings"),
        ("kernel file", {"kernel": {"deb": "/etc/passwd"}}, "takes no local kernel files"),
        ("result directory", {"result_dir": "/etc"}, "result_dir"),
    ],
)
def test_a_node_task_message_the_worker_cannot_trust_runs_nothing(
    stack: Stack, case: str, changes: dict[str, Any], says: str
) -> None:
    if not stack.worker.proc:
        stack.worker.start(stack.redis.client())
    program, marker = _marker_program(stack.tmp)
    if changes.get("options") == "PROGRAM":
        changes = {"options": {"qemu_binary": str(program)}}
    cid = f"msg{abs(hash(case)) % 1000:03d}-20261129-120000-abcd"
    client = stack.client()
    client.hset(
        run_key(cid, "r001"), mapping={"run_id": "r001", "attempt": 1, "status": "provisioning", "nodes": '["node1"]'}
    )
    # The node queued for attempt 1, as the scheduler leaves it before it sends the task.
    client.hset(node_key(cid, "r001", "node1"), mapping={"attempt": 1, "status": "queued", "owner": "", "result": ""})
    stack.send(protocol.RUN_NODE, [_node_message(stack.tmp, cid, **changes), cid, "r001", 1], "lab.e2e")
    _wait_for(lambda: client.hget(node_key(cid, "r001", "node1"), "result"))
    result = json.loads(client.hget(node_key(cid, "r001", "node1"), "result") or "{}")
    assert result["failure"]["cause"] == "input" and says in result["failure"]["reason"], result["failure"]
    assert not marker.exists()
    assert not any((stack.tmp / "results").glob(f"{cid}/**/console.log"))  # nothing booted


@pytest.mark.parametrize(
    ("case", "changes", "says"),
    [
        # A newer control plane: a field this worker does not know, under its version.
        ("newer", {"protocol": protocol.PROTOCOL_VERSION + 1, "pressure": {"faults": []}}, "protocol version 2"),
        ("older", {"protocol": None}, "no protocol version"),
    ],
)
def test_a_node_message_of_another_protocol_version_is_version_skew_not_invalid(
    stack: Stack, case: str, changes: dict[str, Any], says: str
) -> None:
    if not stack.worker.proc:
        stack.worker.start(stack.redis.client())
    cid = f"skew-{case}-20261202-120000-abcd"
    client = stack.client()
    client.hset(
        run_key(cid, "r001"), mapping={"run_id": "r001", "attempt": 1, "status": "provisioning", "nodes": '["node1"]'}
    )
    # The node queued for attempt 1, as the scheduler leaves it before it sends the task.
    client.hset(node_key(cid, "r001", "node1"), mapping={"attempt": 1, "status": "queued", "owner": "", "result": ""})
    message = {key: value for key, value in {**_node_message(stack.tmp, cid), **changes}.items() if value is not None}
    stack.send(protocol.RUN_NODE, [message, cid, "r001", 1], "lab.e2e")
    _wait_for(lambda: client.hget(node_key(cid, "r001", "node1"), "result"))
    failure = json.loads(client.hget(node_key(cid, "r001", "node1"), "result") or "{}")["failure"]
    assert failure["cause"] == "infra", failure  # the lab's deployment, not the campaign
    assert failure["reason"].startswith("version skew") and says in failure["reason"], failure
    assert not any((stack.tmp / "results").glob(f"{cid}/**/console.log"))  # nothing booted


def test_a_setup_message_for_a_lab_the_worker_does_not_serve_is_refused(stack: Stack) -> None:
    if not stack.worker.proc:
        stack.worker.start(stack.redis.client())
    cid = "setup-20261129-120000-abcd"
    client = stack.client()
    client.hset(run_key(cid, "r001"), mapping={"run_id": "r001", "status": "preparing", "prepare_attempt": 1})
    message = {
        "protocol": protocol.PROTOCOL_VERSION,
        "campaign": cid,
        "run_id": "r001",
        "lab": "other",
        "kernel": {"package": "linux-image-amd64"},
    }
    stack.send(protocol.PREPARE_RUN, [message, cid, "r001", 1], "lab.e2e")
    _wait_for(lambda: client.hget(run_key(cid, "r001"), "prepare_failure"))
    failure = json.loads(client.hget(run_key(cid, "r001"), "prepare_failure") or "{}")
    assert failure["cause"] == "input" and "does not serve lab 'other'" in failure["reason"]


def test_the_password_is_in_no_log_and_no_process_list(stack: Stack) -> None:
    if not stack.worker.proc:
        stack.worker.start(stack.redis.client())
    processes = subprocess.run(["ps", "-eo", "args"], capture_output=True, text=True, check=True).stdout
    logs = [stack.tmp / "worker.log", stack.tmp / "redis" / "redis.log"]
    assert stack.redis.password not in processes
    for log in logs:
        assert stack.redis.password not in log.read_text(errors="replace"), log
    assert "redis-server" in processes and str(stack.redis.socket) in (stack.tmp / "worker.log").read_text()
