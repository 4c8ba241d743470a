"""The Redis hashes both planes read: typed, and refused by name when another writer wrote them."""

from __future__ import annotations

import json
from typing import Any

import pytest

from model.hashes import STAGES, CampaignHash, CorruptHash, NodeHash, RunAttempt, RunHash
from model.protocol import RunStatus

KERNEL = json.dumps({"package": "linux-image-amd64"})
WORKLOAD = json.dumps({"name": "small", "mib": 320, "passes": 1, "timeout_s": 60})


def _run(**fields: Any) -> dict[str, Any]:
    """A run hash as HGETALL returns it (bytes, as a client without decode_responses)."""
    base = {"run_id": "r001", "label": "r001 k / small #1", "kernel": KERNEL, "workload": WORKLOAD, "repeat": "1"}
    base |= {"status": "queued", "attempt": "0", "variant": "", "queued_at": "1.5"}
    return {k.encode(): str(v).encode() for k, v in {**base, **fields}.items()}


def test_every_field_a_setup_stage_names_is_typed_in_the_run_hash() -> None:
    # A stage whose fields the model lacks would be read as untyped extras: the contract broke.
    for stage in STAGES:
        for name in (stage.attempt, stage.owner, stage.beat, stage.result, stage.done, stage.failure):
            assert name in RunHash.model_fields, name


def test_a_run_hash_reads_typed_with_unset_fields_as_missing_and_extras_kept() -> None:
    run = RunHash.read("k", _run(built_at="", build_failure=""))
    assert run.status is RunStatus.QUEUED and run.attempt == 0 and run.variant is None
    assert run.kernel.label() and run.workload.name == "small"
    assert run.built_at is None and run.stage_failure(STAGES[0]) is None
    assert (run.model_extra or {})["queued_at"] == "1.5"


@pytest.mark.parametrize(
    ("fields", "named"),
    [
        ({"status": "runnning"}, "status"),
        ({"attempt": "two"}, "attempt"),
        ({"nodes": "node1"}, "nodes"),  # not JSON
        ({"result": json.dumps({"verdict": "pass"})}, "run_id"),  # not the record's run entry
        ({"prepared": json.dumps({"kver": "$(reboot)"})}, "prepared"),
    ],
)
def test_a_run_hash_another_writer_changed_is_refused_naming_the_key_and_field(
    fields: dict[str, str], named: str
) -> None:
    with pytest.raises(CorruptHash, match=named) as refused:
        RunHash.read("swaplab:run:c:r001", _run(**fields))
    assert refused.value.key == "swaplab:run:c:r001" and "does not read as swaplab wrote it" in str(refused.value)


def test_an_unreadable_stage_failure_is_the_labs_fault_not_a_crash() -> None:
    run = RunHash.read("k", _run(build_failure=json.dumps({"cause": "kernel?", "reason": 1})))
    failure = run.stage_failure(STAGES[0])
    assert failure is not None and failure.cause == "infra" and "unreadable" in failure.reason


def test_a_missing_hash_is_none_and_the_data_planes_view_needs_only_its_fields() -> None:
    assert RunHash.read("k", {}) is None and NodeHash.read("k", {}) is None and CampaignHash.read("k", {}) is None
    seen = RunAttempt.read("k", {b"status": b"provisioning", b"attempt": b"2", b"nodes": b'["node1"]'})
    assert (seen.status, seen.attempt, seen.nodes, seen.aborted_attempt) == ("provisioning", 2, ["node1"], None)


def test_a_node_hash_carries_a_typed_result_only() -> None:
    queued = NodeHash.read("k", {"attempt": "1", "status": "queued", "owner": "", "result": ""})
    assert queued.result is None and not queued.done
    done = NodeHash.read(
        "k", {"attempt": "1", "status": "done", "result": json.dumps({"run_id": "r001", "node": "n1"})}
    )
    assert done.done and done.result is not None and done.result.node == "n1"
    with pytest.raises(CorruptHash, match="result"):
        NodeHash.read("k", {"attempt": "1", "status": "done", "result": json.dumps({"verdict": "pass"})})


def test_a_write_of_a_field_no_model_names_is_refused() -> None:
    RunHash.check_writable({"status": "queued", "build_attempt": 1, "queued_at": 1.0})
    NodeHash.check_writable({"attempt": 1, "status": "lost", "lost_at": 2.0})
    with pytest.raises(ValueError, match="RunHash has no field aborted"):
        RunHash.check_writable({"aborted": 1})  # a misspelt aborted_attempt: no node task would stop
    with pytest.raises(ValueError, match="CampaignHash has no field cancel"):
        CampaignHash.check_writable({"cancel": 1})
