"""Pure pieces of the distributed path: stored campaign round trip, exit-code combination,
skew figures, and the watch view of events."""

from __future__ import annotations

import json
from pathlib import Path

from model.campaign import campaign_from_json, campaign_to_json, load_campaign
from model.runspec import NodeResult, WorkloadOutcome
from orchestrator.results import campaign_exit_code, start_skew_ms, start_skew_uncertainty_ms
from orchestrator.watch import format_event

REPO = Path(__file__).resolve().parents[2]


def test_submitted_campaign_round_trips_through_json() -> None:
    campaign = load_campaign(REPO / "campaigns" / "pair.yaml")
    assert campaign_from_json(json.loads(json.dumps(campaign_to_json(campaign)))) == campaign


def test_campaign_exit_code_takes_the_first_of_1_3_4_2_0() -> None:
    assert campaign_exit_code([0, 2, 4, 1]) == 1
    assert campaign_exit_code([0, 2, 4, 3]) == 3
    assert campaign_exit_code([0, 2, 4]) == 4
    assert campaign_exit_code([0, 2]) == 2
    assert campaign_exit_code([0, 0]) == 0
    assert campaign_exit_code([]) == 4


def node(start_ns: int | None, uncertainty_ns: int | None) -> NodeResult:
    return NodeResult(
        run_id="r001", node="n", workload=WorkloadOutcome(started_host_ns=start_ns), clock_uncertainty_ns=uncertainty_ns
    )


def test_skew_is_the_spread_of_corrected_starts_with_its_uncertainty() -> None:
    results = [node(1_000_000_000, 2_000_000), node(1_000_400_000, 3_000_000), node(1_000_100_000, 1_000_000)]
    assert start_skew_ms(results) == 0.4
    assert start_skew_uncertainty_ms(results) == 5.0
    assert start_skew_uncertainty_ms(results, guest_clock=True) is None  # receive times: no offset applies
    assert start_skew_ms(results[:1]) is None


def test_watch_lines_name_run_node_and_phase() -> None:
    line = format_event({"kind": "phase", "run": "r001", "node": "node1", "phase": "boot", "detail": "6.1", "at": "0"})
    assert line is not None and "r001 node1" in line and "boot" in line
    swap = format_event({"kind": "swap", "run": "r001", "node": "node2", "out_mib": "12.5", "in_mib": "0", "at": "0"})
    assert swap is not None and "swapped out    12.5 MiB" in swap
    assert format_event({"kind": "unknown"}) is None


def test_summary_shows_why_a_run_was_refused() -> None:
    import io

    from orchestrator.results import print_summary

    run = {
        "run_id": "r001",
        "kernel": "k",
        "verdict": "infra-error",
        "exit_code": 2,
        "reasons": ["lab x has 1 healthy node(s)"],
        "nodes": [],
    }
    out = io.StringIO()
    print_summary(
        {
            "campaign_id": "c",
            "verdict": "infra-error",
            "exit_code": 2,
            "wall_s": 1.0,
            "result_dir": "/r",
            "runs": [run],
        },
        out,
    )
    assert "lab x has 1 healthy node(s)" in out.getvalue()
