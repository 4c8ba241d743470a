"""What `swaplab bisect` prints of a step: its class, why, values, and where its runs came from."""

from __future__ import annotations

from orchestrator.cli.bisect_cmds import _step_line

STEP = {"prefix": 2, "repeats": 4, "ends": False, "step": "good", "why": "every run passed (4 pass)", "values": [14.4]}


def test_a_step_in_the_lab_gives_its_campaign_and_lab_time() -> None:
    line = _step_line({**STEP, "campaign": "pc-p2-1", "lab_s": 108.0, "runs_s": 78.0, "reused": []})
    assert line == "prefix 2 x4: good — every run passed (4 pass) [14.40] (pc-p2-1, 108 s of which runs 78 s)"


def test_a_step_from_stored_runs_says_it_took_no_lab_time() -> None:
    line = _step_line({**STEP, "campaign": "", "lab_s": None, "runs_s": 0.0, "reused": ["pc-p2-1"]})
    assert line.endswith("[14.40] (no lab time: stored runs of pc-p2-1)")
