"""The part of a campaign's live state in Redis that the data plane reads and writes: its
run's status and attempt, its own node's hash, progress events, the cancel flag.

The layout is model.state's; the control plane's full view is orchestrator.store.
"""

from __future__ import annotations

import time
from typing import Any

import redis

from model.state import EVENTS_MAXLEN, campaign_key, decode_fields, encode_fields, events_key, node_key, run_key


class RunState:
    """One run of one campaign, as its node and setup tasks see it."""

    def __init__(self, client: redis.Redis, cid: str, rid: str) -> None:
        self.redis = client
        self.cid = cid
        self.rid = rid

    def run(self) -> dict[str, Any]:
        return decode_fields(self.redis.hgetall(run_key(self.cid, self.rid)))

    def set_run(self, **fields: Any) -> None:
        self.redis.hset(run_key(self.cid, self.rid), mapping=encode_fields(fields))

    def node(self, node: str) -> dict[str, Any]:
        return decode_fields(self.redis.hgetall(node_key(self.cid, self.rid, node)))

    def set_node(self, node: str, **fields: Any) -> None:
        self.redis.hset(node_key(self.cid, self.rid, node), mapping=encode_fields(fields))

    def event(self, **fields: Any) -> None:
        """Append a progress event to the campaign's stream (bounded)."""
        fields.setdefault("at", time.time())
        fields.setdefault("run", self.rid)
        self.redis.xadd(events_key(self.cid), encode_fields(fields), maxlen=EVENTS_MAXLEN, approximate=True)

    def cancel_requested(self) -> bool:
        return self.redis.hget(campaign_key(self.cid), "cancel_requested") in (b"1", "1")
