"""Fault actions against the real kernel: drop tables in a lab network's namespace (frames
through real taps), SIGSTOP/SIGCONT of a real process, and a later worker start undoing
what a worker killed mid-fault left."""

from __future__ import annotations

import itertools
import os
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.integration.lab_frames import Guest, carries, host_rules_and_qdiscs, nft_ruleset, udp
from workers.faults import actions
from workers.lab import network
from workers.lab.network import LabNetwork

REPO = Path(__file__).resolve().parents[2]


pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]


@pytest.fixture(autouse=True)
def journal(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    folder = tmp_path / "faults"
    monkeypatch.setattr(actions, "JOURNAL_DIR", folder)
    return folder


def arrived(sender: Guest, receiver: Guest, tag: bytes, count: int, wait_s: float = 0.2, pad: bytes = b"") -> int:
    """How many of ``count`` frames (``pad`` makes them larger) sent at once from ``sender``
    reach ``receiver`` within ``wait_s``."""
    sender.send(*(udp(sender.port, receiver.port, marker=tag + b"-%d." % n + pad) for n in range(count)))
    time.sleep(wait_s)
    got = drain(receiver)
    return sum(carries(got, tag + b"-%d." % n) for n in range(count))


def drain(receiver: Guest) -> list[bytes]:
    """Every frame waiting on ``receiver``'s tap."""
    got: list[bytes] = []
    while True:
        try:
            got.append(os.read(receiver.fd, 65536))
        except BlockingIOError:
            return got


def test_a_link_down_drops_the_nodes_frames_both_ways_and_undo_restores_them(
    net: LabNetwork,
    guests: tuple[Guest, Guest, Guest],
    journal: Path,
) -> None:
    server, a, b = guests
    host_before = host_rules_and_qdiscs()
    fault = actions.drop("t.r001.a1.a.0", net.lab, a.port.tap, "both", None)
    fault.apply()
    try:
        assert (journal / "t.r001.a1.a.0.json").is_file()
        assert arrived(a, server, b"down-out", 5) == 0
        assert arrived(server, a, b"down-in", 5) == 0
        assert arrived(b, server, b"other-node", 5) == 5  # only node a's link is down
        network.up(net)  # a lab brought up again mid-fault replaces its own table, not the fault's
        assert arrived(a, server, b"after-up", 3) == 0
        assert host_rules_and_qdiscs() == host_before  # never the host's rules
    finally:
        fault.undo()
    assert "swaplab_fault_" not in nft_ruleset(net.namespace)
    assert not (journal / "t.r001.a1.a.0.json").exists()
    assert arrived(a, server, b"back", 5) == 5


def test_loss_in_one_direction_drops_about_its_share_there_only(
    net: LabNetwork,
    guests: tuple[Guest, Guest, Guest],
) -> None:
    server, a, _ = guests
    fault = actions.drop("t.r001.a1.a.1", net.lab, a.port.tap, "out", 50.0)
    fault.apply()
    try:
        sent = 200
        through = sum(arrived(a, server, b"loss%d" % batch, 40) for batch in range(sent // 40))
        assert 0.3 * sent <= through <= 0.7 * sent, through
        assert arrived(server, a, b"loss-in", 20) == 20  # "out" leaves what the node receives alone
    finally:
        fault.undo()


@pytest.fixture
def sleeper() -> Iterator[subprocess.Popen[bytes]]:
    proc = subprocess.Popen(["sleep", "300"])
    state(proc.pid, "S")  # asleep, past its exec
    yield proc
    proc.kill()
    proc.wait()


def state(pid: int, expected: str) -> str:
    """The process's state once it is ``expected`` (a signal is delivered asynchronously), or after 3 s."""
    deadline = time.monotonic() + 3
    while True:
        now = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        if now == expected or time.monotonic() > deadline:
            return now
        time.sleep(0.01)


def test_a_stall_stops_the_process_and_undo_resumes_it(sleeper: subprocess.Popen[bytes]) -> None:
    fault = actions.stall("t.r001.a1.s.0", lambda: sleeper.pid)
    fault.apply()
    assert state(sleeper.pid, "T") == "T"
    fault.undo()
    assert state(sleeper.pid, "S") == "S"
    fault.undo()  # idempotent


def test_a_stall_stops_the_server_serving_when_it_begins(sleeper: subprocess.Popen[bytes]) -> None:
    # A restart earlier in the run replaced the server's process: the stall asks again.
    serving = [sleeper.pid]
    fault = actions.stall("t.r001.a1.s.2", lambda: serving[0])
    restarted = subprocess.Popen(["sleep", "300"])
    try:
        state(restarted.pid, "S")
        serving[0] = restarted.pid
        fault.apply()
        assert (state(restarted.pid, "T"), state(sleeper.pid, "S")) == ("T", "S")
        fault.undo()
        assert state(restarted.pid, "S") == "S"
    finally:
        restarted.kill()
        restarted.wait()


def test_a_stall_of_a_recycled_pid_resumes_nothing(sleeper: subprocess.Popen[bytes]) -> None:
    fault = actions.stall("t.r001.a1.s.1", lambda: sleeper.pid)
    fault.entry = fault.entry.model_copy(update={"pid_start": 1})  # "another process" with this pid
    with pytest.raises(actions.FaultActionError, match="gone"):
        fault.apply()
    assert state(sleeper.pid, "S") == "S"


def test_a_later_worker_start_undoes_what_a_killed_worker_left(
    net: LabNetwork,
    guests: tuple[Guest, Guest, Guest],
    sleeper: subprocess.Popen[bytes],
    journal: Path,
) -> None:
    server, a, _ = guests
    # A "worker" applies a stall and a link-down, then dies without undoing either.
    worker = textwrap.dedent(
        f"""
        import os
        from pathlib import Path
        from workers.faults import actions
        actions.JOURNAL_DIR = Path({str(journal)!r})
        actions.stall("dead.r001.a1.s.0", lambda: {sleeper.pid}).apply()
        actions.drop("dead.r001.a1.a.0", {net.lab!r}, {a.port.tap!r}, "both", None).apply()
        os._exit(9)
        """
    )
    subprocess.run([sys.executable, "-c", worker], cwd=REPO, check=False, timeout=60)
    assert state(sleeper.pid, "T") == "T" and arrived(a, server, b"dead-down", 3) == 0
    # A live worker's fault (this process's) is its own to undo: left alone.
    mine = actions.stall("live.r001.a1.s.0", lambda: sleeper.pid)
    mine.applied = True
    actions._journal(mine.name, mine.entry)

    undone = actions.undo_leftovers()

    assert sorted(undone) == ["dead.r001.a1.a.0 (drop)", "dead.r001.a1.s.0 (stall)"]
    assert state(sleeper.pid, "S") == "S"
    assert arrived(a, server, b"dead-back", 3) == 3
    assert sorted(p.name for p in journal.iterdir()) == ["live.r001.a1.s.0.json"]
    mine.undo()


def burst(sender: Guest, receiver: Guest, tag: bytes, count: int, wait_s: float) -> int:
    """How many of ``count`` full-size frames sent at once reach ``receiver`` within ``wait_s``."""
    return arrived(sender, receiver, tag, count, wait_s, pad=b"x" * 1400)


def tc_show(net: LabNetwork, tap: str) -> str:
    return network.tc(net.namespace, "qdisc", "show", "dev", tap)


@pytest.mark.parametrize("direction", ["out", "in"])
def test_bandwidth_shapes_the_nodes_link_in_its_direction_only(
    net: LabNetwork, guests: tuple[Guest, Guest, Guest], direction: str
) -> None:
    server, a, b = guests
    host_before = host_rules_and_qdiscs()
    fault = actions.shape("t.r001.a1.a.2", net.lab, a.port.tap, server.port.tap, str(a.port.address), direction, 1.0)
    node, other = (a, b)
    sent, into = (node, server) if direction == "out" else (server, node)
    fault.apply()
    try:
        # 200 frames of 1.4 kB at once are 2.2 Mbit: at 1 Mbit/s about 60 pass in 0.5 s.
        assert burst(sent, into, b"shaped", 200, 0.5) < 120
        # The other direction, and another node's link, are not shaped.
        back = (server, node) if direction == "out" else (node, server)
        time.sleep(1.5)  # the shaped queue drains
        assert burst(*back, b"unshaped", 200, 0.3) == 200
        assert burst(other, server, b"other", 200, 0.3) == 200
        assert "5e:" in tc_show(net, server.port.tap if direction == "out" else a.port.tap)
        assert host_rules_and_qdiscs() == host_before  # never the host's qdiscs
    finally:
        fault.undo()
    fault.undo()  # idempotent
    assert "5e:" not in tc_show(net, server.port.tap) + tc_show(net, a.port.tap)
    time.sleep(1.5)
    assert burst(sent, into, b"back", 200, 0.3) == 200


def test_a_flapping_link_goes_down_and_up_until_undone(net: LabNetwork, guests: tuple[Guest, Guest, Guest]) -> None:
    server, a, _ = guests
    fault = actions.flap("t.r001.a1.a.3", net.lab, a.port.tap, "both", 0.4)
    fault.apply()
    try:
        # One frame every 0.1 s for 2.4 s: the link is down for 0.4 s, up for 0.4 s, ...
        through = [arrived_within(a, server, b"flap%d" % n, 0.1) for n in range(24)]
    finally:
        fault.undo()
    changes = sum(1 for before, after in itertools.pairwise(through) if before != after)
    assert not through[0] and any(through) and changes >= 3, through  # down first, then up and down again
    assert fault.flips >= 4
    assert "swaplab_fault_" not in nft_ruleset(net.namespace)
    assert arrived(a, server, b"flap-back", 5) == 5


def arrived_within(sender: Guest, receiver: Guest, marker: bytes, wait_s: float) -> bool:
    sender.send(udp(sender.port, receiver.port, marker=marker + b"."))
    time.sleep(wait_s)
    return carries(drain(receiver), marker + b".")
