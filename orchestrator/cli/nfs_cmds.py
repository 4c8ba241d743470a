"""``swaplab nfs``: the lab's long-lived NFS server (status, start, stop)."""

from __future__ import annotations

import json
from pathlib import Path

import click

from model.exitcode import ExitCode
from model.lab import Lab
from orchestrator.cli.common import load_lab_or_exit
from workers.lab.nfs import NfsServer, NfsServerError, make_nfs_server

DEFAULT_INVENTORY = Path(__file__).resolve().parents[2] / "inventory" / "local.yml"


def _server(inventory: Path) -> tuple[Lab, NfsServer]:
    lab = load_lab_or_exit(inventory)
    try:
        return lab, make_nfs_server(lab.nfs_backend, lab.name, lab.nfs_settings)
    except NfsServerError as err:
        click.echo(f"error: {err}", err=True)
        raise SystemExit(ExitCode.BAD_INPUT_OR_INFRA) from None


@click.group()
def nfs() -> None:
    """Control a lab's NFS server (one per lab, shared by its runs)."""


_inventory = click.option(
    "--inventory",
    "-i",
    type=click.Path(path_type=Path, dir_okay=False),
    default=DEFAULT_INVENTORY,
    show_default="inventory/local.yml",
)


@nfs.command()
@_inventory
@click.option("--json", "as_json", is_flag=True)
def status(inventory: Path, as_json: bool) -> None:
    """Is the lab's NFS server serving?"""
    lab, server = _server(inventory)
    export = server.export()
    info = {
        "lab": lab.name,
        "backend": lab.nfs_backend,
        "serving": server.is_serving(),
        "export": f"{export.server}:{export.path}",
        "port": export.port,
        "log": server.describe_log(),
    }
    click.echo(json.dumps(info, indent=2) if as_json else " ".join(f"{k}={v}" for k, v in info.items()))


@nfs.command()
@_inventory
def start(inventory: Path) -> None:
    """Start the lab's NFS server if it is not serving."""
    _, server = _server(inventory)
    try:
        server.ensure_serving()
    except NfsServerError as err:
        click.echo(f"error: {err}", err=True)
        raise SystemExit(ExitCode.BAD_INPUT_OR_INFRA) from None
    click.echo("serving")


@nfs.command()
@_inventory
def stop(inventory: Path) -> None:
    """Stop the lab's NFS server cleanly (runs in progress lose their swap)."""
    _, server = _server(inventory)
    server.stop()
    click.echo("stopped")
