"""Journals of what a worker changed outside itself (a fault applied, boot files published):
one JSON entry per change in a folder under /run, naming its owner by pid and start time,
so that the next worker start undoes what a worker that died left, and no more."""

from __future__ import annotations

import json
import logging
import os
import re
from collections.abc import Iterator
from pathlib import Path
from typing import TypeVar

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from workers.process import start_ticks

log = logging.getLogger(__name__)


class JournalEntry(BaseModel):
    """What every entry says: the process that made the change (pid and start time)."""

    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)

    owner_pid: int = Field(gt=0)
    owner_start: int = Field(ge=0)


Entry = TypeVar("Entry", bound=JournalEntry)


def owner() -> tuple[int, int]:
    """This process, as an entry names its owner."""
    pid = os.getpid()
    return pid, start_ticks(pid) or 0


def orphaned_entries(
    folder: Path, model: type[Entry], what: str, name: re.Pattern[str] | None = None
) -> Iterator[tuple[Path, Entry]]:
    """The entries in ``folder`` (``*.json`` read as ``model``) whose owner has died; a live
    owner's are its own to undo. An entry that does not read as ``model`` is logged as
    ``what`` and removed."""
    if not folder.is_dir():
        return
    for path in sorted(folder.glob("*.json")):
        if name is not None and not name.fullmatch(path.name):
            continue
        try:
            entry = model.model_validate(json.loads(path.read_text()))
        except (OSError, ValueError, ValidationError) as err:
            log.error("%s %s is unusable (%s); removed", what, path, err)
            path.unlink(missing_ok=True)
            continue
        if start_ticks(entry.owner_pid) == entry.owner_start:
            continue
        yield path, entry
