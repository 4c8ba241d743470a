"""``swaplab history``, ``show`` and ``report``: finished campaigns from the results database.

Redis holds a campaign while it is live; the database (SQLite in the cache by default,
``SWAPLAB_DB_URL`` for PostgreSQL) holds it for good. These commands read the database,
so they answer after Redis has forgotten a campaign; ``report`` falls back to Redis for a
campaign that has finished but is not stored yet (the database was down).
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import click
import redis

from model.campaign import CompareSpec
from model.display import printable
from model.exitcode import ExitCode
from model.figures import FIGURE_NAMES
from model.result import Campaign, RecordError, campaign_of
from model.state import redis_url
from orchestrator.store import CampaignStore

if TYPE_CHECKING:
    from orchestrator.history.db import ResultsDb

# orchestrator.reports.FORMATS (a test keeps them equal): SQLAlchemy and matplotlib load
# only when one of these commands runs, not for every swaplab command.
FORMATS = ("text", "html", "junit", "json")
T = TypeVar("T")

# The figures a history line shows, in this order: (name, heading, format).
HISTORY_FIGURES = (
    ("swap_out_mibps", "out MiB/s", "{:.1f}"),
    ("swap_in_mibps", "in MiB/s", "{:.1f}"),
    ("workload_wall_s", "work s", "{:.1f}"),
)


def query_db(ask: Callable[[ResultsDb], T]) -> T:
    """Ask the results database, or a clear error (exit 2) when it cannot be reached."""
    from orchestrator.history.db import ResultsDb, database_url
    from orchestrator.history.errors import DatabaseUnavailable

    try:
        with ResultsDb(database_url()) as db:
            return ask(db)
    except (DatabaseUnavailable, ValueError) as err:
        click.echo(f"error: the results database cannot answer ({err}); check SWAPLAB_DB_URL", err=True)
        sys.exit(ExitCode.BAD_INPUT_OR_INFRA)


@click.command()
@click.argument("campaign", required=False)
@click.option("--kernel", help="Only runs whose kernel label or release contains this.")
@click.option("--limit", type=click.IntRange(1, 10_000), default=20, show_default=True)
@click.option("--json", "as_json", is_flag=True, help="Print the rows as JSON.")
@click.option("--changes", is_flag=True, help="Change points over CAMPAIGN's nights, per figure (E-divisive means).")
@click.option(
    "--all", "show_all", is_flag=True, help="With --changes: also the changes below their figure's tolerance."
)
@click.option("--bisections", "bisections", is_flag=True, help="Past bisections (swaplab bisect) and their answers.")
@click.option("--bisection", "bisection", metavar="ID", help="Only the campaigns bisection ID ran as its steps.")
def history(
    campaign: str | None,
    kernel: str | None,
    limit: int,
    as_json: bool,
    changes: bool,
    show_all: bool,
    bisections: bool,
    bisection: str | None,
) -> None:
    """Past campaigns (all, or those named CAMPAIGN), newest first, with verdicts and figures."""
    if bisections:
        _bisections(limit, as_json)
        return
    if changes:
        if campaign is None:
            raise click.UsageError("--changes needs a CAMPAIGN name")
        from orchestrator.cli.changes_cmd import history_changes

        history_changes(campaign, as_json, show_all)
        return
    rows = query_db(lambda db: db.history(campaign=campaign, kernel=kernel, limit=limit, bisection=bisection))
    if as_json:
        click.echo(json.dumps(rows, indent=2))
        return
    if not rows:
        click.echo("no finished campaign in the results database" + (f" named {campaign!r}" if campaign else ""))
        return
    for line in history_lines(rows):
        click.echo(printable(line))


def history_lines(rows: list[dict[str, Any]]) -> list[str]:
    """One line per campaign, then one per run with its figures (mean over its nodes)."""
    heads = " ".join(f"{heading:>10}" for _name, heading, _fmt in HISTORY_FIGURES)
    lines = [f"{'campaign / run':<34} {'finished':<16} {'verdict':<12} {heads}"]
    for row in rows:
        finished = time.strftime("%Y-%m-%d %H:%M", time.localtime(float(row["finished_at"] or 0)))
        step = f"  (a step of bisection {row['bisection']})" if row.get("bisection") else ""
        lines.append(f"{row['campaign_id']:<34} {finished:<16} {row['verdict']:<12}{step}")
        for run in row["runs"]:
            kernel = str(run.get("release") or run["kernel"])
            redo = f" (attempt {run['attempt']})" if int(run.get("attempt") or 1) > 1 else ""
            figures = run.get("figures") or {}
            shown = " ".join(f"{_shown(figures.get(name), fmt):>10}" for name, _heading, fmt in HISTORY_FIGURES)
            lines.append(f"  {run['run_id']:<5} {kernel[:26]:<26} {'':<16} {run['verdict'] + redo:<12} {shown}")
    return lines


def _bisections(limit: int, as_json: bool) -> None:
    rows = query_db(lambda db: db.bisections(limit=limit))
    if as_json:
        click.echo(json.dumps(rows, indent=2))
        return
    if not rows:
        click.echo("no finished bisection in the results database")
        return
    for row in rows:
        finished = time.strftime("%Y-%m-%d %H:%M", time.localtime(float(row["finished_at"] or 0)))
        answer = row["describe"] or row["status"]
        click.echo(printable(f"{row['id']:<44} {finished:<16} {row['on']:<7} {answer}"))
        click.echo(printable(f"  steps: {', '.join(row['campaigns']) or 'none'} (swaplab history --bisection {row['id']})"))


def _shown(value: Any, fmt: str) -> str:
    return "-" if value is None else fmt.format(float(value))


@click.command()
@click.argument("campaign_id")
@click.option("--json", "as_json", is_flag=True, help="Print the stored record (result.json) instead.")
def show(campaign_id: str, as_json: bool) -> None:
    """One finished campaign in full, from the results database."""
    record = stored_or_exit(campaign_id)
    click.echo(json.dumps(record, indent=2) if as_json else rendered_or_exit(record, "text"), nl=not as_json)


@click.command()
@click.argument("campaign_id")
@click.option("--format", "fmt", type=click.Choice(FORMATS), default="text", show_default=True)
@click.option("-o", "--output", type=click.Path(path_type=Path, dir_okay=False), help="Write to a file, not stdout.")
def report(campaign_id: str, fmt: str, output: Path | None) -> None:
    """A report of a finished campaign: text (mail), html (plots), junit (CI) or json."""
    text = rendered_or_exit(stored_or_exit(campaign_id, live_too=True), fmt)
    if output is None:
        click.echo(text, nl=False)
        return
    output.write_text(text)
    click.echo(f"{fmt} report of {campaign_id}: {output}", err=True)


@click.command()
@click.argument("baseline_id")
@click.argument("candidate_id")
@click.option(
    "--primary",
    type=click.Choice(FIGURE_NAMES),
    default="swap_out_mibps",
    show_default=True,
    help="The figure that decides.",
)
@click.option("--json", "as_json", is_flag=True, help="Print the comparisons as JSON.")
def compare(baseline_id: str, candidate_id: str, primary: str, as_json: bool) -> None:
    """Compare two stored campaigns, workload by workload: is CANDIDATE_ID worse than BASELINE_ID?

    Exit 3 when the primary figure regressed, 4 when there is not enough data to say, else 0.
    """
    from orchestrator.baselines import against_instance, comparable

    baseline, candidate = (campaign_or_exit(stored_or_exit(cid)) for cid in (baseline_id, candidate_id))
    comparisons = against_instance(candidate, baseline, CompareSpec(primary=primary))
    if as_json:
        click.echo(json.dumps(comparisons, indent=2))
    else:
        if not comparable(candidate, baseline):
            click.echo(
                "note: the two did not run the same variants, workloads and settings: only the matching ones compare",
                err=True,
            )
        for line in comparison_lines(comparisons):
            click.echo(printable(line))
    verdicts = {entry["verdict"] for entry in comparisons}
    if "regression" in verdicts:
        sys.exit(ExitCode.CRITERIA_FAIL)
    if not comparisons or "insufficient data" in verdicts:
        sys.exit(ExitCode.INVALID)


def comparison_lines(comparisons: list[dict[str, Any]]) -> list[str]:
    """Per comparison: its verdict, then one line per figure (the primary first)."""
    lines = []
    for entry in comparisons:
        cell = ", ".join(str(entry[key]) for key in ("kernel", "variant", "workload") if entry.get(key))
        lines.append(f"{entry['candidate']} vs {entry['baseline']} ({cell}): {entry['verdict'].upper()}")
        if entry.get("note"):
            lines.append(f"  note: {entry['note']}")
        figures = sorted(entry.get("figures", []), key=lambda f: f.get("figure") != entry.get("primary"))
        lines += [
            f"  {'*' if f.get('figure') == entry.get('primary') else ' '} {f.get('summary', '')}" for f in figures
        ]
    return lines


def rendered_or_exit(record: dict[str, Any], fmt: str) -> str:
    """The record's report in ``fmt``, or a clear error (exit 2) naming every field of a
    record that does not match result.json's schema."""
    from orchestrator.reports import render  # the reports (and matplotlib) load only here

    try:
        return render(record, fmt)
    except RecordError as err:
        click.echo(f"error: no report: {err}", err=True)
        sys.exit(ExitCode.BAD_INPUT_OR_INFRA)


def campaign_or_exit(record: dict[str, Any]) -> Campaign:
    """The record read through result.json's schema, or a clear error (exit 2) naming every
    field that is wrong."""
    try:
        return campaign_of(record)
    except RecordError as err:
        click.echo(f"error: {err}", err=True)
        sys.exit(ExitCode.BAD_INPUT_OR_INFRA)


def stored_or_exit(cid: str, live_too: bool = False) -> dict[str, Any]:
    """The campaign's stored record; with ``live_too``, a finished one still only in Redis."""
    record: dict[str, Any] | None = query_db(lambda db: db.campaign(cid))
    if record is None and live_too:
        record = _from_redis(cid)
    if record is None:
        click.echo(f"error: no campaign {cid!r} in the results database (see `swaplab history`)", err=True)
        sys.exit(ExitCode.BAD_INPUT_OR_INFRA)
    return record


def _from_redis(cid: str) -> dict[str, Any] | None:
    try:
        store = CampaignStore(redis.Redis.from_url(redis_url(), socket_timeout=5))
        result = store.record(cid)
    except redis.RedisError:
        return None
    return result if isinstance(result, dict) else None
