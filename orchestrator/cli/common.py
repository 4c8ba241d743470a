"""Pieces every command group shares: the campaign-file argument and loading it."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import NoReturn

import click

from model.campaign import Campaign, load_campaign
from model.exitcode import ExitCode
from model.lab import Lab, load_lab
from model.yamlpos import SpecError

CAMPAIGN_FILE = click.Path(path_type=Path, dir_okay=False)


def load_or_exit(path: Path, as_json: bool) -> Campaign:
    """The validated campaign, or every issue printed (file:line: field: message) and exit 2."""
    try:
        return load_campaign(path)
    except SpecError as err:
        _refuse(err, as_json)


def load_lab_or_exit(path: Path, as_json: bool = False) -> Lab:
    """The validated lab inventory, or every issue printed and exit 2."""
    try:
        return load_lab(path)
    except SpecError as err:
        _refuse(err, as_json)


def _refuse(err: SpecError, as_json: bool) -> NoReturn:
    if as_json:
        issues = [issue.__dict__ for issue in err.issues]
        click.echo(json.dumps({"valid": False, "issues": issues}, indent=2))
    for issue in err.issues:
        click.echo(f"error: {issue}", err=True)
    sys.exit(ExitCode.BAD_INPUT_OR_INFRA)
