"""``swaplab history CAMPAIGN --changes``: change points over a campaign's nightly history.

The body of the option, as a function the ``history`` command calls: it reads the
campaign's stored instances, detects the change points per figure
(``orchestrator.changepoints``) and prints one line per change point, or JSON. It only
reads: the change points the history dashboard shows are stored by the control plane as
each night is recorded (the ``changes`` sink, orchestrator.sinks).

Everything heavy (SQLAlchemy, numpy, the E-divisive library) is imported when the
function runs, so ``swaplab history`` without ``--changes`` does not load it.
"""

from __future__ import annotations

import json
import sys
from typing import Any

import click

from model.display import printable
from model.exitcode import ExitCode

__all__ = ["history_changes"]


def history_changes(campaign: str, as_json: bool, show_all: bool) -> None:
    """Detect and print the change points of ``campaign``'s nights.

    ``show_all``: also the change points below their figure's tolerance. Exit 2 when the
    database cannot answer or holds no instance of ``campaign``.
    """
    # Imported here, not at the top: history_cmds imports this module.
    from orchestrator.changepoints import HISTORY_NIGHTS, detect_changes
    from orchestrator.cli.history_cmds import query_db

    instances: list[dict[str, Any]] = query_db(lambda db: db.history(campaign=campaign, limit=HISTORY_NIGHTS))
    if not instances:
        click.echo(f"error: no stored instance of campaign {campaign!r} in the results database", err=True)
        click.echo("(`swaplab history` lists what is stored; a campaign is named as in its file)", err=True)
        sys.exit(ExitCode.BAD_INPUT_OR_INFRA)
    analysis = detect_changes(campaign, instances)
    if as_json:
        click.echo(json.dumps(analysis.to_json(show_all), indent=2))
        return
    for line in analysis.lines(show_all):
        click.echo(printable(line))
    for note in analysis.notes(show_all):
        click.echo(printable(f"note: {note}"), err=True)

