"""LAVA-style node health in Redis: nodes that keep failing to boot leave the pool.

One hash per node, ``swaplab:health:<lab>:<node>``, with the fields ``healthy`` ("1"/"0"),
``consecutive_boot_failures``, ``last_reason`` and ``updated_at`` (host epoch seconds).
A node with no hash is healthy: new nodes join the pool without any setup.

Only lab faults (QEMU, image, NFS server, SSH keys ...) should be recorded as failed boots:
a kernel under test that panics at boot is that kernel's verdict and must not take a good
node out of the pool (docs/ARCHITECTURE.md, "Verdicts and exit codes"). The caller decides.

``workers.coordination.lease.LeaseBook.acquire`` reads the ``healthy`` field of the same keys inside its
Lua script, so a node marked unhealthy is never handed out.
"""

from __future__ import annotations

import time
from typing import Any, TypedDict

from redis import Redis
from redis.typing import EncodableT

from model.state import as_text, health_key, scan_pattern

# The field LeaseBook's Lua script reads; "0" means unhealthy, anything else (or no hash) healthy.
HEALTHY_FIELD = "healthy"
FAILURES_FIELD = "consecutive_boot_failures"
REASON_FIELD = "last_reason"
UPDATED_FIELD = "updated_at"
UNHEALTHY_AFTER = 2

# One script so that two workers reporting boots of the same node at once never lose a count.
_RECORD_BOOT = """
local key, ok, reason, now, limit = KEYS[1], ARGV[1], ARGV[2], ARGV[3], tonumber(ARGV[4])
local failures = 0
if ok == '0' then failures = redis.call('HINCRBY', key, 'consecutive_boot_failures', 1) end
local healthy = '1'
if failures >= limit then healthy = '0' end
redis.call('HSET', key, 'consecutive_boot_failures', failures, 'healthy', healthy,
           'last_reason', reason, 'updated_at', now)
return healthy
"""


class NodeStatus(TypedDict):
    """What ``NodeHealth.status`` tells about one node."""

    healthy: bool
    consecutive_boot_failures: int
    last_reason: str
    updated_at: float


class NodeHealth:
    """Boot-health bookkeeping for the nodes of one lab."""

    def __init__(self, redis: Redis, lab: str, unhealthy_after: int = UNHEALTHY_AFTER) -> None:
        self._redis = redis
        self._lab = lab
        self._unhealthy_after = unhealthy_after
        self._record = redis.register_script(_RECORD_BOOT)

    def key(self, node: str) -> str:
        return health_key(self._lab, node)

    def record_boot(self, node: str, ok: bool, reason: str = "") -> None:
        """Count a boot; ``unhealthy_after`` failures in a row take the node out, a success resets."""
        args = ["1" if ok else "0", reason, repr(time.time()), self._unhealthy_after]
        self._record(keys=[self.key(node)], args=args)

    def take_out(self, node: str, reason: str) -> None:
        """Take a node out of the pool now (it needs a person: no power control, stopped answering)."""
        mapping: dict[EncodableT, EncodableT] = {
            HEALTHY_FIELD: "0",
            REASON_FIELD: reason,
            UPDATED_FIELD: repr(time.time()),
        }
        self._redis.hset(self.key(node), mapping=mapping)

    def is_healthy(self, node: str) -> bool:
        value = self._redis.hget(self.key(node), HEALTHY_FIELD)
        return value is None or as_text(value) != "0"

    def reset(self, node: str) -> None:
        """Put a node back in the pool by hand (after the lab was repaired)."""
        mapping: dict[EncodableT, EncodableT] = {
            HEALTHY_FIELD: "1",
            FAILURES_FIELD: 0,
            REASON_FIELD: "reset",
            UPDATED_FIELD: repr(time.time()),
        }
        self._redis.hset(self.key(node), mapping=mapping)

    def status(self) -> dict[str, NodeStatus]:
        """Every node of the lab that has a health record, by node name."""
        prefix = self.key("")
        keys = sorted(as_text(key) for key in self._redis.scan_iter(match=scan_pattern(prefix), count=500))
        pipe = self._redis.pipeline(transaction=False)
        for key in keys:
            pipe.hgetall(key)
        return {key[len(prefix) :]: _node_status(raw) for key, raw in zip(keys, pipe.execute(), strict=True)}


def _node_status(raw: dict[Any, Any]) -> NodeStatus:
    fields = {as_text(name): as_text(value) for name, value in raw.items()}
    return NodeStatus(
        healthy=fields.get(HEALTHY_FIELD, "1") != "0",
        consecutive_boot_failures=int(fields.get(FAILURES_FIELD, "0")),
        last_reason=fields.get(REASON_FIELD, ""),
        updated_at=float(fields.get(UPDATED_FIELD, "0")),
    )
