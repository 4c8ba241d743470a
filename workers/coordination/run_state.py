"""The part of a campaign's live state in Redis that the data plane reads and writes: its
run's status and attempt, its own node's hash, progress events, the cancel flag.

The layout is model.state's; the control plane's full view is orchestrator.store.
"""

from __future__ import annotations

import time
from typing import Any

import redis

from model.hashes import NodeHash, RunAttempt, RunHash
from model.protocol import RunStatus, SetupStage, StageFailure
from model.state import EVENTS_MAXLEN, campaign_key, encode_fields, events_key, node_key, run_key

# Every write of a node or setup task is this compare-and-set: the fields are written only
# while each expected field still holds its value (the run's status, the attempt). A
# read-then-write could land after the scheduler moved on: mark a re-queued run running
# forever, or write an abandoned attempt's outcome into the next attempt.
# ARGV: the number of conditions, then (field, expected) pairs, then (field, value) pairs.
_SET_IF = """
local n = tonumber(ARGV[1])
for i = 0, n - 1 do
  if redis.call('HGET', KEYS[1], ARGV[2 + 2 * i]) ~= ARGV[3 + 2 * i] then return 0 end
end
redis.call('HSET', KEYS[1], unpack(ARGV, 2 + 2 * n))
return 1
"""


class RunState:
    """One run of one campaign, as its node and setup tasks see it."""

    def __init__(self, client: redis.Redis, cid: str, rid: str) -> None:
        self.redis = client
        self.cid = cid
        self.rid = rid

    def run(self) -> RunAttempt | None:
        """What the task checks of its run; None when there is no such run (CorruptHash when
        it does not read as swaplab wrote it)."""
        key = run_key(self.cid, self.rid)
        values: list[Any] = self.redis.hmget(key, list(RunAttempt.FIELDS))
        raw = {name: value for name, value in zip(RunAttempt.FIELDS, values, strict=True) if value is not None}
        return RunAttempt.read(key, raw)

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
        expected = {"status": stage.status.value, stage.attempt: str(attempt)}
        RunHash.check_writable(fields)
        return self._set_if(run_key(self.cid, self.rid), expected, fields)

    def mark_running(self, attempt: int) -> bool:
        """The run is running (its first node reached the workload), if it is still
        provisioning this attempt; False when the scheduler has moved it on."""
        expected = {"status": RunStatus.PROVISIONING.value, "attempt": str(attempt)}
        running = {"status": RunStatus.RUNNING.value, "running_at": repr(time.time())}
        RunHash.check_writable(running)
        return self._set_if(run_key(self.cid, self.rid), expected, running)

    def node(self, node: str) -> NodeHash | None:
        key = node_key(self.cid, self.rid, node)
        return NodeHash.read(key, self.redis.hgetall(key))

    def aborted(self, attempt: int) -> bool:
        """Whether the scheduler gave up on ``attempt`` (its node tasks stop)."""
        return self.redis.hget(run_key(self.cid, self.rid), "aborted_attempt") in (str(attempt), str(attempt).encode())

    # -- a node task: its node's hash, only while the hash is its attempt's -----------------------
    def claim_node(self, node: str, attempt: int, owner: str) -> bool:
        """Take ``node`` for ``attempt``: False unless the scheduler queued it for that attempt
        and no task took it yet."""
        fields = {"owner": owner, "status": "starting", "started_at": time.time()}
        return self._set_if(node_key(self.cid, self.rid, node), {"attempt": str(attempt), "status": "queued"}, fields)

    def node_status(self, node: str, attempt: int, status: str) -> bool:
        return self._set_if(node_key(self.cid, self.rid, node), {"attempt": str(attempt)}, {"status": status})

    def node_done(self, node: str, attempt: int, result: dict[str, Any]) -> bool:
        """The node's result; False (nothing written) when the hash is another attempt's."""
        fields = {"status": "done", "result": result, "finished_at": time.time()}
        return self._set_if(node_key(self.cid, self.rid, node), {"attempt": str(attempt)}, fields)

    def _set_if(self, key: str, expected: dict[str, str], fields: dict[str, Any]) -> bool:
        """Write ``fields`` into hash ``key`` only if every ``expected`` field holds its value."""
        conditions = [item for pair in expected.items() for item in pair]
        values = [item for pair in encode_fields(fields).items() for item in pair]
        return bool(self.redis.eval(_SET_IF, 1, key, len(expected), *conditions, *values))

    def event(self, **fields: Any) -> None:
        """Append a progress event to the campaign's stream (bounded)."""
        fields.setdefault("at", time.time())
        fields.setdefault("run", self.rid)
        self.redis.xadd(events_key(self.cid), encode_fields(fields), maxlen=EVENTS_MAXLEN, approximate=True)

    def cancel_requested(self) -> bool:
        return self.redis.hget(campaign_key(self.cid), "cancel_requested") in (b"1", "1")
