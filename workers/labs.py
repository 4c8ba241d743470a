"""The labs this worker serves: its own inventories, never the messages it is sent.

A worker reads the inventory files it was started with (``SWAPLAB_LABS``: files or
directories of ``*.yml``, separated by ``:``; default the repository's ``inventory/``)
with the same strict model as ``swaplab validate``. Executables, accelerators, addresses,
ports, NFS backends and their settings, and the directories local kernel files may come
from all come from there. A task naming a lab or a node this worker does not serve is
refused (``InputFault``: the run is invalid and nothing is executed).
"""

from __future__ import annotations

import os
from functools import cache
from pathlib import Path

from model.lab import Lab, NodeConfig, load_lab
from model.yamlpos import SpecError, SpecIssue

DEFAULT_LABS = Path(__file__).resolve().parents[1] / "inventory"


class LabNotServed(LookupError):
    """A task names a lab (or a node) this worker has no inventory for."""


def inventory_files(setting: str | None = None) -> list[Path]:
    """The inventory files ``SWAPLAB_LABS`` names (directories give their ``*.yml``)."""
    entries = (setting if setting is not None else os.environ.get("SWAPLAB_LABS", str(DEFAULT_LABS))).split(os.pathsep)
    files: list[Path] = []
    for entry in filter(None, entries):
        path = Path(entry)
        files += sorted(path.glob("*.yml")) if path.is_dir() else [path]
    return files


@cache
def served_labs() -> dict[str, Lab]:
    """Every lab this process serves, by name (read once; a bad inventory stops the worker)."""
    labs: dict[str, Lab] = {}
    for path in inventory_files():
        lab = load_lab(path)
        if lab.name in labs:
            message = f"lab {lab.name!r} is also defined in {labs[lab.name].inventory}"
            raise SpecError([SpecIssue(str(path), None, "all.vars.swaplab_lab", message)])
        labs[lab.name] = lab
    return labs


def served_lab(name: str) -> Lab:
    """The lab called ``name``, if this worker serves it."""
    lab = served_labs().get(name)
    if lab is None:
        served = ", ".join(sorted(served_labs())) or "none"
        raise LabNotServed(f"this worker does not serve lab {name!r} (it serves: {served})")
    return lab


def served_node(lab_name: str, node: str) -> tuple[Lab, NodeConfig]:
    """The lab and the node as this worker's own inventory describes them."""
    lab = served_lab(lab_name)
    try:
        return lab, lab.node(node)
    except KeyError:
        raise LabNotServed(f"lab {lab_name} has no node {node!r} in this worker's inventory") from None
