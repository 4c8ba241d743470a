"""A guest's console, fed by a real process as a guest would feed it: a WARN loop stays
under the cap on disk (measured while it runs), with its head and its tail; a line that
never ends costs one line of memory; every event is counted, the ones left out of the
file too, and what a node result keeps of them is capped.

The "guest" writes to the socket pair QEMU's serial chardev gets (``SocketConsole``), or
is the console command of a lab (``CommandCapture``).
"""

from __future__ import annotations

import contextlib
import subprocess
import threading
import time
import tracemalloc
from pathlib import Path

import pytest
from pydantic import ValidationError

from model.console import EVENTS_PER_KIND, EventKind
from model.runspec import NodeResult
from workers.console_capture import CommandCapture
from workers.console_log import ConsoleLog, SocketConsole, read_head_tail, tail_lines
from workers.coordination.streams import ConsoleTail
from workers.pipeline.evidence import last_line

pytestmark = [pytest.mark.integration, pytest.mark.timeout(60)]

WARN = "[   10.00] WARNING: CPU: 0 PID: 1 at mm/vmscan.c:100 shrink_folio_list+0x1/0x2"
OOM = "[   11.00] Out of memory: Killed process 7 (hog) total-vm:1kB"
GUEST = f"""
echo '[    0.50] swaplab: ready'
yes '{WARN}' | head -n 50000
echo '{OOM}'
yes '{WARN}' | head -n 50000
printf '[   99.00] the last words'
"""  # ~8 MB, the last line without its newline


def _largest_size(path: Path, stop: threading.Event, seen: list[int]) -> None:
    while not stop.wait(0.005):
        with contextlib.suppress(OSError):  # between a rewrite's rename and the next stat
            seen.append(path.stat().st_size)


def test_a_serial_console_in_a_warn_loop_stays_under_its_cap_with_head_and_tail(tmp_path: Path) -> None:
    path = tmp_path / "console.log"
    live = ConsoleTail(path)
    console = SocketConsole(path)
    guest = subprocess.Popen(["sh", "-c", GUEST], stdout=console.program_fd(), stdin=subprocess.DEVNULL)
    console.start()
    sizes: list[int] = []
    stop = threading.Event()
    watcher = threading.Thread(target=_largest_size, args=(path, stop, sizes))
    watcher.start()
    assert guest.wait(timeout=30) == 0
    console.stop()
    stop.set()
    watcher.join()
    cap = console.log.disk_bytes_max
    assert max(sizes) <= cap and path.stat().st_size <= cap < 4 * 1024 * 1024
    assert console.log.cut_bytes > 4_000_000  # of ~8 MB
    text = read_head_tail(path)
    assert text.startswith("[    0.50] swaplab: ready\n")  # the head: the boot
    assert last_line(text) == "[   99.00] the last words"  # the tail, to the unterminated end
    left_out = text[text.index("bytes of console left out here") :]
    assert left_out.index(OOM) < left_out.index("[swaplab: end of the left-out part]")
    assert console.log.counts() == {EventKind.OOM_KILL: 1}
    [event] = console.log.tally().kept
    assert event.line == 50_002 and event.text == OOM.strip()
    assert live.new_counts(final=True) == {EventKind.OOM_KILL: 1}  # the live counter saw it
    assert tail_lines(path)[-1] == "[   99.00] the last words"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["console.log"]  # no rewrite left behind


def test_a_console_command_that_never_sends_a_newline_costs_one_line(tmp_path: Path) -> None:
    target = tmp_path / "console.log"
    flood = 20_000_000
    script = f"head -c {flood} /dev/zero | tr '\\0' x; echo; echo '{OOM}'; sleep 30"
    tracemalloc.start()
    try:
        capture = CommandCapture(("sh", "-c", script), target)
        deadline = time.monotonic() + 30
        while capture.log.counts() != {EventKind.OOM_KILL: 1}:
            assert time.monotonic() < deadline, "the line after the flood was not counted"
            time.sleep(0.02)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    started = time.monotonic()
    capture.stop()
    assert time.monotonic() - started < 3  # the command's whole session ended, sleep included
    assert peak < 4 * 1024 * 1024, f"{peak / 2**20:.1f} MiB held for a line without end"
    kept = target.read_bytes()
    assert len(kept) < 8192
    assert f"[swaplab: line cut, {flood - 4096} bytes left out]\n{OOM}\n".encode() in kept


def test_what_a_node_result_keeps_of_a_flood_of_events_is_capped(tmp_path: Path) -> None:
    log = ConsoleLog.create(tmp_path / "console.log")
    log.write(f"{OOM}\n".encode() * 1000 + b"[ 12.0] nfs: server 10.0.2.100 not responding, still trying\n" * 5)
    log.close()
    tally = log.tally()
    kinds = [event.kind for event in tally.kept]
    assert kinds == [EventKind.OOM_KILL] * EVENTS_PER_KIND + [EventKind.NFS_NOT_RESPONDING] * 5
    assert tally.count_json()["oom_kill"] == 1000 and tally.dropped == 1000 - EVENTS_PER_KIND
    events = [event.to_json() for event in tally.kept]
    NodeResult(run_id="r001", node="n", console_events=events)  # what the worker sends passes
    with pytest.raises(ValidationError):  # a result claiming more never does
        NodeResult(run_id="r001", node="n", console_events=events * 8)
