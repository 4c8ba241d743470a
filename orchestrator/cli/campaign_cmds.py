"""``swaplab validate`` and ``swaplab run``: check a campaign file, or run it here."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import click

from orchestrator.campaign import Campaign, load_campaign
from orchestrator.exitcode import ExitCode
from orchestrator.local_run import run_campaign_locally
from orchestrator.planner import new_campaign_id, plan_runs
from orchestrator.report import print_summary
from orchestrator.yamlpos import SpecError
from workers.collab import StderrProgress

CAMPAIGN_FILE = click.Path(path_type=Path, dir_okay=False)


def _load_or_exit(path: Path, as_json: bool) -> Campaign:
    try:
        return load_campaign(path)
    except SpecError as err:
        if as_json:
            issues = [issue.__dict__ for issue in err.issues]
            click.echo(json.dumps({"valid": False, "issues": issues}, indent=2))
        for issue in err.issues:
            click.echo(f"error: {issue}", err=True)
        sys.exit(ExitCode.BAD_INPUT_OR_INFRA)


@click.command()
@click.argument("campaign_file", type=CAMPAIGN_FILE)
@click.option("--json", "as_json", is_flag=True, help="Print the outcome as JSON on stdout.")
def validate(campaign_file: Path, as_json: bool) -> None:
    """Check CAMPAIGN_FILE completely (model, lab, sizes) without running anything."""
    campaign = _load_or_exit(campaign_file, as_json)
    runs = plan_runs(campaign)
    if as_json:
        summary = {
            "valid": True,
            "campaign": campaign.spec.name,
            "lab": campaign.lab.name,
            "runs": [r.label() for r in runs],
            "nodes_per_run": campaign.spec.nodes,
        }
        click.echo(json.dumps(summary, indent=2))
    else:
        click.echo(
            f"{campaign_file}: valid — campaign {campaign.spec.name!r} on lab {campaign.lab.name!r}: {len(runs)} run(s) x {campaign.spec.nodes} node(s)"
        )


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
    """Run CAMPAIGN_FILE on its lab, watch it live, print the verdict, exit with its code."""
    campaign = _load_or_exit(campaign_file, as_json)
    campaign_id = new_campaign_id(campaign.spec.name)
    click.echo(f"campaign {campaign_id}: {len(plan_runs(campaign))} run(s) on lab {campaign.lab.name}", err=True)
    result = run_campaign_locally(campaign, campaign_id, results.resolve(), StderrProgress())
    if as_json:
        click.echo(json.dumps(result, indent=2))
    else:
        click.echo()
        print_summary(result, sys.stdout)
    sys.exit(result["exit_code"])
