"""The run barrier across processes and hosts, in Redis (implements workers.collab.Barrier).

Keys, all under the barrier's ``key`` and all expiring after ``ttl_s``:

* ``<key>:arrived`` — set of the nodes that arrived (a redelivered task arriving twice counts once);
* ``<key>:state``   — hash with ``start_at`` (ns) once everyone arrived, or ``broken`` (the reason);
  and ``fault:<index>``: when a fault of the run began and ended, as its injecting session
  tells the others (a server's fault disturbs every node: each measures it on its own).

The arrival that completes the set decides ``start_at`` inside a Lua script from Redis's own
``TIME`` plus ``lead_s``, so every node gets the same value and no two arrivals can both
decide. ``start_at`` and ``broken`` exclude each other (both are only set by scripts that
check the other), so either every node starts or every node stops.

Clock assumption: ``start_at`` is Redis's CLOCK_REALTIME, returned as the worker host's.
On one host that is the same clock. In a multi-host lab the worker hosts and the Redis host
must be NTP-synced; the offset between a worker host and its guests is measured separately.

Waiters poll the state hash every ``poll_s`` (10 ms by default): with a handful of nodes per
run that is cheap, needs no extra connection per waiter, and rides out a Redis restart.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

from redis import Redis
from redis.exceptions import RedisError

from model.faults import FAULTS_MAX, FaultTimes
from workers.collab import BarrierBroken

log = logging.getLogger(__name__)

State = tuple[str, str]  # ("wait" | "start" | "broken", value)

# KEYS = arrived, state. ARGV = node, parties, lead_us, ttl_ms.
# Lua numbers are doubles: epoch microseconds (~1.7e15) are exact, nanoseconds would not be.
_ARRIVE = """
local arrived, state = KEYS[1], KEYS[2]
local broken = redis.call('HGET', state, 'broken')
if broken then return {'broken', broken} end
local start = redis.call('HGET', state, 'start_at')
if start then return {'start', start} end
redis.call('SADD', arrived, ARGV[1])
redis.call('PEXPIRE', arrived, ARGV[4])
if redis.call('SCARD', arrived) < tonumber(ARGV[2]) then return {'wait', ''} end
local now = redis.call('TIME')
local us = tonumber(now[1]) * 1000000 + tonumber(now[2]) + tonumber(ARGV[3])
start = string.format('%.0f', us) .. '000'
redis.call('HSET', state, 'start_at', start)
redis.call('PEXPIRE', state, ARGV[4])
return {'start', start}
"""

# KEYS = state. ARGV = reason, ttl_ms. Breaks the barrier unless it already completed.
_BREAK = """
local start = redis.call('HGET', KEYS[1], 'start_at')
if start then return {'start', start} end
local broken = redis.call('HGET', KEYS[1], 'broken')
if not broken then
  broken = ARGV[1]
  redis.call('HSET', KEYS[1], 'broken', broken)
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
return {'broken', broken}
"""


def _text(value: object) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


class RedisBarrier:
    """All nodes of one run meet here, whatever process or host runs them."""

    def __init__(
        self,
        redis: Redis,
        key: str,
        parties: int,
        lead_s: float = 1.0,
        poll_s: float = 0.01,
        ttl_s: float = 3600,
    ) -> None:
        self._redis = redis
        self.key = key
        self._arrived_key = f"{key}:arrived"
        self._state_key = f"{key}:state"
        self._parties = parties
        self._lead_us = int(lead_s * 1e6)
        self._poll_s = poll_s
        self._ttl_ms = max(1, int(ttl_s * 1000))
        self._arrive = redis.register_script(_ARRIVE)
        self._break = redis.register_script(_BREAK)

    def arrive_and_wait(self, node: str, timeout_s: float) -> int:
        """Wait for every node; return the common start instant (CLOCK_REALTIME ns).

        A timeout breaks the barrier for everyone (unless it completed at that very moment,
        then this node starts like the others), so no node starts with a party missing.
        """
        deadline = time.monotonic() + timeout_s
        args: list[str | int] = [node, self._parties, self._lead_us, self._ttl_ms]
        state = self._retry_until(deadline, lambda: self._arrive(keys=[self._arrived_key, self._state_key], args=args))
        while state is not None and state[0] == "wait":
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            time.sleep(min(self._poll_s, remaining))
            state = self._poll()
        if state is None or state[0] == "wait":
            state = self._give_up(node, timeout_s)
        if state[0] == "broken":
            raise BarrierBroken(state[1])
        return int(state[1])

    def abort(self, node: str, reason: str) -> None:
        """Break the barrier (unless it already completed): every node gets BarrierBroken."""
        try:
            self._break(keys=[self._state_key], args=[f"{node}: {reason}", self._ttl_ms])
        except RedisError as exc:
            # The node is failing already; its own error matters more than this one.
            log.error("could not break barrier %s for %s (%s): %s", self.key, node, reason, exc)

    def broken(self) -> str | None:
        """Why the barrier was broken, or None (also None while Redis is unreachable)."""
        state = self._poll()
        return state[1] if state[0] == "broken" else None

    def note_fault(self, index: int, times: FaultTimes) -> bool:
        """Publish a fault's real start and end for the run's other nodes; False when Redis
        could not be reached (the caller retries)."""
        try:
            pipe = self._redis.pipeline()
            pipe.hset(self._state_key, f"fault:{index}", times.model_dump_json())
            pipe.pexpire(self._state_key, self._ttl_ms)
            pipe.execute()
        except RedisError as exc:
            log.warning("barrier %s: could not publish fault %d: %s", self.key, index, exc)
            return False
        return True

    def fault_times(self) -> dict[int, FaultTimes]:
        """The run's faults as published, by index; an entry that does not read as one is
        skipped (it crossed a process boundary: checked like any input)."""
        try:
            fields = self._redis.hgetall(self._state_key)
        except RedisError as exc:
            log.warning("barrier %s: could not read the faults: %s", self.key, exc)
            return {}
        times = {}
        for field, value in fields.items():
            name = _text(field)
            if not name.startswith("fault:"):
                continue
            try:
                index = int(name.removeprefix("fault:"))
                if not 0 <= index < FAULTS_MAX:
                    raise ValueError(f"index {index} out of range")
                times[index] = FaultTimes.model_validate_json(_text(value))
            except ValueError as exc:  # pydantic's ValidationError is one
                log.warning("barrier %s: %s refused: %s", self.key, name, exc)
        return times

    def start_at(self) -> int | None:
        value = self._redis.hget(self._state_key, "start_at")
        return None if value is None else int(_text(value))

    def arrived(self) -> set[str]:
        return {_text(member) for member in self._redis.smembers(self._arrived_key)}

    def _poll(self) -> State:
        try:
            start, broken = self._redis.hmget(self._state_key, ["start_at", "broken"])
        except RedisError as exc:
            log.warning("barrier %s: polling failed, retrying: %s", self.key, exc)
            return ("wait", "")
        if broken is not None:
            return ("broken", _text(broken))
        if start is not None:
            return ("start", _text(start))
        return ("wait", "")

    def _give_up(self, node: str, timeout_s: float) -> State:
        reason = f"{node}: barrier timed out after {timeout_s:g} s"
        try:
            return self._state(self._break(keys=[self._state_key], args=[reason, self._ttl_ms]))
        except RedisError as exc:
            return ("broken", f"{reason} (and Redis is unreachable: {exc})")

    def _retry_until(self, deadline: float, call: Callable[[], Any]) -> State | None:
        """Run a script, retrying Redis errors until the deadline; None if it never ran."""
        while True:
            try:
                return self._state(call())
            except RedisError as exc:
                if time.monotonic() >= deadline:
                    return None
                log.warning("barrier %s: Redis error, retrying: %s", self.key, exc)
                time.sleep(min(0.2, max(0.0, deadline - time.monotonic())))

    @staticmethod
    def _state(reply: Any) -> State:
        kind, value = reply  # a Lua table reply: [kind, value]
        return (_text(kind), _text(value))
