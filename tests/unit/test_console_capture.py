"""Console capture for nodes swaplab does not boot: only what comes after the session
starts, in the form the console parser reads."""

from __future__ import annotations

import time
from pathlib import Path

from model.console import EventKind, parse_console
from workers.console_capture import CommandCapture, FileFollower, kmsg_line
from workers.coordination.streams import FOLLOW_BYTES, ConsoleTail

HUNG = "INFO: task kworker/u2:1:57 blocked for more than 120 seconds."


def test_kmsg_records_read_like_dmesg_and_older_ones_are_dropped() -> None:
    since_us = 100_000_000  # the node had been up 100 s when the session started
    assert kmsg_line(f"3,812,242123456,-;{HUNG}", since_us) == f"[  242.123456] {HUNG}"
    assert kmsg_line("6,10,99999999,-;an old line from before the run", since_us) is None
    assert kmsg_line(" SUBSYSTEM=net", since_us) is None  # dictionary continuation
    [event] = parse_console(str(kmsg_line(f"3,812,242123456,-;{HUNG}", since_us)))
    assert event.kind is EventKind.HUNG_TASK and event.kernel_time_s == 242.123456


def _wait_for(path: Path, text: str) -> str:
    deadline = time.monotonic() + 5
    while text not in (content := path.read_text() if path.exists() else ""):
        assert time.monotonic() < deadline, content
        time.sleep(0.05)
    return content


def test_a_console_file_is_followed_from_its_end(tmp_path: Path) -> None:
    source, target = tmp_path / "conserver.log", tmp_path / "console.log"
    source.write_text("yesterday: Out of memory: Killed process 1 (x)\n")
    follower = FileFollower(source, target)
    with source.open("a") as log:
        log.write(f"[ 12.0] {HUNG}\n")
    content = _wait_for(target, HUNG)
    follower.stop()
    assert "yesterday" not in content


def test_a_console_command_is_captured_until_stopped(tmp_path: Path) -> None:
    target = tmp_path / "console.log"
    capture = CommandCapture(("sh", "-c", "echo serial line one; sleep 30"), target)
    _wait_for(target, "serial line one")
    capture.stop()
    assert capture.source == "command sh -c echo serial line one; sleep 30"


def test_a_followed_console_file_that_never_ends_its_line_is_cut(tmp_path: Path) -> None:
    source, target = tmp_path / "conserver.log", tmp_path / "console.log"
    source.write_text("")
    follower = FileFollower(source, target)
    with source.open("ab") as log:
        log.write(b"y" * 3_000_000)
        log.write(f"\n[ 12.0] {HUNG}\n".encode())
    content = _wait_for(target, HUNG)
    follower.stop()
    assert len(content) < 8192 and "[swaplab: line cut, 2995904 bytes left out]" in content
    assert follower.log.counts() == {EventKind.HUNG_TASK: 1}


def test_a_console_file_nobody_here_writes_is_read_a_bounded_chunk_at_a_time(tmp_path: Path) -> None:
    console = tmp_path / "console.log"
    console.write_bytes(b"z" * (3 * FOLLOW_BYTES) + f"\n[ 1.0] {HUNG}\n".encode())
    tail = ConsoleTail(console)
    seen = [tail.new_counts() for _ in range(4)]  # one FOLLOW_BYTES read each
    assert seen == [{}, {}, {}, {EventKind.HUNG_TASK: 1}]
