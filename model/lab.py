"""Lab definitions: an Ansible inventory (YAML) read as swaplab's lab model.

The inventory names the lab (``swaplab_lab``), its NFS server host (group ``nfs_server``,
``swaplab_nfs: <backend>`` plus ``swaplab_nfs_*`` settings) and its node pool (group
``nodes``: ``swaplab_driver``, ``ansible_host``, ``ansible_port`` and, for nodes swaplab
boots, their size limit ``swaplab_ram_mib``, ``swaplab_cpus``). The same file drives the
playbooks of a real lab.

Driver *kinds* live here, not in the data plane: whether a driver boots the campaign's
kernel and whether it has power control decides what a campaign may ask of the lab, and
a campaign is validated without importing any driver.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from model.yamlpos import LocatedYaml, SpecError, load_located

_NAME = re.compile(r"^[a-z][a-z0-9-]{0,30}$")
_OPTION_PREFIX = "swaplab_"
_SIZE_KEYS = ("swaplab_ram_mib", "swaplab_cpus")
_NODE_KEYS = {"swaplab_driver", *_SIZE_KEYS, "ansible_host", "ansible_port", "ansible_user"}


@dataclass(frozen=True)
class DriverKind:
    """What a node driver can do, as far as planning and validation care."""

    name: str
    # Boots the node with the campaign's kernel (else: the node runs already; kernels: running).
    boots_kernels: bool
    # Can power the node off and on (else: a node that stops answering needs a person).
    power_control: bool
    # Inventory keys every node of this driver needs.
    required: tuple[str, ...]


DRIVER_KINDS: dict[str, DriverKind] = {
    kind.name: kind
    for kind in (
        DriverKind("qemu", boots_kernels=True, power_control=True, required=(*_SIZE_KEYS, "ansible_host", "ansible_port")),
        DriverKind("ssh", boots_kernels=False, power_control=False, required=("ansible_host",)),
    )
}
DEFAULT_SSH_PORT = 22
DEFAULT_SSH_USER = "root"


@dataclass(frozen=True)
class NodeConfig:
    """A node as the lab inventory describes it (driver-specific keys in ``options``)."""

    name: str
    lab: str
    driver: str
    ram_mib: int | None
    cpus: int | None
    ssh_host: str
    ssh_port: int
    options: dict[str, str | int | bool]
    ssh_user: str = DEFAULT_SSH_USER

    @property
    def kind(self) -> DriverKind:
        """What this node's driver can do."""
        return DRIVER_KINDS[self.driver]


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

    @property
    def boots_kernels(self) -> bool:
        """The lab's nodes are booted by swaplab with the campaign's kernel."""
        return self.nodes[0].kind.boots_kernels

    @property
    def power_control(self) -> bool:
        """swaplab can power the lab's nodes off and on."""
        return self.nodes[0].kind.power_control


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
    nodes = tuple(
        _node(doc, lab, name, {**top_vars, **group_vars, **(host_vars or {})}) for name, host_vars in hosts.items()
    )
    boots = {node.kind.boots_kernels for node in nodes}
    if len(boots) > 1:
        # A campaign's kernels are either booted or read back: one lab cannot mix both.
        raise SpecError(
            [doc.issue(("all", "children", "nodes"), "a lab's nodes are all booted by swaplab or all already running")]
        )
    return nodes


def _node(doc: LocatedYaml, lab: str, name: str, merged: dict[str, Any]) -> NodeConfig:
    loc = ("all", "children", "nodes", "hosts", name)
    if not _NAME.match(name):
        raise SpecError([doc.issue(loc, f"node name {name!r} must match {_NAME.pattern}")])
    driver = merged.get("swaplab_driver")
    kind = DRIVER_KINDS.get(driver) if isinstance(driver, str) else None
    if kind is None:
        known = ", ".join(sorted(DRIVER_KINDS))
        raise SpecError([doc.issue((*loc, "swaplab_driver"), f"unknown driver {driver!r}; known: {known}")])
    issues = [doc.issue(loc, f"needs '{key}'") for key in kind.required if key not in merged]
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
        driver=kind.name,
        ram_mib=int(merged["swaplab_ram_mib"]) if "swaplab_ram_mib" in merged else None,
        cpus=int(merged["swaplab_cpus"]) if "swaplab_cpus" in merged else None,
        ssh_host=str(merged["ansible_host"]),
        ssh_port=int(merged.get("ansible_port", DEFAULT_SSH_PORT)),
        options=options,
        ssh_user=str(merged.get("ansible_user", DEFAULT_SSH_USER)),
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
