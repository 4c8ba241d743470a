"""``swaplab lab status | back | up | down | check``: a lab's nodes, who holds them, their
health; putting a node back in the pool once a person repaired it; bringing a lab's
long-lived parts (its NFS server; for a lab-in-a-box the network and the server VM) up and
down; probing whether every part is fit to run campaigns."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from model.display import printable
from model.exitcode import ExitCode
from model.lab import Lab
from orchestrator.cli.common import load_lab_or_exit
from orchestrator.cli.distributed_cmds import connect
from orchestrator.cli.nfs_cmds import DEFAULT_INVENTORY
from orchestrator.scheduler import worker_slots
from workers.coordination.health import NodeHealth
from workers.coordination.lease import LEASE_TTL_S, LeaseBook
from workers.lab.nfs import NfsServerError, make_nfs_server

if TYPE_CHECKING:
    from workers.lab.labbox import LabUp


@click.group()
def lab() -> None:
    """A lab's node pool and its long-lived parts."""


_inventory = click.option(
    "--inventory",
    "-i",
    type=click.Path(path_type=Path, dir_okay=False),
    default=DEFAULT_INVENTORY,
    show_default="inventory/local.yml",
)


@lab.command()
@_inventory
@click.argument("node")
def back(inventory: Path, node: str) -> None:
    """Put NODE back in the pool (after it stopped answering, or failed to boot twice)."""
    the_lab = load_lab_or_exit(inventory)
    if node not in {n.name for n in the_lab.nodes}:
        click.echo(f"error: lab {the_lab.name} has no node {node!r}", err=True)
        raise SystemExit(ExitCode.BAD_INPUT_OR_INFRA)
    NodeHealth(connect().redis, the_lab.name).reset(node)
    click.echo(f"{node} is back in the pool of lab {the_lab.name}")


@lab.command()
@_inventory
@click.option("--json", "as_json", is_flag=True)
def status(inventory: Path, as_json: bool) -> None:
    """Nodes with their lease holder and health; worker slots on the lab's queue."""
    the_lab = load_lab_or_exit(inventory, as_json)
    store = connect()
    holders = LeaseBook(store.redis, the_lab.name, ttl_s=LEASE_TTL_S).holders()
    health = NodeHealth(store.redis, the_lab.name).status()
    nodes = []
    for node in the_lab.nodes:
        state = health.get(node.name)
        row = {
            "node": node.name,
            "driver": node.driver,
            "held_by": holders.get(node.name),
            "healthy": True,
            "consecutive_boot_failures": 0,
            "last_reason": "",
        }
        if state is not None:
            row.update(
                healthy=state["healthy"],
                consecutive_boot_failures=state["consecutive_boot_failures"],
                last_reason=state["last_reason"],
            )
        nodes.append(row)
    view = {"lab": the_lab.name, "worker_slots": worker_slots(store.redis, f"lab.{the_lab.name}"), "nodes": nodes}
    if as_json:
        click.echo(json.dumps(view, indent=2))
        return
    click.echo(f"lab {the_lab.name}: {view['worker_slots']} worker slot(s) on lab.{the_lab.name}")
    for row in nodes:
        health_text = (
            "healthy"
            if row["healthy"]
            else f"OUT OF THE POOL ({row['consecutive_boot_failures']} boot failures; last: {row['last_reason']}; "
            f"`swaplab lab back {row['node']}` when repaired)"
        )
        click.echo(printable(f"  {row['node']:<8} {row['driver']:<6} {row['held_by'] or 'free':<40} {health_text}"))


@lab.command()
@_inventory
@click.option("--json", "as_json", is_flag=True, help="Print what runs as JSON (progress goes to stderr).")
def up(inventory: Path, as_json: bool) -> None:
    """Bring the lab's long-lived parts up: its NFS server and, for a lab-in-a-box, the lab
    network and the server VM, provisioned. What is up already stays as it is."""
    from workers.lab import labbox  # SSH and Ansible: loaded by the commands that use them
    from workers.lab.network import LabNetworkError
    from workers.lab.provision import ProvisionError
    from workers.lab.server_image import ServerImageError
    from workers.lab.server_vm import ServerVmError

    the_lab = load_lab_or_exit(inventory, as_json)
    began = time.monotonic()
    say = _progress(as_json)
    try:
        if the_lab.nfs_backend == "knfsd":
            report = labbox.up(labbox.Box.of_lab(the_lab), say)
            view = _lab_box_view(the_lab, report)
        else:
            server = make_nfs_server(the_lab.nfs_backend, the_lab.name, the_lab.nfs_settings)
            server.ensure_serving(say)
            view = {"lab": the_lab.name, "nfs": server.where(), "seconds": round(time.monotonic() - began, 1)}
    except (
        NfsServerError,
        labbox.LabBoxError,
        LabNetworkError,
        ServerVmError,
        ServerImageError,
        ProvisionError,
    ) as err:
        click.echo(printable(f"error: lab {the_lab.name} did not come up: {err}"), err=True)
        raise SystemExit(ExitCode.BAD_INPUT_OR_INFRA) from None
    view["stop_with"] = f"swaplab lab down -i {inventory}"
    if as_json:
        click.echo(json.dumps(view, indent=2))
        return
    for key, value in view.items():
        click.echo(printable(f"{key:>12}: {value}"))


@lab.command()
@_inventory
@click.option("--json", "as_json", is_flag=True)
def down(inventory: Path, as_json: bool) -> None:
    """Take the lab's long-lived parts down (runs in progress lose their NFS server)."""
    from workers.lab import labbox
    from workers.lab.network import LabNetworkError
    from workers.lab.server_vm import ServerVmError

    the_lab = load_lab_or_exit(inventory, as_json)
    try:
        if the_lab.nfs_backend == "knfsd":
            stopped = labbox.down(labbox.Box.of_lab(the_lab))
        else:
            server = make_nfs_server(the_lab.nfs_backend, the_lab.name, the_lab.nfs_settings)
            stopped = [server.where()] if server.is_serving() else []
            server.stop()
    except (NfsServerError, labbox.LabBoxError, LabNetworkError, ServerVmError) as err:
        click.echo(printable(f"error: lab {the_lab.name} did not come down: {err}"), err=True)
        raise SystemExit(ExitCode.BAD_INPUT_OR_INFRA) from None
    if as_json:
        click.echo(json.dumps({"lab": the_lab.name, "stopped": stopped}, indent=2))
        return
    click.echo(f"lab {the_lab.name}: " + ("; ".join(f"stopped {what}" for what in stopped) or "nothing was up"))


@lab.command()
@click.argument("inventory", type=click.Path(path_type=Path, dir_okay=False), default=DEFAULT_INVENTORY)
@click.option("--json", "as_json", is_flag=True)
def check(inventory: Path, as_json: bool) -> None:
    """Validate INVENTORY (default inventory/local.yml) and probe every part of its lab,
    read-only: the NFS server and each node. Exit 2 when a part is not fit, naming it."""
    from workers.lab.check import check_lab  # SSH: loaded by the commands that use it

    the_lab = load_lab_or_exit(inventory, as_json)
    probes = check_lab(the_lab, inventory)
    unfit = [probe for probe in probes if not probe.fit]
    if as_json:
        view = {"lab": the_lab.name, "fit": not unfit, "parts": [probe.as_dict() for probe in probes]}
        click.echo(json.dumps(view, indent=2))
    else:
        click.echo(f"lab {the_lab.name} ({inventory}):")
        for probe in probes:
            mark = "fit" if probe.fit else "NOT FIT"
            click.echo(printable(f"  {probe.part:<10} {probe.target:<34} {mark:<8} {probe.detail}"))
        click.echo(
            f"lab {the_lab.name} is fit to run campaigns"
            if not unfit
            else f"not fit: {', '.join(p.target for p in unfit)}"
        )
    if unfit:
        raise SystemExit(ExitCode.BAD_INPUT_OR_INFRA)


def _progress(as_json: bool) -> Callable[[str], None]:
    began = time.monotonic()

    def say(line: str) -> None:
        click.echo(printable(f"[{time.monotonic() - began:5.0f} s] {line}"), err=as_json)

    return say


def _lab_box_view(the_lab: Lab, report: LabUp) -> dict[str, Any]:
    return {
        "lab": the_lab.name,
        "network": f"namespace {report.namespace}, server {report.server_address}",
        "server_vm": f"pid {report.server_pid} ({'booted now' if report.booted else 'was running'})",
        "provisioned": "now" if report.provisioned else "earlier (since the VM booted)",
        "provisioning": None
        if report.provisioned is None
        else {
            "changed": report.provisioned.changed,
            "seconds": round(report.provisioned.seconds, 1),
            "artifacts": str(report.provisioned.artifacts),
        },
        "ssh": report.ssh,
        "seconds": report.seconds,
    }
