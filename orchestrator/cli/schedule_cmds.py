"""``swaplab schedule list|add|remove|run-now``: campaigns that run by themselves.

celery beat must run for schedules to fire (``celery -A orchestrator.app beat -S
redbeat.RedBeatScheduler``; the compose stack's ``beat`` service). See orchestrator.timetable.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Any

import click

from model.display import printable
from model.exitcode import ExitCode
from orchestrator import timetable
from orchestrator.cli.common import CAMPAIGN_FILE, load_or_exit
from orchestrator.cli.distributed_cmds import connect


@click.group()
def schedule() -> None:
    """Scheduled campaigns (nightly regression runs)."""


@schedule.command("add")
@click.argument("campaign_file", type=CAMPAIGN_FILE)
@click.option("--json", "as_json", is_flag=True)
def add(campaign_file: Path, as_json: bool) -> None:
    """Schedule CAMPAIGN_FILE by its `schedule:` (cron, timezone, missed); again to update it."""
    campaign = load_or_exit(campaign_file, as_json)
    info = _or_exit(lambda: timetable.add(connect().redis, campaign))
    _show([info], as_json)


@schedule.command("list")
@click.option("--json", "as_json", is_flag=True)
def listing(as_json: bool) -> None:
    """Every schedule: cron, time zone, next firing, what the last firings did."""
    client = connect().redis
    _show([timetable.describe(client, name) for name in timetable.names(client)], as_json)


@schedule.command("remove")
@click.argument("name")
def remove(name: str) -> None:
    """Stop scheduling campaign NAME (its log and past instances stay)."""
    _or_exit(lambda: timetable.remove(connect().redis, name))
    click.echo(f"schedule {name} removed")


@schedule.command("run-now")
@click.argument("name")
@click.option("--json", "as_json", is_flag=True)
def run_now(name: str, as_json: bool) -> None:
    """Fire schedule NAME now (skipped if its previous instance still runs)."""
    from orchestrator.tasks import submit  # the Celery app only where a campaign is sent

    store = connect()
    firing = _or_exit(lambda: timetable.run_now(store.redis, name, lambda campaign: submit(store, campaign)))
    if as_json:
        click.echo(json.dumps(firing.to_json(), indent=2))
    else:
        click.echo(printable(f"schedule {name}: {firing.kind} {firing.campaign_id} {firing.detail}".rstrip()))


def _or_exit(action: Any) -> Any:
    try:
        return action()
    except timetable.ScheduleError as err:
        click.echo(f"error: {err}", err=True)
        sys.exit(ExitCode.BAD_INPUT_OR_INFRA)


def _show(rows: list[dict[str, Any]], as_json: bool) -> None:
    if as_json:
        click.echo(json.dumps(rows, indent=2))
        return
    if not rows:
        click.echo("no schedules (swaplab schedule add FILE)")
    for row in rows:
        upcoming = time.strftime("%Y-%m-%d %H:%M %Z", time.localtime(row["next"])) if row["next"] else "never"
        click.echo(f"{row['name']}: '{row['cron']}' {row['timezone']}, missed: {row['missed']}; next {upcoming}")
        for entry in row["log"][:5]:
            when = time.strftime("%Y-%m-%d %H:%M", time.localtime(entry["due"]))
            click.echo(printable(f"  {when} {entry['kind']:<9} {entry['campaign_id']} {entry['detail']}".rstrip()))
