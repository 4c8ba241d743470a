"""``swaplab validate`` and ``swaplab run``: check a campaign file, or run it and wait."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import sys
import time
from pathlib import Path

import click

from model.campaign import Campaign
from model.exitcode import ExitCode
from model.hashes import CampaignHash
from model.paths import results_root
from model.state import redacted
from orchestrator import sinks
from orchestrator.cli.common import CAMPAIGN_FILE, load_lab_or_exit, load_or_exit
from orchestrator.cli.distributed_cmds import connect, finish_output, submit_campaign
from orchestrator.planner import plan_runs
from orchestrator.reports import FILES
from orchestrator.services import LocalServices, ServiceError
from orchestrator.watch import follow

# How long `swaplab run` waits for the control worker's reports and database store.
SINK_WAIT_S = 120.0


@click.command()
@click.argument("campaign_file", type=CAMPAIGN_FILE)
@click.option("--json", "as_json", is_flag=True, help="Print the outcome as JSON on stdout.")
def validate(campaign_file: Path, as_json: bool) -> None:
    """Check CAMPAIGN_FILE completely (model, lab, sizes) without running anything."""
    campaign = load_or_exit(campaign_file, as_json)
    runs = plan_runs(campaign)
    if as_json:
        summary = {
            "valid": True,
            "campaign": campaign.spec.name,
            "lab": campaign.lab.name,
            "runs": [r.label() for r in runs],
            "nodes_per_run": campaign.spec.nodes,
            # What swaplab will do, defaults filled in: it must say what the file says.
            "normalized": campaign.spec.model_dump(mode="json"),
        }
        click.echo(json.dumps(summary, indent=2))
    else:
        click.echo(
            f"{campaign_file}: valid — campaign {campaign.spec.name!r} on lab {campaign.lab.name!r}: {len(runs)} run(s) x {campaign.spec.nodes} node(s)"
        )
        for fault in campaign.spec.faults:  # what the run will do to the lab, in words
            click.echo(f"  fault: {fault.describe()} (the run has the lab to itself)")


@click.command()
@click.argument("campaign_file", type=CAMPAIGN_FILE)
@click.option("--json", "as_json", is_flag=True, help="Print result.json on stdout (progress stays on stderr).")
@click.option(
    "--results",
    type=click.Path(path_type=Path, file_okay=False),
    default=lambda: os.environ.get("SWAPLAB_RESULTS", "results"),
    show_default="$SWAPLAB_RESULTS or ./results",
    help="Directory for result directories.",
)
def run(campaign_file: Path, as_json: bool, results: Path) -> None:
    """Run CAMPAIGN_FILE, watch it live, print the verdict, exit with its code.

    Without configured services (SWAPLAB_REDIS_URL unset) this starts a local
    redis-server and a Celery worker for the lab, and stops them afterwards.
    """
    campaign = load_or_exit(campaign_file, as_json)
    lab = load_lab_or_exit(Path(campaign.lab.inventory), as_json)  # the local worker serves it
    # SIGTERM (a CI timeout, `kill`) cleans up like Ctrl-C: guests off, services stopped.
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    results = results.resolve()
    os.environ["SWAPLAB_RESULTS"] = str(results)  # the worker we start writes there too
    try:
        with LocalServices(lab, len(lab.nodes) + 1, results / "services", _note):
            info = _submit_and_follow(campaign)
            await_sinks(info)
    except ServiceError as err:
        click.echo(f"error: {err}", err=True)
        sys.exit(ExitCode.BAD_INPUT_OR_INFRA)
    finish_output(info, as_json)


def await_sinks(info: CampaignHash, wait_s: float = SINK_WAIT_S) -> None:
    """Wait (up to ``wait_s``) for the control worker to write the campaign's reports and
    store it in the results database (orchestrator.sinks); say what each did."""
    if info.result is None:
        return
    cid = info.id
    client = connect().redis
    deadline = time.monotonic() + wait_s
    while (
        waiting := set(sinks.awaiting(client, cid)) & {sinks.REPORTS, sinks.DATABASE}
    ) and time.monotonic() < deadline:
        time.sleep(0.5)
    refused = sinks.refused(client, cid)
    if sinks.REPORTS in waiting or sinks.REPORTS in refused:
        _note(f"reports not written: {refused.get(sinks.REPORTS, 'the control worker has not got to them yet')}")
    else:
        written = [path for path in (results_root() / cid / name for name in FILES.values()) if path.is_file()]
        _note(
            f"reports: {', '.join(map(str, written))}"
            if written
            else "reports: in the control worker's results directory"
        )
    where = _database_where()
    if sinks.DATABASE in refused:
        _note(f"not stored in the results database {where}: {refused[sinks.DATABASE]}")
    elif sinks.DATABASE in waiting:
        _note(f"results database {where} not reached yet: the record waits in Redis and is stored when it is back")
    else:
        _note(f"stored in the results database {where} (swaplab show {cid})")


def _database_where() -> str:
    from orchestrator.history.db import database_url  # SQLAlchemy loads only here

    return redacted(database_url())


def _note(text: str) -> None:
    # Whoever read stderr may be gone (a killed CI job, a closed pipe): nobody to tell,
    # and a note must never keep the services from being stopped.
    with contextlib.suppress(OSError):
        click.echo(f"swaplab: {text}", err=True)


def _submit_and_follow(campaign: Campaign) -> CampaignHash:
    store = connect()
    cid = submit_campaign(store, campaign)
    click.echo(f"campaign {cid}: {len(plan_runs(campaign))} run(s) on lab {campaign.lab.name}", err=True)
    try:
        return follow(store, cid, sys.stderr)
    except KeyboardInterrupt:
        # Ctrl-C on `run` cancels (on `watch` it only detaches): guests off, leases freed.
        click.echo("\ninterrupted: cancelling (guests powered off, leases released) ...", err=True)
        store.request_cancel(cid)
        return follow(store, cid, sys.stderr)
