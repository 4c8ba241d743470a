"""A node is acted on only by the run that leases it: with a password-protected redis-server,
a real Celery worker serving lab ``e2e``, and messages and records written into Redis by an
outsider who holds the password.

Another campaign's guest is a harmless stand-in process the QEMU driver would take for the
node's guest (its name and pid file on the command line), so the worker's own power-off
path is what is tried; it must keep running.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis

from model import protocol
from model.state import guest_key, holder_id, lease_key, node_key, run_key
from tests.integration.test_trust import Stack, _node_message, stack_fixture  # noqa: F401  (the fixture)
from workers.coordination.lease import LeaseBook

pytestmark = [pytest.mark.integration, pytest.mark.timeout(300)]
VICTIM = "victim-20261129-120000-abcd"
VICTIM_HOLDER = holder_id(VICTIM, "r001", 1)


class Guest:
    """A process that looks like node ``node``'s QEMU to the driver, and harms nothing."""

    def __init__(self, results: Path, cid: str, node: str) -> None:
        self.workdir = results / cid / "r001" / node
        self.workdir.mkdir(parents=True)
        pid_file = self.workdir / "qemu.pid"
        code = "import time; time.sleep(600)"
        argv = [sys.executable, "-c", code, "-name", f"swaplab-e2e-{node}", "-pidfile", str(pid_file)]
        self.proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL)
        pid_file.write_text(f"{self.proc.pid}\n")

    def record(self, holder: str) -> str:
        return json.dumps({"holder": holder, "workdir": str(self.workdir)})

    def running(self) -> bool:
        return self.proc.poll() is None

    def stop(self) -> None:
        self.proc.kill()
        self.proc.wait()


@pytest.fixture(scope="module")
def victim(stack: Stack) -> Iterator[Guest]:
    """node1 leased to another campaign's run, its guest running and recorded."""
    guest = Guest(stack.tmp / "results", VICTIM, "node1")
    client = stack.redis.client()
    assert LeaseBook(client, "e2e", ttl_s=600).acquire(VICTIM_HOLDER, ["node1"], 1) == ["node1"]
    client.set(guest_key("e2e", "node1"), guest.record(VICTIM_HOLDER))
    yield guest
    guest.stop()


def _wait_for(condition: Any, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.2)


def _assert_victim_untouched(client: redis.Redis, victim: Guest, record: str) -> None:
    assert victim.running()
    assert client.get(lease_key("e2e", "node1")) == VICTIM_HOLDER.encode()
    assert client.pttl(lease_key("e2e", "node1")) > 300_000  # nobody renewed it with a short TTL
    assert client.get(guest_key("e2e", "node1")) == record.encode()
    assert (victim.workdir / "qemu.pid").read_text() == f"{victim.proc.pid}\n"


def test_a_starting_worker_leaves_a_leased_nodes_guest_alone_whatever_its_record_says(
    stack: Stack, victim: Guest
) -> None:
    client = stack.redis.client()
    # The outsider rewrites the record so that its holder is not the lease's: an "orphan".
    forged = victim.record("outsider-20261129-120000-abcd:r001:1")
    client.set(guest_key("e2e", "node1"), forged)
    # A real orphan beside it (node2: its record, nobody's lease) must still be powered off.
    orphan = Guest(stack.tmp / "results", "gone-20261129-120000-abcd", "node2")
    client.set(guest_key("e2e", "node2"), orphan.record(holder_id("gone-20261129-120000-abcd", "r001", 1)))
    try:
        stack.worker.start(client)  # its start cleans the orphans of the labs it serves
        _wait_for(lambda: not orphan.running() and client.get(guest_key("e2e", "node2")) is None)
    finally:
        orphan.stop()
    # The same pass looked at node1 (in SCAN's order): a power-off there takes milliseconds.
    time.sleep(1.5)
    _assert_victim_untouched(client, victim, forged)
    client.set(guest_key("e2e", "node1"), victim.record(VICTIM_HOLDER))


def test_a_forged_node_message_for_a_node_another_run_leases_powers_nothing_off(stack: Stack, victim: Guest) -> None:
    client = stack.redis.client()
    if not stack.worker.proc:
        stack.worker.start(client)
    record = victim.record(VICTIM_HOLDER)
    cid = "outsider-20261129-120000-abcd"
    # A run of the outsider's own that claims node1, and a node task for it.
    client.hset(
        run_key(cid, "r001"), mapping={"run_id": "r001", "attempt": 1, "status": "provisioning", "nodes": '["node1"]'}
    )
    # The node queued for attempt 1, as the scheduler leaves it before it sends the task.
    client.hset(node_key(cid, "r001", "node1"), mapping={"attempt": 1, "status": "queued", "owner": "", "result": ""})
    stack.send(protocol.RUN_NODE, [_node_message(stack.tmp, cid), cid, "r001", 1], "lab.e2e")
    _wait_for(lambda: client.hget(node_key(cid, "r001", "node1"), "result"))
    result = json.loads(client.hget(node_key(cid, "r001", "node1"), "result") or "{}")
    failure = result["failure"]
    assert failure["cause"] == "input" and f"is leased to another run than {cid}:r001:1" in failure["reason"], failure
    _assert_victim_untouched(client, victim, record)
    assert not (stack.tmp / "results" / cid).exists()  # nothing set up or booted for it
