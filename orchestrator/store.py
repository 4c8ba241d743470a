"""Campaign state in Redis: campaign -> runs -> node results, with status transitions.

Everything a command or the scheduler needs to know about a campaign lives here, so any
process can pick it up after a restart. The key layout is model.state's; a node task
writes only its own node's part of it (workers.coordination.run_state).
"""

from __future__ import annotations

import json
import time
from typing import Any

import redis

from model.campaign import Campaign, campaign_from_json, campaign_to_json
from model.hashes import CampaignHash, CorruptHash, NodeHash, RunHash
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
    def create(self, cid: str, campaign: Campaign, runs: list[RunPlan], bisection: str = "") -> None:
        """Store a campaign and its runs in one transaction: all of it or nothing
        (``bisection``: the bisection it is a step of)."""
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
                "bisection": bisection,
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

    def campaign(self, cid: str) -> CampaignHash | None:
        """The campaign's hash, or None when there is no such campaign (CorruptHash when it
        does not read as swaplab wrote it)."""
        return CampaignHash.read(campaign_key(cid), self.redis.hgetall(campaign_key(cid)))

    def status(self, cid: str) -> str | None:
        """The campaign's status field alone (readable even when the rest of its hash is not)."""
        raw = self.redis.hget(campaign_key(cid), "status")
        return as_text(raw) if raw is not None else None

    def record(self, cid: str) -> dict[str, Any] | None:
        """The finished campaign's record (result.json) alone; None while there is none or
        it is not a JSON object (the sinks check it against the schema before using it)."""
        raw = self.redis.hget(campaign_key(cid), "result")
        try:
            found = json.loads(as_text(raw)) if raw else None
        except ValueError:
            return None
        return found if isinstance(found, dict) else None

    def campaign_model(self, cid: str) -> Campaign:
        """The validated campaign as it was submitted."""
        info = self.campaign(cid)
        if info is None:
            raise CorruptHash(campaign_key(cid), "no such campaign")
        return campaign_from_json(info.campaign)

    def run_ids(self, cid: str) -> list[str]:
        info = self.campaign(cid)
        return list(info.runs) if info is not None else []

    def run(self, cid: str, rid: str) -> RunHash:
        """One run's hash (CorruptHash when it is missing or does not read as swaplab wrote it)."""
        found = RunHash.read(run_key(cid, rid), self.redis.hgetall(run_key(cid, rid)))
        if found is None:
            raise CorruptHash(run_key(cid, rid), "the campaign names this run but it does not exist")
        return found

    def node(self, cid: str, rid: str, node: str) -> NodeHash | None:
        """One node's hash of a run's current attempt; None before the run started it."""
        key = node_key(cid, rid, node)
        return NodeHash.read(key, self.redis.hgetall(key))

    def campaign_ids(self, limit: int = 50) -> list[str]:
        """The most recent campaigns first."""
        ids: Any = self.redis.zrevrange(CAMPAIGNS_KEY, 0, limit - 1)
        return [as_text(cid) for cid in ids]

    def runs(self, cid: str) -> list[RunHash]:
        return [self.run(cid, rid) for rid in self.run_ids(cid)]

    # -- writes --------------------------------------------------------------------------
    def set_campaign(self, cid: str, **fields: Any) -> None:
        CampaignHash.check_writable(fields)
        self.redis.hset(campaign_key(cid), mapping=encode_fields(fields))

    def set_campaign_status(self, cid: str, status: str, **fields: Any) -> None:
        status = campaign_status(status)  # an unknown state is refused, also under python -O
        self.set_campaign(cid, status=status, **{f"{status}_at": time.time()}, **fields)
        self.event(cid, kind="campaign", status=status)

    def set_run(self, cid: str, rid: str, **fields: Any) -> None:
        RunHash.check_writable(fields)
        self.redis.hset(run_key(cid, rid), mapping=encode_fields(fields))

    def set_run_status(self, cid: str, rid: str, status: str, **fields: Any) -> None:
        status = run_status(status)
        self.set_run(cid, rid, status=status, **{f"{status}_at": time.time()}, **fields)
        self.event(cid, kind="run", run=rid, status=status)

    def set_node(self, cid: str, rid: str, node: str, **fields: Any) -> None:
        NodeHash.check_writable(fields)
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
