"""``swaplab submit | status | watch | cancel | results``: campaigns through Redis + Celery."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import click
import redis

from model.campaign import Campaign
from model.display import printable
from model.exitcode import ExitCode
from model.hashes import CampaignHash, CorruptHash, NodeHash
from model.protocol import CAMPAIGN_TERMINAL, CampaignStatus
from model.runspec import is_campaign_id
from model.state import redacted, redis_url
from orchestrator.cli.common import CAMPAIGN_FILE, load_or_exit
from orchestrator.results import print_summary
from orchestrator.store import CampaignStore
from orchestrator.watch import follow


def connect() -> CampaignStore:
    """The state store, or a clear error when Redis is not there."""
    client = redis.Redis.from_url(redis_url(), socket_timeout=10)
    try:
        client.ping()
    except redis.RedisError as err:
        click.echo(
            f"error: cannot reach Redis at {redacted(redis_url())} ({err}); start the services or set SWAPLAB_REDIS_URL",
            err=True,
        )
        sys.exit(ExitCode.BAD_INPUT_OR_INFRA)
    return CampaignStore(client)


def submit_campaign(store: CampaignStore, campaign: Campaign) -> str:
    """Store a validated campaign and start scheduling it; on failure nothing stays."""
    from orchestrator.tasks import submit  # imported late: the Celery app reads its config here

    return submit(store, campaign)


def require_campaign(store: CampaignStore, cid: str) -> CampaignHash:
    info = store.campaign(cid) if is_campaign_id(cid) else None
    if info is None:
        click.echo(f"error: no campaign {cid!r} (see `swaplab status`)", err=True)
        sys.exit(ExitCode.BAD_INPUT_OR_INFRA)
    return info


def _brief(store: CampaignStore, cid: str) -> dict[str, Any]:
    """One line of ``swaplab status``: a campaign whose hash is unreadable says so."""
    try:
        info = store.campaign(cid)
    except CorruptHash as err:
        return {"id": cid, "status": "unreadable", "verdict": None, "exit_code": None, "lab": None, "error": str(err)}
    if info is None:
        return {"id": cid, "status": "gone", "verdict": None, "exit_code": None, "lab": None}
    return {
        "id": cid,
        "status": info.status.value,
        "verdict": info.verdict,
        "exit_code": info.exit_code,
        "lab": info.lab,
    }


def _node_status(state: NodeHash | None) -> str:
    return state.status if state is not None else ""


def finish_output(info: CampaignHash, as_json: bool) -> None:
    """Print a finished campaign's result and exit with its code."""
    result = info.result
    if not result:
        error = f": {info.error}" if info.error else " (no result)"
        click.echo(printable(f"campaign {info.id}: {info.status}{error}"), err=True)
        if info.error:
            sys.exit(ExitCode.BAD_INPUT_OR_INFRA)
        sys.exit(ExitCode.INTERRUPTED if info.status == CampaignStatus.CANCELLED else ExitCode.INVALID)
    if as_json:
        click.echo(json.dumps(result, indent=2))
    else:
        print_summary(result, sys.stdout)
    sys.exit(int(result["exit_code"]))


@click.command()
@click.argument("campaign_file", type=CAMPAIGN_FILE)
@click.option("--wait", is_flag=True, help="Watch until done and exit with the verdict's code.")
@click.option("--json", "as_json", is_flag=True, help="Machine output on stdout.")
def submit(campaign_file: Path, wait: bool, as_json: bool) -> None:
    """Validate CAMPAIGN_FILE, store it in Redis and queue it; print its id."""
    campaign = load_or_exit(campaign_file, as_json)
    store = connect()
    cid = submit_campaign(store, campaign)
    if not wait:
        click.echo(json.dumps({"campaign_id": cid}) if as_json else cid)
        return
    click.echo(f"campaign {cid} submitted", err=True)
    finish_output(follow(store, cid, sys.stderr), as_json)


@click.command()
@click.argument("campaign_id", required=False)
@click.option("--json", "as_json", is_flag=True)
def status(campaign_id: str | None, as_json: bool) -> None:
    """Status of one campaign (runs and node phases), or of the recent ones."""
    store = connect()
    if campaign_id is None:
        brief = [_brief(store, cid) for cid in store.campaign_ids()]
        click.echo(
            json.dumps(brief, indent=2)
            if as_json
            else "\n".join(f"{r['id']:<36} {r['status']:<10} {r.get('verdict') or ''}" for r in brief)
        )
        return
    info = require_campaign(store, campaign_id)
    runs: list[dict[str, Any]] = []
    for run in store.runs(campaign_id):
        nodes = {node: _node_status(store.node(campaign_id, run.run_id, node)) for node in run.nodes}
        runs.append(
            {
                "run_id": run.run_id,
                "label": run.label,
                "status": run.status.value,
                "attempt": run.attempt,
                "verdict": run.verdict or "",
                "nodes": nodes,
            }
        )
    view = {
        "id": campaign_id,
        "status": info.status.value,
        "verdict": info.verdict or "",
        "exit_code": info.exit_code if info.exit_code is not None else "",
        "runs": runs,
    }
    if as_json:
        click.echo(json.dumps(view, indent=2))
        return
    click.echo(printable(f"campaign {campaign_id}: {info.status} {info.verdict or ''}"))
    for row in runs:
        phases = ", ".join(f"{n}={s}" for n, s in row["nodes"].items())
        click.echo(printable(f"  {row['run_id']} {row['status']:<12} {row['verdict']:<11} {row['label']}  {phases}"))


@click.command()
@click.argument("campaign_id")
@click.option("--json", "as_json", is_flag=True, help="Print result.json at the end.")
def watch(campaign_id: str, as_json: bool) -> None:
    """Follow a campaign live; Ctrl-C detaches (the campaign goes on)."""
    store = connect()
    require_campaign(store, campaign_id)
    try:
        info = follow(store, campaign_id, sys.stderr)
    except KeyboardInterrupt:
        click.echo(f"\ndetached; the campaign goes on (swaplab watch {campaign_id})", err=True)
        sys.exit(ExitCode.INTERRUPTED)
    finish_output(info, as_json)


@click.command()
@click.argument("campaign_id")
def cancel(campaign_id: str) -> None:
    """Cancel a campaign: guests powered off, leases released, status cancelled."""
    store = connect()
    info = require_campaign(store, campaign_id)
    if info.status in CAMPAIGN_TERMINAL:
        click.echo(f"campaign {campaign_id} is already {info.status}")
        return
    store.request_cancel(campaign_id)
    click.echo(f"cancel requested for {campaign_id}")


@click.command()
@click.argument("campaign_id")
@click.option("--json", "as_json", is_flag=True)
def results(campaign_id: str, as_json: bool) -> None:
    """The result of a finished campaign (summary table, or result.json with --json)."""
    store = connect()
    info = require_campaign(store, campaign_id)
    if info.status not in CAMPAIGN_TERMINAL:
        click.echo(f"campaign {campaign_id} is still {info.status}", err=True)
        sys.exit(ExitCode.BAD_INPUT_OR_INFRA)
    finish_output(info, as_json)
