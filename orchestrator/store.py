"""Campaign state in Redis: campaign -> runs -> node results, with status transitions.

Everything a command or the scheduler needs to know about a campaign lives here, so any
process can pick it up after a restart. The key layout is model.state's; a node task
writes only its own node's part of it (workers.run_state).
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from typing import Any

import redis

from model.campaign import Campaign, campaign_from_json, campaign_to_json
from model.protocol import campaign_status, run_status
from model.state import (
    CAMPAIGNS_KEY,
    EVENTS_MAXLEN,
    TERMINAL,
    as_text,
    campaign_key,
    decode_fields,
    encode_fields,
    events_key,
    node_key,
    node_keys_pattern,
    run_key,
    run_keys_pattern,
)
from orchestrator.planner import RunPlan

__all__ = ["TERMINAL", "CampaignStore"]

class CampaignStore:
    """Reads and writes campaign state; every write records when it happened."""

    def __init__(self, client: redis.Redis) -> None:
        self.redis = client

    # -- submit ------------------------------------------------------------------------
    def create(self, cid: str, campaign: Campaign, runs: list[RunPlan]) -> None:
        """Store a campaign and its runs in one transaction: all of it or nothing."""
        now = time.time()
        pipe = self.redis.pipeline(transaction=True)
        pipe.hset(
            campaign_key(cid),
            mapping={
                "id": cid,
                "name": campaign.spec.name,
                "file": str(campaign.path),
                "lab": campaign.lab.name,
                "status": "queued",
                "created_at": now,
                "queued_at": now,
                "campaign": json.dumps(campaign_to_json(campaign)),
                "runs": json.dumps([run.run_id for run in runs]),
            },
        )
        for run in runs:
            pipe.hset(
                run_key(cid, run.run_id),
                mapping={
                    "run_id": run.run_id,
                    "label": run.label(),
                    "kernel": run.kernel.model_dump_json(),
                    "workload": run.workload.model_dump_json(),
                    "variant": run.variant.model_dump_json() if run.variant is not None else "",
                    "repeat": run.repeat,
                    "status": "queued",
                    "attempt": 0,
                    "queued_at": now,
                },
            )
        pipe.zadd(CAMPAIGNS_KEY, {cid: now})
        pipe.execute()

    def delete(self, cid: str) -> None:
        """Remove every key of a campaign (used when submission fails half-way)."""
        keys = [campaign_key(cid), events_key(cid)]
        keys += list(self.redis.scan_iter(run_keys_pattern(cid)))
        keys += list(self.redis.scan_iter(node_keys_pattern(cid)))
        pipe = self.redis.pipeline(transaction=True)
        pipe.delete(*keys)
        pipe.zrem(CAMPAIGNS_KEY, cid)
        pipe.execute()

    # -- reads ---------------------------------------------------------------------------
    def exists(self, cid: str) -> bool:
        return bool(self.redis.exists(campaign_key(cid)))

    def campaign(self, cid: str) -> dict[str, Any]:
        """The campaign hash, decoded (JSON fields parsed)."""
        return decode_fields(self.redis.hgetall(campaign_key(cid)))

    def campaign_model(self, cid: str) -> Campaign:
        """The validated campaign as it was submitted."""
        return campaign_from_json(self.campaign(cid)["campaign"])

    def run_ids(self, cid: str) -> list[str]:
        return list(self.campaign(cid).get("runs", []))

    def run(self, cid: str, rid: str) -> dict[str, Any]:
        return decode_fields(self.redis.hgetall(run_key(cid, rid)))

    def node(self, cid: str, rid: str, node: str) -> dict[str, Any]:
        return decode_fields(self.redis.hgetall(node_key(cid, rid, node)))

    def campaign_ids(self, limit: int = 50) -> list[str]:
        """The most recent campaigns first."""
        ids: Any = self.redis.zrevrange(CAMPAIGNS_KEY, 0, limit - 1)
        return [as_text(cid) for cid in ids]

    def runs(self, cid: str) -> Iterator[dict[str, Any]]:
        for rid in self.run_ids(cid):
            yield self.run(cid, rid)

    # -- writes --------------------------------------------------------------------------
    def set_campaign(self, cid: str, **fields: Any) -> None:
        self.redis.hset(campaign_key(cid), mapping=encode_fields(fields))

    def set_campaign_status(self, cid: str, status: str, **fields: Any) -> None:
        status = campaign_status(status)  # an unknown state is refused, also under python -O
        self.set_campaign(cid, status=status, **{f"{status}_at": time.time()}, **fields)
        self.event(cid, kind="campaign", status=status)

    def set_run(self, cid: str, rid: str, **fields: Any) -> None:
        self.redis.hset(run_key(cid, rid), mapping=encode_fields(fields))

    def set_run_status(self, cid: str, rid: str, status: str, **fields: Any) -> None:
        status = run_status(status)
        self.set_run(cid, rid, status=status, **{f"{status}_at": time.time()}, **fields)
        self.event(cid, kind="run", run=rid, status=status)

    def set_node(self, cid: str, rid: str, node: str, **fields: Any) -> None:
        self.redis.hset(node_key(cid, rid, node), mapping=encode_fields(fields))

    def request_cancel(self, cid: str) -> None:
        self.set_campaign(cid, cancel_requested=1, cancel_requested_at=time.time())
        self.event(cid, kind="campaign", status="cancel-requested")

    def cancel_requested(self, cid: str) -> bool:
        return self.redis.hget(campaign_key(cid), "cancel_requested") in (b"1", "1")

    # -- events --------------------------------------------------------------------------
    def event(self, cid: str, **fields: Any) -> None:
        """Append a progress event to the campaign's stream (bounded)."""
        fields.setdefault("at", time.time())
        self.redis.xadd(events_key(cid), encode_fields(fields), maxlen=EVENTS_MAXLEN, approximate=True)

    def read_events(self, cid: str, after: str = "0-0", block_ms: int = 1000) -> list[tuple[str, dict[str, Any]]]:
        """Events after stream id ``after`` (waits up to ``block_ms`` for new ones)."""
        reply: Any = self.redis.xread({events_key(cid): after}, block=block_ms, count=500)
        if not reply:
            return []
        return [(as_text(eid), decode_fields(fields)) for eid, fields in reply[0][1]]
