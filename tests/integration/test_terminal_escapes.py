"""A guest's escape sequences reach no real terminal: ``swaplab watch`` in tmux follows a
campaign whose events and node results carry them (in the kernel release, the console
line a reason quotes, a phase detail), draws the live view and prints the summary table.
tmux is the terminal that would obey them: its pane title, its screen and the colours it
keeps are read from outside."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest

from orchestrator.scheduler import Scheduler
from orchestrator.store import CampaignStore
from tests.integration.dispatch import RecordingDispatch
from tests.integration.redis_server import RedisServer, redis_server_fixture  # noqa: F401  (the fixture)
from tests.integration.test_live_terminal import (  # noqa: F401  (the fixture)
    CID,
    NODES,
    SWAPLAB,
    Tmux,
    _store,
    tmux_env_fixture,
)

pytestmark = [pytest.mark.integration, pytest.mark.timeout(60)]
# Retitle the pane, clear the screen, a magenta background (ESC and C1 forms), reverse the rest.
ESCAPES = "\x1b]0;pwned\x07\x1b[2J\x1b[45m\x9b45m\u202e"
KVER = "6.1.0-evil"


def _hostile_start(store: CampaignStore, rid: str) -> None:
    """A run as a hostile guest would have its worker report it: escapes in every text."""
    store.set_run_status(CID, rid, "provisioning", nodes=NODES, attempt=1)
    for node in NODES:
        store.event(CID, kind="phase", run=rid, node=node, phase="boot", detail=f"{KVER}{ESCAPES}, 256 MiB RAM")
        store.event(CID, kind="phase", run=rid, node=node, phase=f"workload{ESCAPES}", detail=f"touch{ESCAPES} 320")
    store.set_run_status(CID, rid, "running")
    store.event(CID, kind="note", run=rid, detail=f"console: {ESCAPES}[ 2.1] BUG: oops")


def _hostile_end(store: CampaignStore, rid: str) -> None:
    nodes = [
        {
            "node": node,
            "verdict": "fail",
            "kernel": {"kver": KVER + ESCAPES},
            "swap_out_mib": 1.0,
            "swap_in_mib": 1.0,
            "phases_s": {"boot": 7.0, "mount": 1.0, "workload": 2.0},
            "reasons": [f"console: {ESCAPES}[ 2.1] BUG: oops{ESCAPES}"],
        }
        for node in NODES
    ]
    entry = {
        "run_id": rid,
        "kernel": "linux-image-amd64",
        "verdict": "fail",
        "exit_code": 1,
        "reasons": [],
        "nodes": nodes,
    }
    store.set_run_status(CID, rid, "done", verdict="fail", result=entry)


def test_watch_in_a_terminal_obeys_no_escape_a_guest_wrote(
    redis_server: RedisServer, tmp_path: Path, tmux_env: Tmux
) -> None:
    store = _store(redis_server, tmp_path)
    store.set_campaign_status(CID, "running")
    tmux_env.start(f"printf 'before watch\\n'; {shlex.quote(str(SWAPLAB))} watch {CID}")
    tmux_env.wait_for("the first line", lambda s: "before watch" in s)
    title = tmux_env.tmux("display-message", "-p", "-t", "live", "#{pane_title}").strip()
    _hostile_start(store, "r001")
    live = tmux_env.wait_for("the live lines", lambda s: all(f"r001 {node} workload" in s for node in NODES))
    print(f"--- live ---\n{live}")
    assert re.search(r"^r001 node1 workload +\d:\d\d +touch 320$", live, re.M)
    _hostile_end(store, "r001")
    _hostile_start(store, "r002")
    _hostile_end(store, "r002")
    Scheduler(store.redis, RecordingDispatch(), tmp_path / "results").finish(CID)

    screen = tmux_env.wait_for("the command's exit", lambda s: "[exit " in s)
    print(f"--- screen ---\n{screen}")
    coloured = tmux_env.tmux("capture-pane", "-p", "-e", "-J", "-S", "-", "-t", "live")
    assert "[exit 1]" in screen
    assert tmux_env.tmux("display-message", "-p", "-t", "live", "#{pane_title}").strip() == title != "pwned"
    assert "pwned" not in screen and "before watch" in screen.splitlines()[0]  # never cleared
    assert not re.search(r"\x1b\[[0-9;]*\b45m", coloured)  # the guest's background colour never applied
    assert "\u202e" not in coloured
    # The text itself is shown: the live view's line of the run, the summary table's rows.
    assert re.search(r"r001 FAIL .* - node1: console: \[ 2\.1\] BUG: oops$", screen, re.M)
    assert re.search(rf"^r002 +{KVER} +node2 +fail ", screen, re.M)
    assert "      - console: [ 2.1] BUG: oops" in screen.splitlines()
