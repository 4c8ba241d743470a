"""Lab definitions: an Ansible inventory (YAML) read as swaplab's lab model, strictly.

The inventory names the lab (``all.vars.swaplab_lab``), its NFS server host (group
``nfs_server``: ``swaplab_nfs: <backend>`` plus that backend's ``swaplab_nfs_*``
settings) and its node pool (group ``nodes``: ``swaplab_driver``, ``ansible_host``,
``ansible_port``, ``ansible_user``, for nodes swaplab boots their size limit
``swaplab_ram_mib`` / ``swaplab_cpus``, and the driver's own ``swaplab_*`` options). The
same file drives the playbooks of a real lab, so keys of Ansible's own are left alone;
every ``swaplab_*`` key must be one swaplab knows, with the right type and range.

Driver kinds and NFS backends are described here, not in the data plane: what a driver
can do decides what a campaign may ask of the lab, and a lab is validated without
importing any driver. Every problem names the file, the line and the key.

Each node's way to the NFS server (``NfsRoute``) is derived here as well, so the driver
that forwards it and the server that admits it agree: one export per node, open to one
client address (127.0.0.N for QEMU nodes, whose relay connects from it).
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Literal, NoReturn

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from model.yamlpos import FieldPath, LocatedYaml, SpecError, SpecIssue, load_located

_NAME = re.compile(r"[a-z][a-z0-9-]{0,30}")
_PREFIX = "swaplab_"
_NODE_GROUP = ("all", "children", "nodes")
_NFS_GROUP = ("all", "children", "nfs_server")
_BOOT_GROUP = ("all", "children", "boot_server")
_GROUP_KEYS = {"hosts", "vars", "children"}
DEFAULT_SSH_PORT = 22
DEFAULT_SSH_USER = "root"


class _Strict(BaseModel):
    # strict: `true` is not 1 and 8080 is not "8080" (YAML's guesses never change a meaning).
    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)


def _absolute(value: str) -> str:
    if not value.startswith("/") or "\0" in value:
        raise ValueError(f"{value!r} must be an absolute path")
    return value


def _address(value: str) -> str:
    try:
        ipaddress.ip_address(value)
    except ValueError:
        raise ValueError(f"{value!r} is not an IP address") from None
    return value


class QemuOptions(_Strict):
    """``swaplab_*`` options of a ``qemu`` node."""

    qemu_binary: str = Field(default="qemu-system-x86_64", pattern=r"^[A-Za-z0-9_./+-]{1,255}$")
    accel: Literal["tcg", "kvm"] = "tcg"


class SshOptions(_Strict):
    """``swaplab_*`` options of an ``ssh`` node."""

    ssh_key: str | None = None
    known_hosts: str | None = None
    console_file: str | None = None
    console_command: str | None = Field(default=None, min_length=1, max_length=1000)
    # The address the lab's NFS server sees this node's connections come from: the only
    # client its export admits (default: ansible_host).
    nfs_client: str | None = None

    _paths = field_validator("ssh_key", "known_hosts", "console_file")(_absolute)
    _client = field_validator("nfs_client")(_address)


_MAC = r"^[0-9a-f]{2}(:[0-9a-f]{2}){5}$"
_HOST = r"^[A-Za-z0-9][A-Za-z0-9.:-]{0,252}$"
# Modules a Linux kernel needs for the NICs diskless nodes commonly have (PXE-capable
# onboard and add-in cards); a node's inventory may name its own instead.
DEFAULT_NIC_DRIVERS = ("e1000e", "igb", "ixgbe", "i40e", "ice", "tg3", "bnxt_en", "mlx5_core", "r8169", "virtio_net")


def _credentials_source(value: str) -> str:
    if value not in ("env", "lab") and (not value.startswith("/") or "\0" in value):
        raise ValueError(
            f"{value!r} must be 'env', 'lab' (a lab-in-a-box's) or the absolute path of a credentials file"
        )
    return value


class PxeOptions(_Strict):
    """``swaplab_*`` options of a ``pxe`` node: a machine that boots from the lab's boot
    server and is powered through its BMC.

    The BMC's password is never here: ``bmc_credentials`` names where it comes from
    (``env``: the worker's environment; else an absolute path to a file only the worker's
    user reads).
    """

    mac: str = Field(pattern=_MAC)
    bmc_address: str = Field(pattern=_HOST)
    bmc_credentials: str
    bmc: Literal["ipmi"] = "ipmi"
    bmc_port: int = Field(default=623, ge=1, le=65535)
    # A BMC that does not answer, and a node that never asks for its boot file, are
    # infra-errors after this long.
    bmc_timeout_s: int = Field(default=90, ge=1, le=3600)
    boot_timeout_s: int = Field(default=90, ge=5, le=3600)
    # Kernel modules for the node's NIC, put in its image (default: DEFAULT_NIC_DRIVERS).
    nic_drivers: list[str] = Field(default_factory=list, max_length=32)
    # Serial-over-LAN through the BMC, or none (the node's kernel log over SSH only).
    console: Literal["sol", "none"] = "sol"

    _source = field_validator("bmc_credentials")(_credentials_source)

    @field_validator("nic_drivers")
    @classmethod
    def _module_names(cls, value: list[str]) -> list[str]:
        bad = [name for name in value if not re.fullmatch(r"[a-z0-9_-]{1,40}", name)]
        if bad:
            raise ValueError(f"NIC drivers must be kernel module names, got {bad!r}")
        return value


class BootServerSettings(_Strict):
    """``swaplab_boot_*`` settings of the lab's boot server (group ``boot_server``): dnsmasq
    answering PXE on the lab network, iPXE scripts per node MAC, kernels over HTTP.
    """

    # server: dnsmasq hands out each node's address (fixed per MAC). (Proxy-DHCP beside a
    # lab's own DHCP server is not there yet.)
    dhcp: Literal["server"] = "server"
    http_port: int = Field(default=8069, ge=1, le=65535)
    # The interface dnsmasq serves on (default: the one holding the server's lab address).
    interface: str | None = Field(default=None, pattern=r"^[A-Za-z0-9_.-]{1,15}$")
    # Its address on the lab network, where iPXE fetches kernels (default: the NFS server's
    # on a lab-in-a-box, where one VM is both).
    address: str | None = None
    root: str = Field(default="/srv/swaplab/boot", pattern=r"^/[A-Za-z0-9._/-]{1,100}$")

    @field_validator("address")
    @classmethod
    def _lab_address(cls, value: str | None) -> str | None:
        return None if value is None else _address(value)


class GaneshaSettings(_Strict):
    """``swaplab_nfs_*`` settings of the ``ganesha`` backend (nfs-ganesha in user space)."""

    port: int = Field(default=12049, ge=1, le=65535)
    bind: str = "127.0.0.1"
    # Where nodes mount from. For QEMU nodes an unused address of the user-mode network
    # (10.0.2.0/24) that QEMU forwards to the server; never 10.0.2.2, the host itself there.
    guest_address: str = "10.0.2.100"
    pseudo: str = Field(default="/export", pattern=r"^/[A-Za-z0-9._/-]{0,100}$")
    export_dir: str | None = None
    state_dir: str | None = None

    _addresses = field_validator("bind", "guest_address")(_address)
    _dirs = field_validator("export_dir", "state_dir")(_absolute)

    @field_validator("bind")
    @classmethod
    def _not_everywhere(cls, value: str) -> str:
        if ipaddress.ip_address(value).is_unspecified:
            raise ValueError(f"{value} would serve every network; bind a specific address (127.0.0.1)")
        return value


class KnfsdSettings(_Strict):
    """``swaplab_nfs_*`` settings of the ``knfsd`` backend: the kernel's NFS server in a
    Debian VM swaplab boots on the lab's own network (the lab-in-a-box).

    The lab network is a bridge in a network namespace of the lab's own: the server is
    .1 of ``subnet``, the nodes .11 upward in inventory order; these addresses exist only
    inside the namespace. Each node has an export of its own, open to its address alone.
    """

    subnet: str = "10.77.0.0/24"
    export_dir: str = Field(default="/srv/swaplab/exports", pattern=r"^/[A-Za-z0-9._/-]{1,100}$")
    # sync: a page the server reports written is on its disk (async is faster, and lies).
    sync: bool = True
    ram_mib: int = Field(default=512, ge=256, le=8192)
    # The VM's data disk, where the swap files live (sparse on the host; gone with the VM).
    data_disk_mib: int = Field(default=4096, ge=256, le=1 << 20)
    # Refresh apt's lists before installing nfs-kernel-server (a server with a mirror).
    update_cache: bool = False

    @field_validator("subnet")
    @classmethod
    def _private_subnet(cls, value: str) -> str:
        try:
            subnet = ipaddress.IPv4Network(value)
        except ValueError:
            raise ValueError(f"{value!r} is not an IPv4 network such as 10.77.0.0/24") from None
        if not subnet.is_private or not 16 <= subnet.prefixlen <= 27:
            raise ValueError(f"{value} must be a private IPv4 network from /16 to /27")
        return value


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
    options: type[_Strict]
    # Reaches NFS only through a per-node relay the driver starts (QEMU's guestfwd).
    nfs_relay: bool = False
    # Can run the guest on an instruction-counted clock (``timing: guest``).
    guest_time: bool = False
    # Can have its NFS path on a lab network (a link of its own to disturb).
    lab_network: bool = False
    # Has no other way to its NFS server than a lab network (a machine with one NIC).
    lab_network_only: bool = False
    # Boots from the lab's boot server (group boot_server).
    boots_from_network: bool = False


DRIVER_KINDS: dict[str, DriverKind] = {
    kind.name: kind
    for kind in (
        DriverKind(
            "qemu",
            True,
            True,
            ("swaplab_ram_mib", "swaplab_cpus", "ansible_host", "ansible_port"),
            QemuOptions,
            nfs_relay=True,
            guest_time=True,
            lab_network=True,
        ),
        DriverKind("ssh", False, False, ("ansible_host",), SshOptions),
        DriverKind(
            "pxe",
            True,
            True,
            ("swaplab_ram_mib", "ansible_host", "swaplab_mac", "swaplab_bmc_address", "swaplab_bmc_credentials"),
            PxeOptions,
            lab_network=True,
            lab_network_only=True,
            boots_from_network=True,
        ),
    )
}
_LAB_NETWORK_KINDS = " and ".join(name for name, kind in DRIVER_KINDS.items() if kind.lab_network)
NFS_BACKENDS: dict[str, type[_Strict]] = {"ganesha": GaneshaSettings, "knfsd": KnfsdSettings}
# The lab network's plan: the server is .1, nodes .11 upward; a node's tap is
# "tap-<node>", and Linux interface names have at most 15 characters.
LAB_SERVER_HOST = 1
LAB_FIRST_NODE_HOST = 11
LAB_NODE_NAME_MAX = 11
NFS_PORT = 2049

# A relayed node mounts this port on the lab's guest address.
NFS_GUEST_PORT = 2049
# QEMU user networking's own addresses: network and broadcast, the host (10.0.2.2: QEMU
# refuses a guestfwd there), its DNS, and what its DHCP hands to guests.
SLIRP_NETWORK = ipaddress.ip_network("10.0.2.0/24")
_SLIRP_RESERVED = frozenset(SLIRP_NETWORK[i] for i in (0, 2, 3, *range(15, 31), 255))
# Relayed nodes connect to the server from 127.0.0.2, 127.0.0.3, ... in inventory order.
_FIRST_RELAY_SOURCE = ipaddress.ip_address("127.0.0.2")


@dataclass(frozen=True)
class NfsRoute:
    """How one node reaches its own export on the lab's NFS server, and how the server knows it.

    Every node has an export of its own (``export_id``), open to one client address. A
    relayed node (QEMU) mounts ``mount_address:mount_port`` inside its user-mode network;
    QEMU starts a relay per connection that connects to the server from ``client_address``
    (127.0.0.N, one per node of the lab) and a port below 1024. Other nodes connect
    directly, from the address the inventory gives them.
    """

    node: str
    export_id: int
    mount_address: str
    mount_port: int
    client_address: str
    server_address: str
    server_port: int
    relayed: bool
    # Over the lab network (its subnet, e.g. 10.77.0.0/24): the node's NIC on the lab's
    # bridge carries ``client_address``; None for every other way.
    lab_subnet: str | None = None
    # That NIC's MAC when the inventory gives it (a machine's own); else the lab plans one.
    mac: str | None = None

    @property
    def lab_network(self) -> bool:
        return self.lab_subnet is not None


class _NodeVars(_Strict):
    """The keys every node has, whatever its driver."""

    swaplab_driver: str
    swaplab_ram_mib: int | None = Field(default=None, ge=16, le=1 << 20)
    swaplab_cpus: int | None = Field(default=None, ge=1, le=64)
    ansible_host: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9.:-]{0,252}$")
    ansible_port: int = Field(default=DEFAULT_SSH_PORT, ge=1, le=65535)
    ansible_user: str = Field(default=DEFAULT_SSH_USER, pattern=r"^[a-z_][a-z0-9_-]{0,31}$")


_NODE_VAR_KEYS = set(_NodeVars.model_fields)


class _ServerHostVars(_Strict):
    """The Ansible keys of the NFS server host that reach Ansible or SSH."""

    ansible_host: str | None = Field(default=None, pattern=r"^[A-Za-z0-9][A-Za-z0-9.:-]{0,252}$")
    ansible_port: int | None = Field(default=None, ge=1, le=65535)
    ansible_user: str | None = Field(default=None, pattern=r"^[a-z_][a-z0-9_-]{0,31}$")
    ansible_connection: Literal["local", "ssh"] | None = None


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
    # How the node reaches its NFS export (set by load_lab from the lab's NFS settings).
    nfs_route: NfsRoute | None = None

    @property
    def kind(self) -> DriverKind:
        """What this node's driver can do."""
        return DRIVER_KINDS[self.driver]


@dataclass(frozen=True)
class LabMachine:
    """A pxe node as its lab-in-a-box runs it: a QEMU machine on the bridge behind a
    simulated BMC, its sshd reached through a relay on this host's loopback."""

    node: str
    mac: str
    bmc_address: str
    bmc_port: int
    ssh_port: int  # the relay's port on 127.0.0.1
    address: str  # on the lab network
    ram_mib: int


@dataclass(frozen=True)
class BootServer:
    """The lab's boot server: its inventory host (the NFS server's on a lab-in-a-box,
    where one VM is both) and its settings, with the address iPXE fetches kernels from."""

    host: str
    settings: BootServerSettings
    address: str
    # The host is the NFS server host of the inventory (the same machine).
    shared_with_nfs: bool

    @property
    def http_url(self) -> str:
        """Where the boot files are served, as iPXE on a node asks for them."""
        return f"http://{self.address}:{self.settings.http_port}"


@dataclass(frozen=True)
class Lab:
    """One lab: its name, NFS server backend and settings, and node pool."""

    name: str
    inventory: Path
    nfs_backend: str
    nfs_settings: dict[str, Any]
    nodes: tuple[NodeConfig, ...]
    # Where a campaign's local kernel files may lie (``swaplab_kernel_dirs``): a worker
    # reads them as root into node images, so nowhere else.
    kernel_dirs: tuple[Path, ...] = ()
    # Where pxe nodes boot from (group boot_server); None on labs without them.
    boot_server: BootServer | None = None

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
    def guest_time(self) -> bool:
        """Every node of the lab can run on guest time (an instruction-counted clock)."""
        return all(node.kind.guest_time for node in self.nodes)

    @property
    def lab_network(self) -> bool:
        """Every node reaches the NFS server over the lab's own network (a link to disturb)."""
        return all(node.nfs_route is not None and node.nfs_route.lab_network for node in self.nodes)

    @property
    def power_control(self) -> bool:
        """swaplab can power the lab's nodes off and on."""
        return self.nodes[0].kind.power_control

    def kernel_file_refused(self, path: Path) -> str | None:
        """Why the local kernel file ``path`` (resolved) may not be used on this lab, or None."""
        if not self.kernel_dirs:
            return f"lab {self.name} takes no local kernel files (its inventory sets no swaplab_kernel_dirs)"
        try:
            real = path.resolve(strict=True)  # no `..` or symlink leads out of the allowed roots
        except (OSError, RuntimeError) as err:
            return f"{path} cannot be resolved: {err}"
        if path.is_absolute() and any(real.is_relative_to(root.resolve()) for root in self.kernel_dirs):
            return None
        allowed = ", ".join(str(root) for root in self.kernel_dirs)
        return f"{path} is outside the directories lab {self.name} takes kernel files from ({allowed})"


class LabRef(BaseModel):
    """What the control plane keeps of a lab with a submitted campaign: names, not settings.

    Drivers, executables, addresses and NFS settings stay in the inventory the lab's
    workers read themselves; a stored campaign carrying more is refused when it is read.
    """

    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)

    name: str = Field(pattern=r"^[a-z][a-z0-9-]{0,30}$")
    inventory: str
    nodes: list[str] = Field(min_length=1)
    boots_kernels: bool

    @field_validator("nodes")
    @classmethod
    def _node_names(cls, names: list[str]) -> list[str]:
        bad = [name for name in names if not _NAME.fullmatch(name)]
        if bad or len(set(names)) != len(names):
            raise ValueError(f"node names must be distinct and match {_NAME.pattern}: {names!r}")
        return names

    @classmethod
    def of(cls, lab: Lab) -> LabRef:
        return cls(
            name=lab.name,
            inventory=str(lab.inventory),
            nodes=[node.name for node in lab.nodes],
            boots_kernels=lab.boots_kernels,
        )


def load_lab(path: Path) -> Lab:
    """Read an inventory file; every problem becomes a SpecError naming file and line."""
    doc = load_located(path)
    _check_structure(doc)
    top = dict(_mapping(doc, ("all", "vars")))
    name = _lab_name(doc, top, path)
    kernel_dirs = _kernel_dirs(doc, top.pop("swaplab_kernel_dirs", []))
    backend, settings, origin = _nfs_server(doc)
    nodes = _nodes(doc, name, top)
    nfs = NFS_BACKENDS[backend].model_validate(settings)
    routes = _nfs_routes(doc, nfs, origin, nodes)
    nodes = tuple(replace(node, nfs_route=routes.get(node.name)) for node in nodes)
    boot = _boot_server(doc, nodes, nfs)
    # The server backend gets the routes with its settings: one export per node.
    # A lab-in-a-box also starts its machines' BMCs and serves their boot files: they go
    # with the settings too (nothing when the lab has no pxe nodes).
    machines = tuple(_machine(node) for node in nodes if node.kind.boots_from_network)
    extra = {"machines": machines, "boot_server": boot, "inventory": path} if machines else {}
    return Lab(name, path, backend, {**settings, "routes": routes, **extra}, nodes, kernel_dirs, boot)


def _machine(node: NodeConfig) -> LabMachine:
    route = node.nfs_route
    assert route is not None  # a pxe node is on a lab network (checked with the routes)
    return LabMachine(
        node=node.name,
        mac=str(node.options["mac"]),
        bmc_address=str(node.options["bmc_address"]),
        bmc_port=int(node.options.get("bmc_port", 623)),
        ssh_port=node.ssh_port,
        address=route.client_address,
        ram_mib=node.ram_mib or 0,
    )


def _kernel_dirs(doc: LocatedYaml, value: Any) -> tuple[Path, ...]:
    loc = ("all", "vars", "swaplab_kernel_dirs")
    if not isinstance(value, list) or not all(isinstance(item, str) and item.startswith("/") for item in value):
        raise SpecError([doc.issue(loc, f"must be a list of absolute directory paths, got {value!r}")])
    return tuple(Path(item) for item in value)


# -- structure --------------------------------------------------------------------------------
def _check_structure(doc: LocatedYaml) -> None:
    if not isinstance(doc.data, dict) or not isinstance(doc.data.get("all"), dict):
        raise SpecError([doc.issue((), "an inventory needs a top-level 'all:' mapping")])
    issues = [
        doc.issue((key,), "swaplab reads the 'all:' group only; put groups under all.children")
        for key in doc.data
        if key != "all"
    ]
    for group in (_NODE_GROUP, _NFS_GROUP, _BOOT_GROUP):
        if not _mapping(doc, group):
            if group != _BOOT_GROUP:  # only labs of pxe nodes have one (checked with the pool)
                issues.append(doc.issue(group[:-1], f"the inventory needs a '{group[-1]}' group"))
            continue
        issues += [
            doc.issue((*group, key), f"unknown key; allowed here: {', '.join(sorted(_GROUP_KEYS - {'children'}))}")
            for key in _mapping(doc, group)
            if key not in _GROUP_KEYS
        ]
        if "children" in _mapping(doc, group):
            issues.append(
                doc.issue(
                    (*group, "children"),
                    f"nested groups under '{group[-1]}' are not read by swaplab; list the hosts under {group[-1]}.hosts",
                )
            )
    if issues:
        raise SpecError(issues)


def _mapping(doc: LocatedYaml, loc: FieldPath) -> dict[str, Any]:
    value: Any = doc.data
    for key in loc:
        value = value.get(key) if isinstance(value, dict) else None
        if value is None:
            return {}
    if not isinstance(value, dict):
        raise SpecError([doc.issue(loc, f"must be a mapping (key: value), got {_kind(value)}")])
    return value


def _kind(value: Any) -> str:
    return {list: "a list", str: "text", bool: "a boolean", int: "a number", float: "a number"}.get(
        type(value), type(value).__name__
    )


def _lab_name(doc: LocatedYaml, top: dict[str, Any], path: Path) -> str:
    name = top.get("swaplab_lab", path.stem)
    if not isinstance(name, str) or not _NAME.fullmatch(name):
        raise SpecError([doc.issue(("all", "vars", "swaplab_lab"), f"lab name {name!r} must match {_NAME.pattern}")])
    return name


def _hosts(doc: LocatedYaml, group: FieldPath) -> list[tuple[str, FieldPath, dict[str, Any]]]:
    """(name, location, vars) of each host of a group; names and vars checked for shape."""
    hosts, issues = [], []
    for name, host_vars in _mapping(doc, (*group, "hosts")).items():
        loc = (*group, "hosts", name)
        if not isinstance(name, str) or not _NAME.fullmatch(name):
            issues.append(doc.issue(loc, f"host name {name!r} must be text matching {_NAME.pattern}"))
        elif host_vars is not None and not isinstance(host_vars, dict):
            issues.append(
                doc.issue(loc, f"the vars of host {name} must be a mapping (key: value), got {_kind(host_vars)}")
            )
        else:
            hosts.append((name, loc, host_vars or {}))
    if issues:
        raise SpecError(issues)
    return hosts


# -- merging vars, remembering where each came from ---------------------------------------------------
Layers = list[tuple[FieldPath, dict[str, Any]]]


def _merge(layers: Layers) -> tuple[dict[str, Any], dict[str, FieldPath]]:
    """Later layers win (all.vars < group vars < host vars); each key keeps its location."""
    merged: dict[str, Any] = {}
    origin: dict[str, FieldPath] = {}
    for loc, values in layers:
        for key, value in values.items():
            merged[key], origin[key] = value, (*loc, key)
    return merged, origin


def _validate(
    doc: LocatedYaml, model: type[_Strict], values: dict[str, Any], origin: dict[str, FieldPath], where: FieldPath
) -> tuple[_Strict | None, list[SpecIssue]]:
    """``values`` checked by ``model``; each error at the line its key was written on."""
    try:
        return model.model_validate(values), []
    except ValidationError as err:
        return None, [_issue(doc, error, origin, where) for error in err.errors()]


def _issue(doc: LocatedYaml, error: Any, origin: dict[str, FieldPath], where: FieldPath) -> SpecIssue:
    key = str(error["loc"][0]) if error["loc"] else ""
    loc = origin.get(key, (*where, key) if key else where)
    if error["type"] == "missing":
        return doc.issue(where, f"needs '{key}'")
    message = str(error["msg"]).removeprefix("Value error, ")
    return doc.issue(loc, f"{message} (got {error['input']!r})" if "input" in error else message)


# -- the NFS server ----------------------------------------------------------------------------------------
def _nfs_server(doc: LocatedYaml) -> tuple[str, dict[str, Any], dict[str, FieldPath]]:
    hosts = _hosts(doc, _NFS_GROUP)
    if len(hosts) != 1:
        raise SpecError([doc.issue((*_NFS_GROUP, "hosts"), "exactly one NFS server host per lab")])
    _name, loc, host_vars = hosts[0]
    merged, origin = _merge([((*_NFS_GROUP, "vars"), _mapping(doc, (*_NFS_GROUP, "vars"))), (loc, host_vars)])
    backend = merged.get("swaplab_nfs")
    if not isinstance(backend, str) or backend not in NFS_BACKENDS:
        known = ", ".join(sorted(NFS_BACKENDS))
        raise SpecError(
            [
                doc.issue(
                    origin.get("swaplab_nfs", loc), f"needs 'swaplab_nfs: <backend>' (known: {known}), got {backend!r}"
                )
            ]
        )
    prefix = "swaplab_nfs_"
    # Ansible's own keys are Ansible's, but those that say where it connects are checked.
    connection = {key: merged[key] for key in _ServerHostVars.model_fields if key in merged}
    _host, host_problems = _validate(doc, _ServerHostVars, connection, origin, loc)
    issues = host_problems + [
        doc.issue(origin[key], f"unknown key for an NFS server; allowed: swaplab_nfs and {prefix}<setting>")
        for key in merged
        if key.startswith(_PREFIX) and key != "swaplab_nfs" and not key.startswith(prefix)
    ]
    settings = {key[len(prefix) :]: value for key, value in merged.items() if key.startswith(prefix)}
    settings_origin = {key[len(prefix) :]: where for key, where in origin.items() if key.startswith(prefix)}
    _model, problems = _validate(doc, NFS_BACKENDS[backend], settings, settings_origin, loc)
    if issues or problems:
        raise SpecError(issues + [_renamed(p, prefix) for p in problems])
    return backend, settings, settings_origin


def _renamed(issue: SpecIssue, prefix: str) -> SpecIssue:
    # pydantic names the setting ("port"); the file says swaplab_nfs_port.
    return SpecIssue(issue.file, issue.line, issue.field, issue.message.replace("unknown key", "unknown setting"))


def _nfs_routes(
    doc: LocatedYaml, settings: _Strict, origin: dict[str, FieldPath], nodes: tuple[NodeConfig, ...]
) -> dict[str, NfsRoute]:
    """Each node's way to its own export; relayed nodes get 127.0.0.2, .3, ... in order."""
    if isinstance(settings, KnfsdSettings):
        return _lab_network_routes(doc, settings, nodes)
    if not isinstance(settings, GaneshaSettings):
        return {}
    relayed = nodes[0].kind.nfs_relay  # a lab's nodes are all of one kind (checked with the pool)
    if only := [node for node in nodes if node.kind.lab_network_only]:
        why = f"a {only[0].driver} node reaches NFS over the lab network only: the lab needs swaplab_nfs: knfsd"
        raise SpecError([doc.issue(_NFS_GROUP, why)])
    if relayed:
        _check_guest_address(doc, settings.guest_address, origin)
    sources = (str(a) for a in _relay_sources(settings.bind))
    routes = {}
    for export_id, node in enumerate(nodes, start=1):
        client = next(sources) if relayed else str(node.options.get("nfs_client") or node.ssh_host)
        routes[node.name] = NfsRoute(
            node=node.name,
            export_id=export_id,
            mount_address=settings.guest_address,
            mount_port=NFS_GUEST_PORT if relayed else settings.port,
            client_address=client,
            server_address=settings.bind,
            server_port=settings.port,
            relayed=relayed,
        )
    return routes


def _lab_network_routes(
    doc: LocatedYaml, settings: KnfsdSettings, nodes: tuple[NodeConfig, ...]
) -> dict[str, NfsRoute]:
    """Nodes on the lab's bridge: node N of the inventory at .(10+N), the server at .1."""
    subnet = ipaddress.IPv4Network(settings.subnet)
    issues = []
    for node in nodes:
        loc = (*_NODE_GROUP, "hosts", node.name)
        if len(node.name) > LAB_NODE_NAME_MAX:
            why = f"its tap is tap-<name>: at most {LAB_NODE_NAME_MAX} characters on a lab network"
            issues.append(doc.issue(loc, f"node name {node.name!r} is too long ({why})"))
        if not node.kind.lab_network:
            issues.append(
                doc.issue(loc, f"a {node.driver} node cannot be put on a lab network ({_LAB_NETWORK_KINDS} nodes can)")
            )
    if len(nodes) > subnet.num_addresses - 1 - LAB_FIRST_NODE_HOST:
        issues.append(doc.issue(_NODE_GROUP, f"{len(nodes)} nodes do not fit in {subnet} from .{LAB_FIRST_NODE_HOST}"))
    if issues:
        raise SpecError(issues)
    server = str(subnet.network_address + LAB_SERVER_HOST)
    return {
        node.name: NfsRoute(
            node=node.name,
            export_id=export_id,
            mount_address=server,
            mount_port=NFS_PORT,
            client_address=_lab_node_address(subnet, export_id - 1),
            server_address=server,
            server_port=NFS_PORT,
            relayed=False,
            lab_subnet=str(subnet),
            mac=str(node.options["mac"]) if node.kind.boots_from_network else None,
        )
        for export_id, node in enumerate(nodes, start=1)
    }


def _lab_node_address(subnet: ipaddress.IPv4Network, index: int) -> str:
    """The lab-network address of the inventory's node number ``index`` (from 0)."""
    return str(subnet.network_address + LAB_FIRST_NODE_HOST + index)


# -- the boot server -------------------------------------------------------------------------------------------
def _boot_server(doc: LocatedYaml, nodes: tuple[NodeConfig, ...], nfs: _Strict) -> BootServer | None:
    """The boot_server group's one host, which labs of pxe nodes need and others must not have."""
    hosts = _hosts(doc, _BOOT_GROUP)
    booted = [node for node in nodes if node.kind.boots_from_network]
    if not booted:
        if hosts:
            _refuse(doc, _BOOT_GROUP, f"a boot server is for pxe nodes; this lab's are {nodes[0].driver} nodes")
        return None
    if len(hosts) != 1:
        why = (
            f"{booted[0].driver} nodes boot from the lab's boot server: the inventory needs one host under boot_server"
        )
        _refuse(doc, _BOOT_GROUP if hosts else _NODE_GROUP, why)
    name, loc, host_vars = hosts[0]
    merged, origin = _merge([((*_BOOT_GROUP, "vars"), _mapping(doc, (*_BOOT_GROUP, "vars"))), (loc, host_vars)])
    prefix = "swaplab_boot_"
    issues = [
        doc.issue(origin[key], f"unknown key for a boot server; allowed: {prefix}<setting>")
        for key in merged
        if key.startswith(_PREFIX) and not key.startswith(prefix)
    ]
    connection = {key: merged[key] for key in _ServerHostVars.model_fields if key in merged}
    _host, host_problems = _validate(doc, _ServerHostVars, connection, origin, loc)
    values = {key[len(prefix) :]: value for key, value in merged.items() if key.startswith(prefix)}
    values_origin = {key[len(prefix) :]: where for key, where in origin.items() if key.startswith(prefix)}
    settings, problems = _validate(doc, BootServerSettings, values, values_origin, loc)
    if issues or host_problems or problems or not isinstance(settings, BootServerSettings):
        allowed = ", ".join(prefix + key for key in BootServerSettings.model_fields)
        raise SpecError(issues + host_problems + [_extra_named(p, allowed) for p in problems])
    shared = name in {host for host, _loc, _vars in _hosts(doc, _NFS_GROUP)}
    address = settings.address
    if address is None and shared and isinstance(nfs, KnfsdSettings):
        address = str(ipaddress.IPv4Network(nfs.subnet).network_address + LAB_SERVER_HOST)
    if address is None:
        _refuse(doc, loc, "needs 'swaplab_boot_address': the boot server's address on the lab network")
    return BootServer(name, settings, address, shared)


def _extra_named(issue: SpecIssue, allowed: str) -> SpecIssue:
    if not issue.message.startswith("Extra inputs are not permitted"):
        return issue
    return SpecIssue(issue.file, issue.line, issue.field, f"unknown setting; allowed: {allowed}")


def _refuse(doc: LocatedYaml, loc: FieldPath, message: str) -> NoReturn:
    raise SpecError([doc.issue(loc, message)])


def _relay_sources(bind: str) -> Iterator[ipaddress.IPv4Address | ipaddress.IPv6Address]:
    address = _FIRST_RELAY_SOURCE
    while True:
        if str(address) != bind:  # never the server's own address
            yield address
        address += 1


def _check_guest_address(doc: LocatedYaml, value: str, origin: dict[str, FieldPath]) -> None:
    address = ipaddress.ip_address(value)
    if address in SLIRP_NETWORK and address not in _SLIRP_RESERVED:
        return
    loc = origin.get("guest_address", _NFS_GROUP)
    why = "it is QEMU's host address there" if value == str(SLIRP_NETWORK[2]) else "QEMU cannot forward it"
    raise SpecError(
        [
            doc.issue(
                loc,
                f"{value} cannot be the NFS address of QEMU nodes ({why}); use an unused address of "
                f"QEMU's user network {SLIRP_NETWORK}, e.g. 10.0.2.100",
            )
        ]
    )


# -- the node pool ---------------------------------------------------------------------------------------------
def _nodes(doc: LocatedYaml, lab: str, top: dict[str, Any]) -> tuple[NodeConfig, ...]:
    hosts = _hosts(doc, _NODE_GROUP)
    if not hosts:
        raise SpecError([doc.issue(_NODE_GROUP, "the node pool is empty")])
    group_vars = ((*_NODE_GROUP, "vars"), _mapping(doc, (*_NODE_GROUP, "vars")))
    nodes, issues = [], []
    for name, loc, host_vars in hosts:
        node, problems = _node(doc, lab, name, loc, [(("all", "vars"), top), group_vars, (loc, host_vars)])
        issues += problems
        if node is not None:
            nodes.append((loc, node))
    issues += _pool_issues(doc, nodes)
    if issues:
        # A wrong group var is wrong for every node that inherits it: say it once.
        raise SpecError(list(dict.fromkeys(issues)))
    return tuple(node for _loc, node in nodes)


def _node(
    doc: LocatedYaml, lab: str, name: str, loc: FieldPath, layers: Layers
) -> tuple[NodeConfig | None, list[SpecIssue]]:
    merged, origin = _merge(layers)
    merged.pop("swaplab_lab", None)  # the lab's own name, in all.vars
    driver = merged.get("swaplab_driver")
    kind = DRIVER_KINDS.get(driver) if isinstance(driver, str) else None
    if kind is None:
        known = ", ".join(sorted(DRIVER_KINDS))
        return None, [doc.issue(origin.get("swaplab_driver", loc), f"unknown driver {driver!r}; known: {known}")]
    ours = {key: value for key, value in merged.items() if key in _NODE_VAR_KEYS}
    options = {key[len(_PREFIX) :]: v for key, v in merged.items() if key.startswith(_PREFIX) and key not in ours}
    option_origin = {key[len(_PREFIX) :]: where for key, where in origin.items() if key.startswith(_PREFIX)}
    issues = [doc.issue(loc, f"needs '{key}' (driver {kind.name})") for key in kind.required if key not in merged]
    base, problems = _validate(doc, _NodeVars, ours, origin, loc)
    _opts, option_problems = _validate(doc, kind.options, options, option_origin, loc)
    # A required option that is missing was named above, with its swaplab_ prefix.
    said = {f"needs '{key.removeprefix(_PREFIX)}'" for key in kind.required if key not in merged}
    issues += problems + [_option_issue(p, kind) for p in option_problems if p.message not in said]
    if issues or not isinstance(base, _NodeVars):
        return None, issues
    return _node_config(name, lab, kind, base, options), []


def _option_issue(issue: SpecIssue, kind: DriverKind) -> SpecIssue:
    if "Extra inputs are not permitted" not in issue.message:
        return issue
    allowed = ", ".join(f"{_PREFIX}{name}" for name in (*kind.options.model_fields, "driver", "ram_mib", "cpus"))
    return SpecIssue(issue.file, issue.line, issue.field, f"unknown key for a {kind.name} node; allowed: {allowed}")


def _node_config(name: str, lab: str, kind: DriverKind, base: _NodeVars, options: dict[str, Any]) -> NodeConfig:
    return NodeConfig(
        name=name,
        lab=lab,
        driver=kind.name,
        ram_mib=base.swaplab_ram_mib,
        cpus=base.swaplab_cpus,
        ssh_host=base.ansible_host,
        ssh_port=base.ansible_port,
        options=options,
        ssh_user=base.ansible_user,
    )


def _pool_issues(doc: LocatedYaml, nodes: list[tuple[FieldPath, NodeConfig]]) -> list[SpecIssue]:
    issues = []
    seen: dict[tuple[str, int], str] = {}
    for loc, node in nodes:
        endpoint = (node.ssh_host, node.ssh_port)
        if endpoint in seen:
            issues.append(
                doc.issue(loc, f"{node.name} has the SSH address {node.ssh_host}:{node.ssh_port} of {seen[endpoint]}")
            )
        seen.setdefault(endpoint, node.name)
    if len({node.kind.boots_kernels for _loc, node in nodes}) > 1:
        # A campaign's kernels are either booted or read back: one lab cannot mix both.
        issues.append(doc.issue(_NODE_GROUP, "a lab's nodes are all booted by swaplab or all already running"))
    elif len({node.driver for _loc, node in nodes}) > 1 and not all(node.kind.lab_network for _loc, node in nodes):
        # Only on a lab network do nodes of several kinds meet on equal terms (QEMU guests and
        # machines on one bridge); elsewhere each kind reaches NFS its own way.
        drivers = " and ".join(sorted({node.driver for _loc, node in nodes}))
        issues.append(doc.issue(_NODE_GROUP, f"a lab's nodes all have one driver (got {drivers})"))
    return issues + _machine_identity_issues(doc, nodes)


def _machine_identity_issues(doc: LocatedYaml, nodes: list[tuple[FieldPath, NodeConfig]]) -> list[SpecIssue]:
    """A MAC or a BMC belongs to one machine: two nodes naming one would power or boot the other."""
    issues = []
    macs: dict[str, str] = {}
    bmcs: dict[str, str] = {}
    for loc, node in nodes:
        mac, bmc = node.options.get("mac"), node.options.get("bmc_address")
        if isinstance(mac, str):
            if mac in macs:
                issues.append(doc.issue((*loc, "swaplab_mac"), f"{node.name} has the MAC {mac} of {macs[mac]}"))
            macs.setdefault(mac, node.name)
        if isinstance(bmc, str):
            endpoint = f"{bmc}:{node.options.get('bmc_port', 623)}"
            if endpoint in bmcs:
                issues.append(
                    doc.issue((*loc, "swaplab_bmc_address"), f"{node.name} has the BMC {endpoint} of {bmcs[endpoint]}")
                )
            bmcs.setdefault(endpoint, node.name)
    return issues
