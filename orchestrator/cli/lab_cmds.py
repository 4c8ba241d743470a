"""``swaplab lab status | back``: a lab's nodes, who holds them, their health; putting a
node back in the pool once a person repaired it."""

from __future__ import annotations

import json
from pathlib import Path

import click

from model.display import printable
from model.exitcode import ExitCode
from orchestrator.cli.common import load_lab_or_exit
from orchestrator.cli.distributed_cmds import connect
from orchestrator.cli.nfs_cmds import DEFAULT_INVENTORY
from orchestrator.scheduler import worker_slots
from workers.health import NodeHealth
from workers.lease import LEASE_TTL_S, LeaseBook


@click.group()
def lab() -> None:
    """Inspect a lab's node pool."""


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
