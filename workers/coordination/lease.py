"""Node leases in Redis: two runs never hold the same node, and a dead worker's nodes come back.

A run may also take its lab *exclusively* (a run with faults: a stalled server or a lossy
lab network must disturb no other run): it gets its nodes only when no other holder has
any node of the lab, and while it holds ``swaplab:lab-exclusive:<lab>`` nobody else gets
a node there. That key is renewed and released with the holder's node leases, so a dead
worker's exclusivity expires with its nodes.

A lease is the key ``swaplab:lease:<lab>:<node>`` holding the holder id (``"<campaign>:<run>"``)
with a PX expiry. Every change is a compare-and-act Lua script, so a holder only ever
extends or deletes its own keys, and taking several nodes is all-or-nothing. A worker that
dies stops renewing; its keys expire after ``ttl_s`` and the nodes are free again.

``LeaseKeeper`` renews in a daemon thread for as long as a run uses its nodes. Give the
Redis client a ``socket_timeout``: a renewal blocked on a dead socket cannot renew anything.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from types import TracebackType

from redis import Redis

from model.state import as_text, exclusive_key, health_key, lease_key, scan_pattern
from workers.coordination.health import HEALTHY_FIELD

log = logging.getLogger(__name__)

# A node task renews its node's lease every third of this; a worker that dies loses its
# nodes after it, and the scheduler redoes their run (no waiting for Redis' visibility timeout).
LEASE_TTL_S = 30.0

# KEYS = lease keys of the candidates, their health keys (same order), the lab's exclusive
# key, then the lease keys of the lab's other nodes. ARGV = holder, count, ttl_ms, name of
# the health field, number of candidates, exclusive ("1": the whole lab). Returns candidate
# indexes or nil. Nodes the holder already has count first: a redelivered scheduler step
# gets the same nodes.
_ACQUIRE = """
local holder, count, ttl, field = ARGV[1], tonumber(ARGV[2]), ARGV[3], ARGV[4]
local n, exclusive = tonumber(ARGV[5]), ARGV[6] == '1'
local exkey = KEYS[2 * n + 1]
local owner = redis.call('GET', exkey)
if owner and owner ~= holder then return false end
if exclusive then
  for i = 1, #KEYS do
    if i <= n or i > 2 * n + 1 then
      local current = redis.call('GET', KEYS[i])
      if current and current ~= holder then return false end
    end
  end
end
local chosen, free = {}, {}
for i = 1, n do
  local current = redis.call('GET', KEYS[i])
  if current == holder then
    if #chosen < count then table.insert(chosen, i) end
  elseif not current and redis.call('HGET', KEYS[n + i], field) ~= '0' then
    table.insert(free, i)
  end
end
local need = count - #chosen
if #free < need then return false end
for j = 1, need do table.insert(chosen, free[j]) end
table.sort(chosen)
for _, i in ipairs(chosen) do redis.call('SET', KEYS[i], holder, 'PX', ttl) end
if exclusive then redis.call('SET', exkey, holder, 'PX', ttl) end
return chosen
"""

# KEYS = node lease keys, then the lab's exclusive key (extended when the holder has it).
# ARGV = holder, ttl_ms, reclaim ("1": a vanished key is taken again). Returns lost indexes.
_RENEW = """
local holder, ttl, reclaim = ARGV[1], ARGV[2], ARGV[3]
local lost = {}
local exkey = KEYS[#KEYS]
if redis.call('GET', exkey) == holder then redis.call('PEXPIRE', exkey, ttl) end
for i = 1, #KEYS - 1 do
  local key = KEYS[i]
  local current = redis.call('GET', key)
  if current == holder then
    redis.call('PEXPIRE', key, ttl)
  elseif not current and reclaim == '1' then
    redis.call('SET', key, holder, 'PX', ttl)
  else
    table.insert(lost, i)
  end
end
return lost
"""

_RELEASE = """
for _, key in ipairs(KEYS) do
  if redis.call('GET', key) == ARGV[1] then redis.call('DEL', key) end
end
return 0
"""


class LeaseBook:
    """The leases of one lab's nodes."""

    def __init__(self, redis: Redis, lab: str, ttl_s: float = 30.0) -> None:
        self._redis = redis
        self.lab = lab
        self.ttl_s = ttl_s
        self._ttl_ms = max(1, int(ttl_s * 1000))
        self._acquire = redis.register_script(_ACQUIRE)
        self._renew = redis.register_script(_RENEW)
        self._release = redis.register_script(_RELEASE)

    def key(self, node: str) -> str:
        return lease_key(self.lab, node)

    def acquire(
        self, holder: str, candidates: list[str], count: int, *, exclusive_of: list[str] | None = None
    ) -> list[str] | None:
        """Take ``count`` free, healthy nodes among ``candidates`` (in order), or none at all.

        ``exclusive_of``: every node of the lab; the holder then takes the lab exclusively,
        only when no other holder has any of them.
        """
        nodes = list(dict.fromkeys(candidates))  # a duplicate candidate must not count twice
        others = [node for node in dict.fromkeys(exclusive_of or []) if node not in nodes]
        keys = [self.key(node) for node in nodes] + [health_key(self.lab, node) for node in nodes]
        keys += [exclusive_key(self.lab)] + [self.key(node) for node in others]
        exclusive = "1" if exclusive_of is not None else "0"
        reply = self._acquire(keys=keys, args=[holder, count, self._ttl_ms, HEALTHY_FIELD, len(nodes), exclusive])
        if reply is None:
            return None
        return [nodes[int(index) - 1] for index in reply]

    def renew(self, holder: str, nodes: list[str], *, reclaim_missing: bool = False) -> list[str]:
        """Extend the leases ``holder`` still has; return the nodes it lost.

        With ``reclaim_missing`` a key that no longer exists (a Redis restart without
        persistence) is taken again, since nobody else holds it; a key held by someone
        else is always lost.
        """
        if not nodes:
            return []
        keys = [self.key(node) for node in nodes] + [exclusive_key(self.lab)]
        lost = self._renew(keys=keys, args=[holder, self._ttl_ms, "1" if reclaim_missing else "0"])
        return [nodes[int(index) - 1] for index in lost]

    def confirm(self, holder: str, node: str) -> bool:
        """True when ``holder`` holds ``node``'s lease now, extended by a full TTL; False
        when another holder has it, which is then left as it was.

        The check and the extension are one script: a node task that acts on its node
        after this knows the node was its own a moment before, not someone else's. A lease
        that expired unheld (its task waited in the queue past the TTL while no scheduler
        renewed it) is taken again, as ``LeaseKeeper`` does: nobody else holds the node.
        """
        return not self.renew(holder, [node], reclaim_missing=True)

    def release(self, holder: str, nodes: list[str]) -> None:
        """Give back the nodes ``holder`` still has; others' leases are left alone."""
        if nodes:
            self._release(keys=[self.key(node) for node in nodes] + [exclusive_key(self.lab)], args=[holder])

    def exclusive_holder(self) -> str | None:
        """Who has the whole lab now (a run with faults), or None."""
        value = self._redis.get(exclusive_key(self.lab))
        return as_text(value) if value is not None else None

    def holders(self) -> dict[str, str]:
        """Node -> holder for every leased node of the lab."""
        prefix = self.key("")
        keys = [as_text(key) for key in self._redis.scan_iter(match=scan_pattern(prefix), count=500)]
        if not keys:
            return {}
        values = self._redis.mget(keys)
        # A key can expire between SCAN and MGET; it is simply not leased any more.
        return {
            key[len(prefix) :]: as_text(value) for key, value in zip(keys, values, strict=True) if value is not None
        }

    def ttl_ms(self, node: str) -> int | None:
        """Milliseconds left on the node's lease; None when it is not leased (or never expires)."""
        ttl = int(self._redis.pttl(self.key(node)))
        return ttl if ttl >= 0 else None


class LeaseKeeper:
    """Renews a holder's leases in a daemon thread until stopped.

    Redis errors are logged and retried (a restart of Redis must not end the run); if a
    lease is taken by someone else, ``on_lost`` is called once with those nodes and the
    remaining ones keep being renewed. Stop the keeper before releasing the nodes, or a
    renewal in flight could take them back.
    """

    def __init__(
        self,
        book: LeaseBook,
        holder: str,
        nodes: list[str],
        interval_s: float | None = None,
        on_lost: Callable[[list[str]], None] | None = None,
        *,
        reclaim_missing: bool = True,
    ) -> None:
        self._book = book
        self._holder = holder
        self._nodes = list(nodes)
        self._interval_s = interval_s if interval_s is not None else book.ttl_s / 3
        # After an error, retry sooner than the normal interval, but do not spin.
        self._retry_s = min(self._interval_s, 1.0)
        self._on_lost = on_lost
        self._reclaim = reclaim_missing
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"lease-keeper-{holder}", daemon=True)
        self.lost: list[str] = []
        self._until: float | None = None
        self.expired = False  # it stopped renewing at its deadline
        self.renewals = 0
        self.errors = 0

    def start(self) -> LeaseKeeper:
        self._thread.start()
        return self

    def stop(self, timeout_s: float = 5.0) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout_s)

    def is_alive(self) -> bool:
        return self._thread.is_alive()

    def __enter__(self) -> LeaseKeeper:
        return self.start()

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        self.stop()

    def renew_until(self, monotonic_deadline: float) -> None:
        """Stop renewing at ``monotonic_deadline``: a session that outlived every budget it
        had is stuck, and its leases expire so the scheduler's lost-worker path takes over."""
        self._until = monotonic_deadline

    def _run(self) -> None:
        wait_s = self._interval_s
        while not self._stop.wait(wait_s):
            if self._until is not None and time.monotonic() > self._until:
                self.expired = True
                log.error("%s outlived its session's budget: its leases are no longer renewed", self._holder)
                return
            wait_s = self._interval_s if self._renew_once() else self._retry_s

    def _renew_once(self) -> bool:
        """One renewal; False when Redis could not be reached (the caller retries sooner)."""
        try:
            lost = self._book.renew(self._holder, self._nodes, reclaim_missing=self._reclaim)
        except Exception as exc:  # a keeper that dies silently is worse than one that logs and retries
            self.errors += 1
            log.warning("lease renewal for %s failed, retrying: %s", self._holder, exc)
            return False
        self.renewals += 1
        if lost:
            self._report_lost(lost)
        return True

    def _report_lost(self, lost: list[str]) -> None:
        self._nodes = [node for node in self._nodes if node not in lost]
        first_loss = not self.lost
        self.lost.extend(lost)
        log.error("%s lost the lease on %s", self._holder, ", ".join(lost))
        if not first_loss or self._on_lost is None:
            return
        try:
            self._on_lost(lost)
        except Exception:  # the callback's failure must not stop the other leases' renewals
            log.exception("on_lost callback of %s failed", self._holder)
