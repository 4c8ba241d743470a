"""Console-event parsing: real logs captured from the local lab, plus kernel lines as the
kernel prints them for the failures that the local lab cannot provoke on demand."""

from __future__ import annotations

from pathlib import Path

import pytest

from model.console import (
    EVENT_TEXT_MAX,
    EventKind,
    EventTally,
    classify_line,
    count_by_kind,
    last_kernel_time,
    may_hold_events,
    parse_console,
)

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "console"


def fixture(kind: str) -> str:
    [path] = sorted(FIXTURES.glob(f"{kind}-*.log"))
    return path.read_text(errors="replace")


def test_fixtures_carry_kernel_and_date_headers() -> None:
    for path in FIXTURES.glob("*.log"):
        head = path.read_text(errors="replace").splitlines()[:4]
        assert head[1].startswith("# kernel: linux-image-")
        assert head[3].startswith("# captured: 20")


def test_passing_run_console_has_no_events() -> None:
    text = fixture("pass")
    assert "swaplab: ready" in text
    assert [e for e in parse_console(text) if e.kind is not EventKind.NFS_OK] == []


def test_oom_run_console_has_the_oom_kill_with_its_kernel_time() -> None:
    kills = [e for e in parse_console(fixture("oom")) if e.kind is EventKind.OOM_KILL]
    assert kills, "the OOM fixture must contain the OOM killer's line"
    assert "Out of memory: Killed process" in kills[0].text
    assert kills[0].kernel_time_s is not None and kills[0].line > 4


@pytest.mark.parametrize(
    ("line", "kind"),
    [
        ("[  242.613512] INFO: task kworker/u2:1:38 blocked for more than 120 seconds.", EventKind.HUNG_TASK),
        ("[   12.000001] BUG: kernel NULL pointer dereference, address: 0000000000000008", EventKind.OOPS),
        ("[   12.000002] Oops: 0000 [#1] PREEMPT SMP NOPTI", EventKind.OOPS),
        (
            "[   12.000003] general protection fault, probably for non-canonical address 0xdead: 0000 [#1] SMP",
            EventKind.OOPS,
        ),
        ("[   13.100000] Kernel panic - not syncing: Attempted to kill init! exitcode=0x00000009", EventKind.PANIC),
        ("[  300.500000] nfs: server 10.0.2.2 not responding, still trying", EventKind.NFS_NOT_RESPONDING),
        ("[  360.700000] nfs: server 10.0.2.2 OK", EventKind.NFS_OK),
        ("[   88.000000] Write error -5 on dio swapfile (8388608)", EventKind.SWAP_WRITE_ERROR),
        ("[   20.000000] swap activate: swapfile has holes", EventKind.SWAP_ACTIVATE_ERROR),
        ("[   50.123456] Out of memory: Killed process 211 (swaplab-node) total-vm:459012kB", EventKind.OOM_KILL),
        (
            "[   61.204110] kworker/u2:2: page allocation failure: order:0, mode:0x820(GFP_ATOMIC), nodemask=(null)",
            EventKind.PAGE_ALLOCATION_FAILURE,
        ),
        ("[    0.000000] Linux version 6.1.0-56-amd64 (debian-kernel@lists.debian.org)", None),
        ("swaplab: ready hostname=node1 kver=6.1.0-56-amd64", None),
    ],
)
def test_kernel_lines_are_classified(line: str, kind: EventKind | None) -> None:
    assert classify_line(line) == kind
    assert kind is None or may_hold_events(line.encode())  # the quick look never misses one


@pytest.mark.parametrize(
    "line",
    [
        "[    9.1] kernel BUG at mm/swapfile.c:1234!",
        "[    9.2] BUG: unable to handle page fault for address: ffff888",
        "[    9.3] Unable to handle kernel paging request at virtual address 0000",
        "[    9.4] Memory cgroup out of memory: Killed process 5 (hog)",
        "[    9.5] Out of memory: Kill process 5 (hog) score 900",
        "[    9.6] Write-error on swap-device (254:0:1234)",
        "[    9.7] Read-error on swap-device (254:0:1234)",
        "[    9.8] swapon: swapfile has holes",
    ],
)
def test_every_pattern_is_seen_by_the_quick_look(line: str) -> None:
    assert classify_line(line) is not None and may_hold_events(line.encode())


def test_every_event_of_the_fixtures_is_seen_by_the_quick_look() -> None:
    for path in FIXTURES.glob("*.log"):
        for event in parse_console(path.read_text(errors="replace")):
            assert may_hold_events(event.text.encode()), (path.name, event.text)


def test_a_tally_keeps_the_first_events_of_each_kind_and_counts_them_all() -> None:
    flood = "[ 1.0] nfs: server 10.0.2.100 not responding, still trying\n" * 500
    text = flood + "[ 2.0] Out of memory: Killed process 9 (hog)\n" + flood
    tally = EventTally.of(parse_console(text), per_kind=3)
    assert [(e.kind, e.line) for e in tally.kept] == [
        (EventKind.NFS_NOT_RESPONDING, 1),
        (EventKind.NFS_NOT_RESPONDING, 2),
        (EventKind.NFS_NOT_RESPONDING, 3),
        (EventKind.OOM_KILL, 501),  # a flood of one kind never hides the first of another
    ]
    assert tally.count_json()["nfs_not_responding"] == 1000 and tally.count_json()["panic"] == 0
    assert tally.dropped == 997


def test_an_event_keeps_at_most_a_bounded_text() -> None:
    [event] = parse_console("[ 3.0] BUG: " + "x" * 10_000)
    assert len(event.text) == EVENT_TEXT_MAX


def test_counts_and_last_kernel_time() -> None:
    text = "[    1.500000] ok\n[    2.250000] nfs: server 10.0.2.2 not responding, timed out\nplain line"
    assert count_by_kind(parse_console(text))["nfs_not_responding"] == 1
    assert last_kernel_time(text) == 2.25


def test_swap_write_error_caught_on_the_local_lab_is_a_kernel_failure() -> None:
    errors = [e for e in parse_console(fixture("swap-write-error")) if e.kind is EventKind.SWAP_WRITE_ERROR]
    assert errors and "Write error -12 on dio swapfile" in errors[0].text
