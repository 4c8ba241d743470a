"""``swaplab watch`` in a real terminal (tmux) draws the live view from a real Redis stream:
one updating line per node while the test writes a campaign's events, a line per finished
run at the end, the campaign's exit code; through a pipe the same command prints log lines."""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from model.campaign import load_campaign
from orchestrator.planner import plan_runs
from orchestrator.scheduler import Scheduler
from orchestrator.store import CampaignStore
from tests.conftest import require_tools
from tests.integration.dispatch import RecordingDispatch
from tests.integration.redis_server import RedisServer, redis_server_fixture  # noqa: F401  (the fixture)

pytestmark = [pytest.mark.integration, pytest.mark.timeout(60)]
REPO = Path(__file__).resolve().parents[2]
SWAPLAB = Path(sys.executable).parent / "swaplab"  # the CLI installed beside the interpreter running the tests
CID = "pair-20261130-101500-1bad"
NODES = ["node1", "node2"]
WORKLOAD = "touch 320 MiB x 1 pass(es)"
ESCAPES = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")


class Tmux:
    """One tmux server on its own socket, one 120x30 session; the screen read with capture-pane."""

    def __init__(self, env: dict[str, str]) -> None:
        self.socket = f"swaplab-test-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        self.env = env
        self.socket_path: Path | None = None

    def tmux(self, *args: str) -> str:
        command = ["tmux", "-L", self.socket, "-f", "/dev/null", *args]
        return subprocess.run(command, env=self.env, capture_output=True, text=True, check=True, timeout=10).stdout

    def start(self, command: str) -> None:
        """Run ``command`` in the session; the pane stays (a sleep) so its last screen can be read."""
        shell = f'{command}; echo "[exit $?]"; exec sleep 300'
        self.tmux("new-session", "-d", "-s", "live", "-x", "120", "-y", "30", "sh", "-c", shell)
        self.socket_path = Path(self.tmux("display-message", "-p", "#{socket_path}").strip())

    def screen(self) -> str:
        """The pane's history and visible screen, as text."""
        return self.tmux("capture-pane", "-p", "-J", "-S", "-", "-t", "live").rstrip("\n") + "\n"

    def wait_for(self, what: str, check: Callable[[str], bool], timeout_s: float = 8.0) -> str:
        deadline = time.monotonic() + timeout_s
        while True:
            text = self.screen()
            if check(text):
                return text
            if time.monotonic() > deadline:
                raise AssertionError(f"the screen never showed {what}:\n{text}")
            time.sleep(0.1)

    def kill(self) -> None:
        """End the server and everything in it; its socket file is not removed by tmux itself."""
        subprocess.run(["tmux", "-L", self.socket, "kill-server"], env=self.env, capture_output=True, timeout=10)
        if self.socket_path is not None:
            self.socket_path.unlink(missing_ok=True)


def _cli_env(redis_server: RedisServer, tmp_path: Path) -> dict[str, str]:
    env = {key: value for key, value in os.environ.items() if key != "SWAPLAB_PLAIN"}
    env.update(
        SWAPLAB_REDIS_URL=redis_server.url,
        SWAPLAB_REDIS_PASSWORD_FILE=str(tmp_path / "no-password"),  # never the developer's own Redis password
        TERM="xterm-256color",
    )
    env.pop("SWAPLAB_REDIS_PASSWORD", None)
    return env


@pytest.fixture(name="tmux_env")
def tmux_env_fixture(redis_server: RedisServer, tmp_path: Path) -> Iterator[Tmux]:
    require_tools(("tmux",))
    session = Tmux(_cli_env(redis_server, tmp_path))
    try:
        yield session
    finally:
        session.kill()


def _store(redis_server: RedisServer, tmp_path: Path) -> CampaignStore:
    """A stored two-run, two-node campaign (campaigns/pair.yaml, repeated twice)."""
    path = tmp_path / "pair.yaml"
    text = (REPO / "campaigns" / "pair.yaml").read_text()
    path.write_text(text.replace("../inventory/local.yml", str(REPO / "inventory/local.yml")) + "repeats: 2\n")
    campaign = load_campaign(path)
    store = CampaignStore(redis_server.client())
    store.create(CID, campaign, plan_runs(campaign))
    return store


def _start_run(store: CampaignStore, rid: str) -> None:
    store.set_run_status(CID, rid, "preparing")
    store.event(CID, kind="phase", run=rid, node="", phase="kernel", detail="linux-image-amd64")
    store.set_run_status(CID, rid, "provisioning", nodes=NODES, attempt=1)
    for node in NODES:
        store.event(CID, kind="phase", run=rid, node=node, phase="boot", detail="6.1.0-57-amd64, 256 MiB RAM")
        store.event(CID, kind="phase", run=rid, node=node, phase="workload", detail=WORKLOAD)
    store.set_run_status(CID, rid, "running")


def _swap(store: CampaignStore, rid: str, step: int) -> None:
    for factor, node in enumerate(NODES, start=1):
        mib = 16 * step * factor
        detail = f"progress write 1 {mib}"
        store.event(CID, kind="swap", run=rid, node=node, out_mib=mib / 2, in_mib=0.0, detail=detail)


def _finish_run(store: CampaignStore, rid: str, verdicts: dict[str, str]) -> None:
    for node in NODES:
        store.event(CID, kind="phase", run=rid, node=node, phase="collect")
        store.event(CID, kind="phase", run=rid, node=node, phase="done")
    store.set_run_status(CID, rid, "evaluating")
    nodes = [_node_entry(node, verdict) for node, verdict in verdicts.items()]
    verdict = "fail" if "fail" in verdicts.values() else "pass"
    entry = {
        "run_id": rid,
        "kernel": "linux-image-amd64",
        "verdict": verdict,
        "exit_code": 3 if verdict == "fail" else 0,
        "reasons": [],
        "nodes": nodes,
    }
    store.set_run_status(CID, rid, "done", verdict=verdict, result=entry)


def _node_entry(node: str, verdict: str) -> dict[str, Any]:
    """A node's part of a judged run, as print_summary reads it."""
    return {
        "node": node,
        "verdict": verdict,
        "kernel": {"kver": "6.1.0-57-amd64"},
        "swap_out_mib": 160.0,
        "swap_in_mib": 80.0,
        "phases_s": {"boot": 7.0, "mount": 1.0, "workload": 25.0},
        "reasons": ["3 bad pages after swap-in"] if verdict == "fail" else [],
    }


def _node_line(screen: str, rid: str, node: str) -> str | None:
    """The live line of ``node`` of ``rid``: phase, MiB out and in, percentage, elapsed."""
    pattern = (
        rf"^{rid} {node} +workload +(\d+:\d\d) +out +[\d.]+ / in +[\d.]+ MiB +\S+ +\d+%  write 1/1, \d+/320 MiB *$"
    )
    found = re.findall(pattern, screen, re.MULTILINE)
    return found[-1] if found else None


def test_watch_draws_node_lines_and_finished_runs_in_a_terminal(
    redis_server: RedisServer, tmp_path: Path, tmux_env: Tmux
) -> None:
    store = _store(redis_server, tmp_path)
    store.set_campaign_status(CID, "running")
    tmux_env.start(f"{shlex.quote(str(SWAPLAB))} watch {CID}")
    _start_run(store, "r001")
    _swap(store, "r001", 1)

    screen = tmux_env.wait_for("a live line per node", lambda s: all(_node_line(s, "r001", n) for n in NODES))
    print(f"--- live screen ---\n{screen}")
    assert re.search(
        r"^r001 node1 +workload +\d:\d\d +out +8\.0 / in +0\.0 MiB +─{12} +2%  write 1/1, 16/320 MiB$",
        screen,
        re.MULTILINE,
    )
    assert re.search(
        r"^r001 node2 +workload +\d:\d\d +out +16\.0 / in +0\.0 MiB +━─{11} +5%  write 1/1, 32/320 MiB$",
        screen,
        re.MULTILINE,
    )
    assert "swapped out" not in screen  # no log lines on a terminal
    first = _node_line(screen, "r001", "node1")
    tmux_env.wait_for("the elapsed time ticking", lambda s: _node_line(s, "r001", "node1") not in (None, first))

    for step in (2, 3, 4):
        _swap(store, "r001", step)
    tmux_env.wait_for(
        "the MiB growing",
        lambda s: (
            re.search(r"^r001 node2 .* out 64\.0 / in  0\.0 MiB .* 20%  write 1/1, 128/320 MiB$", s, re.M) is not None
        ),
    )

    _finish_run(store, "r001", {"node1": "pass", "node2": "pass"})
    _start_run(store, "r002")
    _swap(store, "r002", 1)
    screen = tmux_env.wait_for("r001 finished, r002 live", lambda s: all(_node_line(s, "r002", n) for n in NODES))
    print(f"--- second run ---\n{screen}")
    finished = re.compile(
        r"^\[\d\d:\d\d:\d\d\] r001 PASS +linux-image-amd64 / overcommit #1  nodes: node1 pass, node2 pass$", re.M
    )
    assert finished.search(screen)
    assert "r001 node" not in screen  # r001's node lines left the live area when it finished
    _finish_run(store, "r002", {"node1": "pass", "node2": "fail"})
    Scheduler(store.redis, RecordingDispatch(), tmp_path / "results").finish(CID)

    screen = tmux_env.wait_for("the command's exit", lambda s: "[exit " in s)
    print(f"--- final screen ---\n{screen}")
    assert "[exit 3]" in screen  # the campaign's exit code: a run failed
    assert len(finished.findall(screen)) == 1
    assert re.search(
        r"^\[\d\d:\d\d:\d\d\] r002 FAIL +linux-image-amd64 / overcommit #2  nodes: node1 pass, node2 fail"
        r"  - node2: 3 bad pages after swap-in$",
        screen,
        re.M,
    )
    assert "r002 node" not in screen
    assert re.search(r"campaign \S+: FAIL \(exit 3\)", screen)  # the summary on stdout follows


def test_watch_through_a_pipe_prints_the_log_lines(redis_server: RedisServer, tmp_path: Path) -> None:
    store = _store(redis_server, tmp_path)
    store.set_campaign_status(CID, "running")
    _start_run(store, "r001")
    _swap(store, "r001", 1)
    _finish_run(store, "r001", {"node1": "pass", "node2": "fail"})
    _start_run(store, "r002")
    _finish_run(store, "r002", {"node1": "pass", "node2": "pass"})
    Scheduler(store.redis, RecordingDispatch(), tmp_path / "results").finish(CID)

    proc = subprocess.run(
        [str(SWAPLAB), "watch", CID], env=_cli_env(redis_server, tmp_path), capture_output=True, text=True, timeout=30
    )

    lines = [line.split("] ", 1)[1] for line in proc.stderr.splitlines()]
    assert proc.returncode == 3, proc.stderr
    assert not ESCAPES.search(proc.stderr)
    assert "r001 node1   boot      6.1.0-57-amd64, 256 MiB RAM" in lines
    assert "r001 node1   workload  touch 320 MiB x 1 pass(es)" in lines
    assert "r001 node1   workload  swapped out     8.0 MiB, in     0.0 MiB progress write 1 16" in lines
    assert "r001         done" in lines and lines[-1] == "campaign     done"
    assert "FAIL (exit 3)" in proc.stdout
