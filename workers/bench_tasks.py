"""Benchmark tasks: what ``bench/dispatch.py`` measures on real Celery workers.

``swaplab.bench_barrier`` is the coordinated-start part of a node task with nothing else:
arrive at a :class:`RedisBarrier`, learn the common ``start_at``, sleep until it and note
the wake-up time in-process. The spread of those wake-ups is the floor of the start skew
that the barrier can give node tasks on one host.
"""

from __future__ import annotations

import threading
import time
from typing import Any

import redis

from model import protocol
from model.state import redis_url
from workers.app import app
from workers.coordination.barrier import RedisBarrier

_client: redis.Redis | None = None
_client_lock = threading.Lock()


def _redis() -> redis.Redis:
    """One client (a thread-safe pool) per worker process, so a task's timing excludes connecting."""
    global _client
    with _client_lock:
        if _client is None:
            _client = redis.Redis.from_url(redis_url(), socket_timeout=30)
        return _client


def _sleep_until(instant_ns: int) -> None:
    """Sleep until the CLOCK_REALTIME instant (no busy wait: hundreds of threads share 2 cores)."""
    remaining_s = (instant_ns - time.time_ns()) / 1e9
    if remaining_s > 0:
        time.sleep(remaining_s)


@app.task(name=protocol.BENCH_BARRIER)  # type: ignore[untyped-decorator]  # Celery's decorator is untyped
def bench_barrier(
    key: str, parties: int, node: str, lead_s: float = 1.0, poll_s: float = 0.01, timeout_s: float = 120.0
) -> dict[str, Any]:
    """Arrive at the barrier ``key``, wait for ``parties``, wake at ``start_at``; return the times (ns).

    ``poll_s`` is RedisBarrier's own default; larger values show how much of the dispatch
    time of a big group is the waiting tasks' polling competing for the worker's GIL.
    """
    barrier = RedisBarrier(_redis(), key, parties, lead_s=lead_s, poll_s=poll_s, ttl_s=600)
    arrived_ns = time.time_ns()
    start_at = barrier.arrive_and_wait(node, timeout_s)
    learned_ns = time.time_ns()  # after start_at: this party learned too late (lead_s too short)
    _sleep_until(start_at)
    woke_ns = time.time_ns()
    # Give the GIL straight back: otherwise the first parties to wake run Celery's result
    # reporting while the later ones wait for the GIL, and woke_ns would measure that instead.
    time.sleep(0.5)
    return {"node": node, "start_at": start_at, "woke_ns": woke_ns, "arrived_ns": arrived_ns, "learned_ns": learned_ns}
