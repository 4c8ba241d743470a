"""Leases, node health and the run barrier against a real redis-server on 127.0.0.1."""

from __future__ import annotations

import statistics
import threading
import time
from collections.abc import Callable, Iterator

import pytest
import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from model.faults import FaultTimes
from tests.integration.redis_server import RedisServer, redis_server_fixture  # noqa: F401  (the fixture)
from workers.collab import BarrierBroken
from workers.coordination.barrier import RedisBarrier
from workers.coordination.health import NodeHealth
from workers.coordination.lease import LeaseBook, LeaseKeeper

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]

NODES = ["n1", "n2", "n3", "n4"]


@pytest.fixture
def client(redis_server: RedisServer) -> Iterator[redis.Redis]:
    conn = redis_server.client()
    yield conn
    conn.close()


def _in_threads(count: int, target: Callable[[int], object]) -> list[object]:
    """Run ``target(i)`` in ``count`` threads released together; results (or exceptions) by i."""
    results: list[object] = [None] * count
    gate = threading.Barrier(count)

    def run(i: int) -> None:
        gate.wait()
        try:
            results[i] = target(i)
        except Exception as exc:
            results[i] = exc

    threads = [threading.Thread(target=run, args=(i,)) for i in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    return results


# --- leases -------------------------------------------------------------------------------


def test_racing_holders_never_share_a_node(client: redis.Redis) -> None:
    book = LeaseBook(client, "lab", ttl_s=30)
    for _ in range(10):
        client.flushdb()
        results = _in_threads(20, lambda i: book.acquire(f"camp:{i}", NODES, 2))
        assert not any(isinstance(r, Exception) for r in results), results
        granted: dict[str, list[str]] = {f"camp:{i}": r for i, r in enumerate(results) if isinstance(r, list)}
        assert len(granted) == 2, granted
        assert sorted(node for nodes in granted.values() for node in nodes) == NODES
        assert book.holders() == {node: holder for holder, nodes in granted.items() for node in nodes}


def test_confirm_never_takes_another_holders_node(client: redis.Redis) -> None:
    book = LeaseBook(client, "lab", ttl_s=30)
    assert book.acquire("b:1", ["n1"], 1) == ["n1"]
    client.pexpire(book.key("n1"), 5_000)
    assert book.confirm("a:1", "n1") is False  # another run's node: refused, its lease untouched
    assert client.get(book.key("n1")) == b"b:1" and client.pttl(book.key("n1")) <= 5_000
    assert book.confirm("b:1", "n1") is True and client.pttl(book.key("n1")) > 5_000  # its own: renewed
    assert book.confirm("a:1", "n2") is True and book.holders() == {"n1": "b:1", "n2": "a:1"}  # a free one: taken


def test_acquire_is_all_or_nothing(client: redis.Redis) -> None:
    book = LeaseBook(client, "lab")
    assert book.acquire("a:1", ["n1"], 1) == ["n1"]
    assert book.acquire("b:1", NODES, 4) is None
    assert book.holders() == {"n1": "a:1"}  # nothing half-taken
    assert book.acquire("b:1", NODES, 3) == ["n2", "n3", "n4"]


def test_acquire_is_idempotent_for_a_holder(client: redis.Redis) -> None:
    book = LeaseBook(client, "lab")
    first = book.acquire("a:1", NODES, 2)
    assert first == ["n1", "n2"]
    assert book.acquire("a:1", NODES, 2) == first  # a redelivered step takes no more
    assert book.acquire("a:1", NODES, 3) == ["n1", "n2", "n3"]  # it only tops up
    assert book.holders() == {"n1": "a:1", "n2": "a:1", "n3": "a:1"}


def test_lease_not_renewed_expires(client: redis.Redis) -> None:
    book = LeaseBook(client, "lab", ttl_s=1)
    assert book.acquire("a:1", NODES, 2) == ["n1", "n2"]
    ttl = book.ttl_ms("n1")
    assert ttl is not None and 0 < ttl <= 1000
    assert book.ttl_ms("n4") is None
    time.sleep(1.2)
    assert book.holders() == {}
    assert book.acquire("b:1", NODES, 4) == NODES


def test_renew_extends_and_reports_lost(client: redis.Redis) -> None:
    book = LeaseBook(client, "lab", ttl_s=1)
    assert book.acquire("a:1", NODES, 3) == ["n1", "n2", "n3"]
    client.delete(book.key("n1"))  # as if it expired while the worker was stalled ...
    assert book.acquire("b:1", ["n1"], 1) == ["n1"]  # ... and another run took it
    client.delete(book.key("n3"))  # vanished, nobody took it
    time.sleep(0.5)
    assert book.renew("a:1", ["n1", "n2", "n3"]) == ["n1", "n3"]
    ttl = book.ttl_ms("n2")
    assert ttl is not None and ttl > 900
    assert book.renew("a:1", ["n1", "n3"], reclaim_missing=True) == ["n1"]  # n3 was free: taken back
    assert book.holders() == {"n1": "b:1", "n2": "a:1", "n3": "a:1"}


def test_release_only_by_the_holder(client: redis.Redis) -> None:
    book = LeaseBook(client, "lab")
    book.acquire("a:1", NODES, 2)
    book.release("b:1", ["n1", "n2"])
    assert book.holders() == {"n1": "a:1", "n2": "a:1"}
    book.release("a:1", ["n1"])
    assert book.holders() == {"n2": "a:1"}


def test_holders_with_decoded_client(redis_server: RedisServer) -> None:
    conn = redis_server.client(decode_responses=True)
    book = LeaseBook(conn, "lab")
    book.acquire("a:1", NODES, 1)
    LeaseBook(conn, "other").acquire("z:9", NODES, 1)  # another lab's leases are not listed
    assert book.holders() == {"n1": "a:1"}
    assert LeaseBook(conn, "la*").holders() == {}  # a lab name is not a glob
    conn.close()


# --- health -------------------------------------------------------------------------------


def test_two_failed_boots_in_a_row_make_a_node_unhealthy(client: redis.Redis) -> None:
    health = NodeHealth(client, "lab")
    book = LeaseBook(client, "lab")
    health.record_boot("n1", ok=False, reason="qemu exited 1")
    assert health.is_healthy("n1")
    health.record_boot("n1", ok=False, reason="qemu exited 1 again")
    assert not health.is_healthy("n1")
    status = health.status()["n1"]
    assert status["healthy"] is False
    assert status["consecutive_boot_failures"] == 2
    assert status["last_reason"] == "qemu exited 1 again"
    assert abs(status["updated_at"] - time.time()) < 5
    assert book.acquire("a:1", ["n1", "n2", "n3"], 2) == ["n2", "n3"]
    assert book.acquire("b:1", ["n1"], 1) is None

    health.record_boot("n1", ok=True)
    assert health.is_healthy("n1")
    assert health.status()["n1"]["consecutive_boot_failures"] == 0
    assert book.acquire("b:1", ["n1"], 1) == ["n1"]


def test_failures_not_in_a_row_and_reset(client: redis.Redis) -> None:
    health = NodeHealth(client, "lab")
    health.record_boot("n2", ok=False, reason="x")
    health.record_boot("n2", ok=True)
    health.record_boot("n2", ok=False, reason="y")
    assert health.is_healthy("n2")  # a success in between resets the count
    health.record_boot("n2", ok=False, reason="z")
    assert not health.is_healthy("n2")
    health.reset("n2")
    assert health.is_healthy("n2")
    assert health.is_healthy("never-seen")
    assert set(health.status()) == {"n2"}


# --- lease keeper -------------------------------------------------------------------------


@pytest.mark.parametrize("client_retries", [True, False], ids=["client-retries", "no-client-retries"])
def test_keeper_keeps_lease_alive_and_survives_redis_restart(redis_server: RedisServer, client_retries: bool) -> None:
    # Without the client's own retries every failed call reaches the keeper's error path.
    retry = {} if client_retries else {"retry": Retry(NoBackoff(), 0)}
    conn = redis_server.client(socket_timeout=0.5, socket_connect_timeout=0.5, **retry)
    book = LeaseBook(conn, "lab", ttl_s=1)
    lost_calls: list[list[str]] = []
    assert book.acquire("a:1", NODES, 2) == ["n1", "n2"]
    keeper = LeaseKeeper(book, "a:1", ["n1", "n2"], on_lost=lost_calls.append).start()
    try:
        time.sleep(3)
        assert book.holders() == {"n1": "a:1", "n2": "a:1"}

        redis_server.kill()
        time.sleep(2)  # an outage longer than the TTL
        redis_server.start()  # same port, empty data (no persistence)
        time.sleep(1.5)
        assert keeper.is_alive()
        assert client_retries or keeper.errors >= 1
        assert book.holders() == {"n1": "a:1", "n2": "a:1"}  # taken back: nobody else had them
        time.sleep(1.5)
        assert book.holders() == {"n1": "a:1", "n2": "a:1"}
        assert lost_calls == []
    finally:
        keeper.stop()
    time.sleep(1.2)
    assert book.holders() == {}
    conn.close()


def test_keeper_reports_a_lost_lease_once(client: redis.Redis) -> None:
    book = LeaseBook(client, "lab", ttl_s=1)
    lost_calls: list[list[str]] = []
    book.acquire("a:1", NODES, 2)
    with LeaseKeeper(book, "a:1", ["n1", "n2"], interval_s=0.1, on_lost=lost_calls.append):
        client.set(book.key("n1"), "thief:1")
        time.sleep(0.5)
        client.set(book.key("n2"), "thief:2")
        time.sleep(0.5)
        assert lost_calls == [["n1"]]
    assert book.holders() == {"n1": "thief:1", "n2": "thief:2"}


# --- barrier ------------------------------------------------------------------------------


def test_barrier_gives_every_node_the_same_start(client: redis.Redis) -> None:
    barrier = RedisBarrier(client, "swaplab:barrier:camp:run1", parties=3, lead_s=0.3)
    woke: list[int] = [0, 0, 0]

    def arrive(i: int) -> int:
        time.sleep(0.1 * i)  # staggered arrivals
        start = barrier.arrive_and_wait(f"n{i}", timeout_s=10)
        woke[i] = time.time_ns()
        return start

    starts = _in_threads(3, arrive)
    assert len(set(starts)) == 1 and isinstance(starts[0], int), starts
    decided_at = starts[0] - 300_000_000  # start_at = Redis TIME when complete + lead
    assert max(woke) - min(woke) < 50_000_000
    assert all(0 <= t - decided_at < 50_000_000 for t in woke), [t - decided_at for t in woke]
    assert barrier.start_at() == starts[0]
    assert barrier.arrived() == {"n0", "n1", "n2"}
    for suffix in ("arrived", "state"):
        ttl = client.pttl(f"swaplab:barrier:camp:run1:{suffix}")
        assert 0 < ttl <= 3_600_000
    # A redelivered task arriving after completion gets the same instant at once.
    assert barrier.arrive_and_wait("n1", timeout_s=1) == starts[0]


def test_duplicate_arrival_does_not_complete_the_barrier(client: redis.Redis) -> None:
    barrier = RedisBarrier(client, "b:dup", parties=2)
    results = _in_threads(2, lambda i: barrier.arrive_and_wait("n1", timeout_s=0.5))
    assert all(isinstance(r, BarrierBroken) for r in results), results
    assert barrier.start_at() is None
    assert barrier.arrived() == {"n1"}


def test_abort_wakes_every_waiter_and_late_arrivers(client: redis.Redis) -> None:
    barrier = RedisBarrier(client, "b:abort", parties=3)
    raised_after: list[float] = []

    def wait(i: int) -> object:
        if i == 2:
            time.sleep(0.3)
            barrier.abort("n2", "boot failed")
            return "aborted"
        try:
            barrier.arrive_and_wait(f"n{i}", timeout_s=30)
        except BarrierBroken as exc:
            raised_after.append(time.monotonic())
            return exc
        return "started"

    before_abort = time.monotonic() + 0.3
    results = _in_threads(3, wait)
    assert isinstance(results[0], BarrierBroken) and isinstance(results[1], BarrierBroken), results
    assert "n2: boot failed" in str(results[0])
    assert all(t - before_abort < 1.0 for t in raised_after)
    started = time.monotonic()
    with pytest.raises(BarrierBroken, match="boot failed"):
        barrier.arrive_and_wait("n2", timeout_s=30)
    assert time.monotonic() - started < 0.1
    assert barrier.start_at() is None


def test_abort_after_completion_changes_nothing(client: redis.Redis) -> None:
    barrier = RedisBarrier(client, "b:done", parties=1, lead_s=0)
    start = barrier.arrive_and_wait("n1", timeout_s=1)
    barrier.abort("n1", "too late")
    assert barrier.arrive_and_wait("n1", timeout_s=1) == start


def test_timeout_raises_and_breaks_the_barrier(client: redis.Redis) -> None:
    barrier = RedisBarrier(client, "b:timeout", parties=2)
    started = time.monotonic()
    with pytest.raises(BarrierBroken, match="timed out"):
        barrier.arrive_and_wait("n1", timeout_s=0.3)
    assert 0.3 <= time.monotonic() - started < 0.6
    # The other node, arriving late, must not start alone.
    with pytest.raises(BarrierBroken, match="n1: barrier timed out"):
        barrier.arrive_and_wait("n2", timeout_s=5)


def test_a_fault_told_through_the_barrier_reaches_the_runs_other_nodes_checked(client: redis.Redis) -> None:
    injector = RedisBarrier(client, "b:faults", parties=2)
    other = RedisBarrier(client, "b:faults", parties=2)  # another worker process, same run
    injector.note_fault(0, FaultTimes(node="node1", started_at=1000.5))
    assert other.fault_times() == {0: FaultTimes(node="node1", started_at=1000.5)}
    injector.note_fault(0, FaultTimes(node="node1", started_at=1000.5, ended_at=1005.25))
    # What another writer of Redis put there is input: what does not read as a fault is skipped.
    client.hset("b:faults:state", mapping={"fault:1": '{"node": "x", "started_at": "now"}', "fault:999": "{}"})
    assert other.fault_times() == {0: FaultTimes(node="node1", started_at=1000.5, ended_at=1005.25)}
    assert 0 < client.pttl("b:faults:state") <= 3600 * 1000  # expires with the barrier


def test_barrier_wakeup_spread_of_50_waiters(client: redis.Redis) -> None:
    parties = 50
    barrier = RedisBarrier(client, "b:spread", parties=parties, lead_s=0)  # start_at = the instant it completed
    woke: list[int] = [0] * parties

    def arrive(i: int) -> int:
        start = barrier.arrive_and_wait(f"n{i}", timeout_s=30)
        woke[i] = time.time_ns()
        return start

    starts = _in_threads(parties, arrive)
    assert len(set(starts)) == 1 and isinstance(starts[0], int), set(starts)
    late_ms = sorted((t - starts[0]) / 1e6 for t in woke)
    p50 = statistics.median(late_ms)
    p99 = late_ms[int(0.99 * (len(late_ms) - 1))]
    print(
        f"\nbarrier wake-up, {parties} threaded waiters, poll 10 ms: "
        f"p50 {p50:.1f} ms, p99 {p99:.1f} ms, max {late_ms[-1]:.1f} ms, min {late_ms[0]:.1f} ms after start_at"
    )
    assert p99 < 50


def test_a_run_with_faults_takes_the_lab_only_when_nobody_else_is_on_it(client: redis.Redis) -> None:
    book = LeaseBook(client, "lab", ttl_s=30)
    lab = ["n1", "n2", "n3"]
    assert book.acquire("plain", ["n1"], 1) == ["n1"]
    # Another run is on n1: a run with faults would disturb it, so it waits, even for n2.
    assert book.acquire("faults", ["n2", "n3"], 1, exclusive_of=lab) is None
    assert client.get("swaplab:lab-exclusive:lab") is None
    book.release("plain", ["n1"])
    assert book.acquire("faults", ["n1", "n2", "n3"], 1, exclusive_of=lab) == ["n1"]
    assert book.exclusive_holder() == "faults"
    # While it has the lab, nobody gets a node of it, even one it does not use.
    assert book.acquire("plain", ["n2", "n3"], 1) is None
    assert book.acquire("other-faults", ["n2"], 1, exclusive_of=lab) is None
    # A redelivered step of the same holder gets the same node.
    assert book.acquire("faults", ["n1", "n2", "n3"], 1, exclusive_of=lab) == ["n1"]


def test_the_labs_exclusivity_lives_and_dies_with_its_holders_node_leases(client: redis.Redis) -> None:
    book = LeaseBook(client, "lab", ttl_s=1.0)
    assert book.acquire("faults", ["n1"], 1, exclusive_of=["n1", "n2"]) == ["n1"]
    for _ in range(3):  # renewing the nodes renews the lab's key too
        time.sleep(0.5)
        assert book.renew("faults", ["n1"]) == []
    assert book.exclusive_holder() == "faults"
    book.release("faults", ["n1"])
    assert book.exclusive_holder() is None and book.acquire("plain", ["n2"], 1) == ["n2"]
    # A holder that stops renewing (its worker died) loses the lab with its nodes.
    book.release("plain", ["n2"])
    assert book.acquire("faults", ["n1"], 1, exclusive_of=["n1", "n2"]) == ["n1"]
    time.sleep(1.3)
    assert book.exclusive_holder() is None and book.acquire("plain", ["n2"], 1) == ["n2"]


def test_a_keeper_stops_renewing_once_its_session_outlived_its_budget(client: redis.Redis) -> None:
    book = LeaseBook(client, "lab", ttl_s=1.0)
    assert book.acquire("stuck", ["n1"], 1) == ["n1"]
    keeper = LeaseKeeper(book, "stuck", ["n1"], interval_s=0.2).start()
    keeper.renew_until(time.monotonic() + 1.0)
    try:
        time.sleep(0.8)
        assert book.holders() == {"n1": "stuck"} and keeper.renewals >= 2
        time.sleep(2.0)  # past the budget: no renewal, and the lease runs out
        assert keeper.expired and not keeper.is_alive()
        assert book.holders() == {}
    finally:
        keeper.stop()
