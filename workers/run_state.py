"""The part of a campaign's live state in Redis that the data plane reads and writes: its
run's status and attempt, its own node's hash, progress events, the cancel flag.

The layout is model.state's; the control plane's full view is orchestrator.store.
"""

from __future__ import annotations

import time
from typing import Any

import redis

from model.protocol import RunStatus, SetupStage, StageFailure
from model.state import EVENTS_MAXLEN, campaign_key, decode_fields, encode_fields, events_key, node_key, run_key

# Compare-and-set in one step: a run moves provisioning -> running only while it is still
# provisioning *this* attempt. A read-then-write from the node task could land after the
# scheduler re-queued the run (worker lost) and mark a queued run running forever.
_MARK_RUNNING = """
if redis.call('HGET', KEYS[1], 'status') == ARGV[1] and redis.call('HGET', KEYS[1], 'attempt') == ARGV[2] then
  redis.call('HSET', KEYS[1], 'status', ARGV[3], ARGV[3] .. '_at', ARGV[4])
  return 1
end
return 0
"""


# Write a stage's fields only while the run is still in that stage at the task's attempt: a
# task the scheduler gave up on (silent too long, redone) must not write into the next one.
_SET_IF_CURRENT = """
if redis.call('HGET', KEYS[1], 'status') == ARGV[1] and redis.call('HGET', KEYS[1], ARGV[2]) == ARGV[3] then
  redis.call('HSET', KEYS[1], unpack(ARGV, 4))
  return 1
end
return 0
"""


# A node's hash belongs to the attempt the scheduler wrote into it: a node task of an
# earlier attempt (its worker taken for lost, the run started again) writes nothing there.
_NODE_SET_IF_ATTEMPT = """
if redis.call('HGET', KEYS[1], 'attempt') == ARGV[1] then
  redis.call('HSET', KEYS[1], unpack(ARGV, 2))
  return 1
end
return 0
"""
# Take a node for this attempt: only from "queued", so a redelivered task never boots a second guest.
_NODE_CLAIM = """
if redis.call('HGET', KEYS[1], 'attempt') == ARGV[1] and redis.call('HGET', KEYS[1], 'status') == 'queued' then
  redis.call('HSET', KEYS[1], unpack(ARGV, 2))
  return 1
end
return 0
"""


class RunState:
    """One run of one campaign, as its node and setup tasks see it."""

    def __init__(self, client: redis.Redis, cid: str, rid: str) -> None:
        self.redis = client
        self.cid = cid
        self.rid = rid

    def run(self) -> dict[str, Any]:
        return decode_fields(self.redis.hgetall(run_key(self.cid, self.rid)))

    # -- a setup stage's task: its narrow writers, each a compare-and-set ------------------------
    def claim_stage(self, stage: SetupStage, attempt: int, owner: str) -> bool:
        """Take the stage's task: False when it is stale (the scheduler moved on) or redelivered
        after the run left the stage."""
        return self._set_if_current(stage, attempt, {stage.owner: owner, stage.beat: time.time()})

    def beat_stage(self, stage: SetupStage, attempt: int) -> bool:
        return self._set_if_current(stage, attempt, {stage.beat: time.time()})

    def finish_stage(self, stage: SetupStage, attempt: int, outcome: StageFailure | Any) -> bool:
        """The stage's outcome: its failure, or its result (JSON) with the time it was done."""
        if isinstance(outcome, StageFailure):
            return self._set_if_current(stage, attempt, {stage.failure: outcome.model_dump()})
        return self._set_if_current(stage, attempt, {stage.result: outcome, stage.done: time.time()})

    def _set_if_current(self, stage: SetupStage, attempt: int, fields: dict[str, Any]) -> bool:
        stray = set(fields) - stage.task_fields()
        if stray:  # not an assert: gone under -O, and this is the contract with the scheduler
            raise ValueError(f"the {stage.name} task may not write {sorted(stray)}")
        pairs = [item for field, value in encode_fields(fields).items() for item in (field, value)]
        key = run_key(self.cid, self.rid)
        return bool(self.redis.eval(_SET_IF_CURRENT, 1, key, stage.status.value, stage.attempt, str(attempt), *pairs))

    def mark_running(self, attempt: int) -> bool:
        """The run is running (its first node reached the workload), if it is still
        provisioning this attempt; False when the scheduler has moved it on."""
        moved = self.redis.eval(
            _MARK_RUNNING,
            1,
            run_key(self.cid, self.rid),
            RunStatus.PROVISIONING.value,
            str(attempt),
            RunStatus.RUNNING.value,
            repr(time.time()),
        )
        return bool(moved)

    def node(self, node: str) -> dict[str, Any]:
        return decode_fields(self.redis.hgetall(node_key(self.cid, self.rid, node)))

    # -- a node task: its node's hash, only while the hash is its attempt's -----------------------
    def claim_node(self, node: str, attempt: int, owner: str) -> bool:
        """Take ``node`` for ``attempt``: False unless the scheduler queued it for that attempt
        and no task took it yet."""
        fields = {"owner": owner, "status": "starting", "started_at": time.time()}
        return self._node_script(_NODE_CLAIM, node, attempt, fields)

    def node_status(self, node: str, attempt: int, status: str) -> bool:
        return self._node_script(_NODE_SET_IF_ATTEMPT, node, attempt, {"status": status})

    def node_done(self, node: str, attempt: int, result: dict[str, Any]) -> bool:
        """The node's result; False (nothing written) when the hash is another attempt's."""
        fields = {"status": "done", "result": result, "finished_at": time.time()}
        return self._node_script(_NODE_SET_IF_ATTEMPT, node, attempt, fields)

    def _node_script(self, script: str, node: str, attempt: int, fields: dict[str, Any]) -> bool:
        pairs = [item for field, value in encode_fields(fields).items() for item in (field, value)]
        return bool(self.redis.eval(script, 1, node_key(self.cid, self.rid, node), str(attempt), *pairs))

    def event(self, **fields: Any) -> None:
        """Append a progress event to the campaign's stream (bounded)."""
        fields.setdefault("at", time.time())
        fields.setdefault("run", self.rid)
        self.redis.xadd(events_key(self.cid), encode_fields(fields), maxlen=EVENTS_MAXLEN, approximate=True)

    def cancel_requested(self) -> bool:
        return self.redis.hget(campaign_key(self.cid), "cancel_requested") in (b"1", "1")
