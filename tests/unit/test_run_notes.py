"""`swaplab run`'s notes never raise: a reader of stderr that went away must not keep the
services it started from being stopped (their stop writes notes)."""

from __future__ import annotations

import contextlib
import os
import sys

import pytest

from orchestrator.cli.campaign_cmds import _note


def test_a_note_to_a_closed_pipe_is_dropped(monkeypatch: pytest.MonkeyPatch) -> None:
    read, write = os.pipe()
    os.close(read)  # the reader died
    broken = os.fdopen(write, "w")
    monkeypatch.setattr(sys, "stderr", broken)
    _note("stopping redis-server")  # would be BrokenPipeError
    monkeypatch.undo()
    with contextlib.suppress(OSError):  # its buffer cannot be flushed either
        broken.close()
