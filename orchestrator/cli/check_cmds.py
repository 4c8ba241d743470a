"""``swaplab check``: judge a finished campaign again from Prometheus, now.

For criteria edited or added after the fact (``--criteria FILE``), or a verdict that was
invalid because Prometheus was unreachable at the time. The node evidence comes from
Redis; every criterion is queried again over each run's recorded window.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import click

from model.campaign import load_criteria
from model.exitcode import ExitCode
from model.paths import results_root
from model.protocol import CAMPAIGN_TERMINAL
from model.yamlpos import SpecError
from orchestrator.cli.distributed_cmds import connect, require_campaign
from orchestrator.criteria import CriterionSpec
from orchestrator.results import print_criteria
from orchestrator.scheduler import JudgeOnly, Scheduler
from orchestrator.services import LocalStores, ServiceError


@click.command()
@click.argument("campaign_id")
@click.option(
    "--criteria",
    "criteria_file",
    type=click.Path(path_type=Path, dir_okay=False),
    help="YAML with a 'criteria:' list (a campaign file will do) used instead of the campaign's own.",
)
@click.option("--json", "as_json", is_flag=True, help="Print the new result.json on stdout.")
def check(campaign_id: str, criteria_file: Path | None, as_json: bool) -> None:
    """Re-evaluate finished campaign CAMPAIGN_ID's criteria in Prometheus; exit with the new code."""
    criteria = None
    if criteria_file is not None:
        try:
            criteria = load_criteria(criteria_file)
        except SpecError as err:
            for issue in err.issues:
                click.echo(f"error: {issue}", err=True)
            sys.exit(ExitCode.BAD_INPUT_OR_INFRA)
    # The embedded lab's redis and Prometheus (their data kept in the cache), if not running.
    stores = LocalStores(lambda text: click.echo(f"swaplab: {text}", err=True))
    try:
        stores.start()
        result = _recheck(campaign_id, criteria)
    except ServiceError as err:
        click.echo(f"error: {err}", err=True)
        sys.exit(ExitCode.BAD_INPUT_OR_INFRA)
    finally:
        stores.stop()
    if as_json:
        click.echo(json.dumps(result, indent=2))
    else:
        print_criteria(result, sys.stdout)
    sys.exit(int(result["exit_code"]))


def _recheck(campaign_id: str, criteria: list[CriterionSpec] | None) -> dict[str, Any]:
    store = connect()
    info = require_campaign(store, campaign_id)
    if info.status not in CAMPAIGN_TERMINAL:
        click.echo(f"error: campaign {campaign_id} is {info.status}; check judges finished campaigns", err=True)
        sys.exit(ExitCode.BAD_INPUT_OR_INFRA)
    # The new result.json goes below this command's own results root ($SWAPLAB_RESULTS),
    # never to a directory a Redis record names.
    scheduler = Scheduler(store.redis, JudgeOnly(), results_root())
    result = scheduler.recheck(campaign_id, criteria)
    click.echo(f"swaplab: result.json written in {results_root() / campaign_id}", err=True)
    return result
