"""Lab definitions: an Ansible inventory (YAML) read as swaplab's lab model.

The inventory names the lab (``swaplab_lab``), its NFS server host (group ``nfs_server``,
``swaplab_nfs: <backend>`` plus ``swaplab_nfs_*`` settings) and its node pool (group
``nodes``: ``swaplab_driver``, ``swaplab_ram_mib``, ``swaplab_cpus``, ``ansible_host``,
``ansible_port``). The same file drives the playbooks of a real lab.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from orchestrator.yamlpos import LocatedYaml, SpecError, load_located
from workers.drivers.base import NodeConfig

_NAME = re.compile(r"^[a-z][a-z0-9-]{0,30}$")
_OPTION_PREFIX = "swaplab_"
_NODE_KEYS = {"swaplab_driver", "swaplab_ram_mib", "swaplab_cpus", "ansible_host", "ansible_port"}


@dataclass(frozen=True)
class Lab:
    """One lab: its name, NFS server backend and settings, and node pool."""

    name: str
    inventory: Path
    nfs_backend: str
    nfs_settings: dict[str, Any]
    nodes: tuple[NodeConfig, ...]

    def node(self, name: str) -> NodeConfig:
        """The node called ``name``."""
        for node in self.nodes:
            if node.name == name:
                return node
        raise KeyError(name)


def load_lab(path: Path) -> Lab:
    """Read an inventory file; every problem becomes a SpecError naming file and line."""
    doc = load_located(path)
    root = doc.data.get("all") if isinstance(doc.data, dict) else None
    if not isinstance(root, dict):
        raise SpecError([doc.issue((), "an inventory needs a top-level 'all:' mapping")])
    top_vars = _mapping(doc, ("all", "vars"))
    lab_name = str(top_vars.get("swaplab_lab", path.stem))
    if not _NAME.match(lab_name):
        raise SpecError(
            [doc.issue(("all", "vars", "swaplab_lab"), f"lab name {lab_name!r} must match {_NAME.pattern}")]
        )
    backend, settings = _nfs_server(doc)
    nodes = _nodes(doc, lab_name, top_vars)
    return Lab(lab_name, path, backend, settings, nodes)


def _mapping(doc: LocatedYaml, loc: tuple[str, ...]) -> dict[str, Any]:
    value: Any = doc.data
    for key in loc:
        value = value.get(key) if isinstance(value, dict) else None
        if value is None:
            return {}
    if not isinstance(value, dict):
        raise SpecError([doc.issue(loc, "must be a mapping")])
    return value


def _group_hosts(doc: LocatedYaml, group: str) -> tuple[dict[str, Any], dict[str, Any]]:
    loc = ("all", "children", group)
    if not _mapping(doc, loc):
        raise SpecError([doc.issue(("all", "children"), f"the inventory needs a '{group}' group")])
    return _mapping(doc, (*loc, "vars")), _mapping(doc, (*loc, "hosts"))


def _nfs_server(doc: LocatedYaml) -> tuple[str, dict[str, Any]]:
    group_vars, hosts = _group_hosts(doc, "nfs_server")
    if len(hosts) != 1:
        raise SpecError([doc.issue(("all", "children", "nfs_server", "hosts"), "exactly one NFS server host per lab")])
    host_name, host_vars = next(iter(hosts.items()))
    merged = {**group_vars, **(host_vars or {})}
    backend = merged.get("swaplab_nfs")
    if not isinstance(backend, str):
        loc = ("all", "children", "nfs_server", "hosts", host_name)
        raise SpecError([doc.issue(loc, "needs 'swaplab_nfs: <backend>' (e.g. ganesha)")])
    prefix = "swaplab_nfs_"
    settings = {key[len(prefix) :]: value for key, value in merged.items() if key.startswith(prefix)}
    return backend, settings


def _nodes(doc: LocatedYaml, lab: str, top_vars: dict[str, Any]) -> tuple[NodeConfig, ...]:
    group_vars, hosts = _group_hosts(doc, "nodes")
    if not hosts:
        raise SpecError([doc.issue(("all", "children", "nodes"), "the node pool is empty")])
    return tuple(
        _node(doc, lab, name, {**top_vars, **group_vars, **(host_vars or {})}) for name, host_vars in hosts.items()
    )


def _node(doc: LocatedYaml, lab: str, name: str, merged: dict[str, Any]) -> NodeConfig:
    loc = ("all", "children", "nodes", "hosts", name)
    if not _NAME.match(name):
        raise SpecError([doc.issue(loc, f"node name {name!r} must match {_NAME.pattern}")])
    issues = [doc.issue(loc, f"needs '{key}'") for key in sorted(_NODE_KEYS) if key not in merged]
    issues += [
        doc.issue((*loc, key), "must be a positive integer")
        for key in ("swaplab_ram_mib", "swaplab_cpus", "ansible_port")
        if key in merged and not (isinstance(merged[key], int) and merged[key] > 0)
    ]
    if issues:
        raise SpecError(issues)
    options = {
        key[len(_OPTION_PREFIX) :]: value
        for key, value in merged.items()
        if key.startswith(_OPTION_PREFIX) and key not in _NODE_KEYS and key != "swaplab_lab"
    }
    return NodeConfig(
        name=name,
        lab=lab,
        driver=str(merged["swaplab_driver"]),
        ram_mib=int(merged["swaplab_ram_mib"]),
        cpus=int(merged["swaplab_cpus"]),
        ssh_host=str(merged["ansible_host"]),
        ssh_port=int(merged["ansible_port"]),
        options=options,
    )


def lab_to_json(lab: Lab) -> dict[str, Any]:
    """A lab as plain JSON (stored with a submitted campaign: the file may change later)."""
    return {
        "name": lab.name,
        "inventory": str(lab.inventory),
        "nfs_backend": lab.nfs_backend,
        "nfs_settings": lab.nfs_settings,
        "nodes": [vars(node) for node in lab.nodes],
    }


def lab_from_json(data: dict[str, Any]) -> Lab:
    """Inverse of lab_to_json."""
    nodes = tuple(NodeConfig(**node) for node in data["nodes"])
    return Lab(data["name"], Path(data["inventory"]), data["nfs_backend"], data["nfs_settings"], nodes)
