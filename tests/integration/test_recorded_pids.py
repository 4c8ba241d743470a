"""Stopping a recorded daemon for real: one that ignores the polite signal is killed
rather than reported stopped while it still runs (and holds its ports)."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from workers.process import record_pid, recorded_pid, start_ticks, stop_recorded_pid

pytestmark = pytest.mark.integration

_DEAF_TO_SIGTERM = "import signal, sys, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); print(1, flush=True); time.sleep(60)"


def test_a_process_that_ignores_sigterm_is_killed_and_its_record_dropped(tmp_path: Path) -> None:
    proc = subprocess.Popen([sys.executable, "-c", _DEAF_TO_SIGTERM], stdout=subprocess.PIPE)
    assert proc.stdout is not None and proc.stdout.readline() == b"1\n"  # its handler is in place
    record = tmp_path / "daemon.pid"
    record_pid(record, proc.pid)
    started = time.monotonic()
    assert stop_recorded_pid(record, signal.SIGTERM, 0.5)
    assert start_ticks(proc.pid) is None  # gone (the stopper may have reaped it, so no exit status here)
    proc.wait(timeout=5)
    assert time.monotonic() - started < 5.0 and not record.exists()


def test_stopping_what_is_not_recorded_says_nothing_ran(tmp_path: Path) -> None:
    assert recorded_pid(tmp_path / "none.pid") is None
    assert not stop_recorded_pid(tmp_path / "none.pid", signal.SIGTERM, 0.5)
