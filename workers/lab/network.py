"""The lab network: one Ethernet segment per lab, inside a network namespace of its own.

A lab's nodes and servers meet on a bridge (``br0``) in the namespace ``swaplab-<lab>``;
each of them has a persistent tap there (``tap-<name>``). Nothing is added to the host's
own network namespace: the addresses of the plan (10.77.0.0/24 by default) exist only
inside the lab, so two labs, or a lab and the host, never collide.

The segment is hostile ground: a node runs a kernel under test and is root in it. So
every frame entering from a port must carry that port's own MAC and, for IPv4 and ARP,
its own address (anything else, a VLAN tag or IPv6 included, is dropped); nodes never
reach each other (nftables, plus bridge port isolation); and nodes never reach an sshd
on the lab network. The namespace's own stack sends guests nothing (no IPv6, output
dropped). The rules live in a bridge-family nftables table in the namespace, replaced in
one transaction on every ``up``.

QEMU stays in the host namespace and gets its tap as an open file descriptor
(``open_tap``, then ``-netdev tap,fd=N``): /dev/net/tun is opened from a thread that
entered the lab's namespace, so the fd is bound to the tap that lives there.

This is the data path only. The management path is not here: the guests' SSH still goes
over QEMU user networking, beside this network.
"""

from __future__ import annotations

import ctypes
import fcntl
import hashlib
import ipaddress
import json
import os
import re
import socket
import struct
import subprocess
import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, TypeVar

from model.lab import LAB_FIRST_NODE_HOST, LAB_SERVER_HOST, NfsRoute

NAMESPACE_PREFIX = "swaplab-"
NETNS_DIR = Path("/var/run/netns")  # where `ip netns add` mounts a named namespace
BRIDGE = "br0"
TAP_PREFIX = "tap-"
NFT_TABLE = "swaplab"
DEFAULT_SUBNET = ipaddress.IPv4Network("10.77.0.0/24")
SERVER_HOST = LAB_SERVER_HOST  # the server is .1 of the subnet
FIRST_NODE_HOST = LAB_FIRST_NODE_HOST  # nodes are .11 upward (the inventory's routes agree)
COMMAND_TIMEOUT_S = 15.0

# Linux interface names have at most 15 characters (IFNAMSIZ - 1): "tap-" leaves 11.
_PORT_NAME = re.compile(r"[a-z0-9][a-z0-9-]{0,10}")
# A lab name only names the namespace (a file name), but it stays short and plain too.
_LAB_NAME = re.compile(r"[a-z0-9][a-z0-9-]{0,31}")
MAC_RE = re.compile(r"[0-9a-f]{2}(:[0-9a-f]{2}){5}")

# Kernel constants (linux/sched.h, linux/if_tun.h); Python 3.11 has no os.setns.
_CLONE_NEWNET = 0x40000000
_TUNSETIFF = 0x400454CA
_TUNGETIFF = 0x800454D2
_IFF_TAP = 0x0002
_IFF_NO_PI = 0x1000
_IFF_PERSIST = 0x0800
_IFREQ = "16sH22x"  # struct ifreq: the name, then ifr_flags in the union (40 bytes)

_libc = ctypes.CDLL(None, use_errno=True)

PortKind = Literal["node", "server"]
T = TypeVar("T")


class LabNetworkError(RuntimeError):
    """The lab network could not be built, inspected or removed (an infra-error)."""


@dataclass(frozen=True)
class Port:
    """One guest on the lab network: its name, role, MAC and IPv4 address as the guest uses them."""

    name: str
    kind: PortKind
    mac: str
    address: ipaddress.IPv4Address
    # A machine that takes its address by DHCP (a pxe node's firmware and kernel do).
    dhcp: bool = False

    def __post_init__(self) -> None:
        if not _PORT_NAME.fullmatch(self.name):
            raise ValueError(f"port name {self.name!r}: 1-11 characters of [a-z0-9-], not starting with '-'")
        if self.kind not in ("node", "server"):
            raise ValueError(f"port {self.name}: kind {self.kind!r} is neither 'node' nor 'server'")
        if not isinstance(self.address, ipaddress.IPv4Address):
            raise ValueError(f"port {self.name}: address {self.address!r} is not an IPv4Address")
        _check_mac(self.name, self.mac)

    @property
    def tap(self) -> str:
        """The tap's interface name inside the lab's namespace."""
        return TAP_PREFIX + self.name


@dataclass(frozen=True)
class LabNetwork:
    """The plan of one lab's network: its subnet and its ports (nodes and servers)."""

    lab: str
    subnet: ipaddress.IPv4Network
    ports: tuple[Port, ...] = field(default=())

    def __post_init__(self) -> None:
        check_lab_name(self.lab)
        if not isinstance(self.subnet, ipaddress.IPv4Network):
            raise ValueError(f"lab {self.lab}: subnet {self.subnet!r} is not an IPv4Network")
        not_hosts = (self.subnet.network_address, self.subnet.broadcast_address)
        for port in self.ports:
            if port.address not in self.subnet or port.address in not_hosts:
                raise ValueError(
                    f"lab {self.lab}: port {port.name} address {port.address} is not a host of {self.subnet}"
                )
        _check_unique(self.lab, "name", [port.name for port in self.ports])
        _check_unique(self.lab, "address", [str(port.address) for port in self.ports])
        _check_unique(self.lab, "MAC", [port.mac for port in self.ports])
        if self.management is not None and self.management in {port.address for port in self.ports}:
            raise ValueError(f"lab {self.lab}: {self.management}, the relay's address, is a port's")

    @property
    def namespace(self) -> str:
        return namespace(self.lab)

    @property
    def management(self) -> ipaddress.IPv4Address | None:
        """The namespace's own address on the bridge, when it has machines to reach (their
        sshd, through a relay on this host's loopback): the subnet's last host."""
        if not any(port.dhcp for port in self.ports):
            return None
        return self.subnet.broadcast_address - 1

    @property
    def nodes(self) -> tuple[Port, ...]:
        return tuple(port for port in self.ports if port.kind == "node")

    def port(self, name: str) -> Port:
        """The port called ``name`` (KeyError when the plan has none)."""
        for port in self.ports:
            if port.name == name:
                return port
        raise KeyError(f"lab {self.lab} has no port {name!r}")


def check_lab_name(lab: str) -> None:
    """Refuse a lab name that cannot name our namespace."""
    if not _LAB_NAME.fullmatch(lab):
        raise ValueError(f"lab name {lab!r}: 1-32 characters of [a-z0-9-], not starting with '-'")


def namespace(lab: str) -> str:
    """The network namespace of ``lab``."""
    check_lab_name(lab)
    return NAMESPACE_PREFIX + lab


def _check_mac(name: str, mac: str) -> None:
    if not MAC_RE.fullmatch(mac):
        raise ValueError(f"port {name}: MAC {mac!r} is not lower-case aa:bb:cc:dd:ee:ff")
    first = int(mac[:2], 16)
    # Guests get made-up MACs: they must never pose as a vendor's card, nor as a group.
    if not first & 0x02 or first & 0x01:
        raise ValueError(f"port {name}: MAC {mac} is not a locally administered unicast address")


def _check_unique(lab: str, what: str, values: list[str]) -> None:
    seen: set[str] = set()
    for value in values:
        if value in seen:
            raise ValueError(f"lab {lab}: two ports have the {what} {value}")
        seen.add(value)


def lab_network(
    lab: str,
    nodes: Sequence[str],
    server: str = "server",
    subnet: ipaddress.IPv4Network = DEFAULT_SUBNET,
    macs: Mapping[str, str] | None = None,
) -> LabNetwork:
    """The usual plan: the server at .1, the nodes at .11 upward (in ``nodes`` order).

    MACs are 02:<3 bytes of the lab name's hash>:<last two bytes of the address>, so a
    guest's MAC is the same on every run and tells, in a capture, which lab it came from.
    A machine with a MAC of its own (``macs``: a pxe node's, from the inventory) keeps it.
    """
    check_lab_name(lab)
    first = FIRST_NODE_HOST
    if subnet.num_addresses - 2 < first - 1 + len(nodes):
        raise ValueError(f"lab {lab}: {subnet} has no room for {len(nodes)} nodes from .{first}")
    ports = [
        Port(
            server, "server", port_mac(lab, subnet.network_address + SERVER_HOST), subnet.network_address + SERVER_HOST
        )
    ]
    for i, node in enumerate(nodes):
        address = subnet.network_address + first + i
        own = (macs or {}).get(node)
        ports.append(Port(node, "node", own or port_mac(lab, address), address, dhcp=own is not None))
    return LabNetwork(lab, subnet, tuple(ports))


def node_port(lab: str, route: NfsRoute) -> tuple[Port, LabNetwork]:
    """A lab-network node's port (its MAC, address and tap), and its lab's network, from the
    route the inventory gave it: what its QEMU and its guest set up."""
    if route.lab_subnet is None:
        raise LabNetworkError(f"node {route.node} is not on a lab network")
    address = ipaddress.IPv4Address(route.client_address)
    net = LabNetwork(lab, ipaddress.IPv4Network(route.lab_subnet))
    return Port(route.node, "node", route.mac or port_mac(lab, address), address, dhcp=route.mac is not None), net


def port_mac(lab: str, address: ipaddress.IPv4Address) -> str:
    """The MAC of the guest at ``address`` on ``lab``'s network (the plan's, always the same)."""
    mac = bytes([0x02, *hashlib.sha256(lab.encode()).digest()[:3]]) + address.packed[2:]
    return ":".join(f"{byte:02x}" for byte in mac)


# --- commands --------------------------------------------------------------------------


def _run(argv: list[str], stdin: str | None = None) -> str:
    """Run ``argv``; its stdout, or LabNetworkError naming the command and its stderr."""
    try:
        proc = subprocess.run(argv, input=stdin, check=False, capture_output=True, text=True, timeout=COMMAND_TIMEOUT_S)
    except FileNotFoundError as exc:
        raise LabNetworkError(f"{argv[0]} is not installed (scripts/setup installs iproute2 and nftables)") from exc
    except subprocess.TimeoutExpired as exc:
        raise LabNetworkError(f"`{' '.join(argv)}` did not finish in {COMMAND_TIMEOUT_S:.0f} s") from exc
    if proc.returncode != 0:
        raise LabNetworkError(f"`{' '.join(argv)}` failed (exit {proc.returncode}): {proc.stderr.strip()}")
    return proc.stdout


def _ip(ns: str, *args: str) -> str:
    return _run(["ip", "-n", ns, *args])


def _links(ns: str) -> dict[str, dict[str, Any]]:
    """The namespace's links by name, with their details (kind, master, bridge port flags)."""
    listed: list[dict[str, Any]] = json.loads(_ip(ns, "-j", "-d", "link", "show") or "[]")
    return {link["ifname"]: link for link in listed}


# --- up / down -------------------------------------------------------------------------


def up(net: LabNetwork) -> None:
    """Build the lab network, or bring an existing one in line with ``net``.

    Idempotent: on a lab that is already as planned, links are left as they are and the
    nftables table is replaced by an identical one (one transaction, so never absent).
    """
    ns = net.namespace
    if not _namespace_exists(ns):
        _run(["ip", "netns", "add", ns])
    _in_namespace(ns, _disable_ipv6)
    links = _links(ns)
    _ensure_bridge(ns, links.get(BRIDGE))
    if net.management is not None:
        _ip(ns, "addr", "replace", f"{net.management}/{net.subnet.prefixlen}", "dev", BRIDGE)
    for port in net.ports:
        _ensure_tap(ns, port, links.get(port.tap))
    _remove_strays(ns, net, links)
    load_rules(net)


def _namespace_exists(ns: str) -> bool:
    return (NETNS_DIR / ns).exists()


def _disable_ipv6() -> None:
    """(In the lab's namespace.) No IPv6 on the bridge or the taps: the namespace itself
    stays silent, so a guest only ever sees frames other guests sent. Written before the
    links exist (``default``), as they take their setting when they are created."""
    conf = Path("/proc/sys/net/ipv6/conf")
    if not conf.is_dir():
        return  # a kernel without IPv6 is silent already
    for which in ("all", "default"):
        (conf / which / "disable_ipv6").write_text("1")


def _ensure_bridge(ns: str, link: dict[str, Any] | None) -> None:
    if link is None:
        _ip(ns, "link", "add", BRIDGE, "type", "bridge")
        link = {"flags": []}
    elif link.get("linkinfo", {}).get("info_kind") != "bridge":
        raise LabNetworkError(f"{ns}: {BRIDGE} exists and is not a bridge")
    if "UP" not in link["flags"]:
        _ip(ns, "link", "set", "dev", BRIDGE, "up")


def _ensure_tap(ns: str, port: Port, link: dict[str, Any] | None) -> None:
    """A persistent tap for ``port`` on the bridge, isolated when it is a node's, up."""
    if link is None:
        _ip(ns, "tuntap", "add", "dev", port.tap, "mode", "tap")
        link = {"flags": []}
    else:
        info = link.get("linkinfo", {})
        if info.get("info_kind") != "tun" or info.get("info_data", {}).get("type") != "tap":
            raise LabNetworkError(f"{ns}: {port.tap} exists and is not a tap")
    isolated = False  # a port just put on the bridge starts without isolation
    if link.get("master") == BRIDGE:
        isolated = bool(link["linkinfo"].get("info_slave_data", {}).get("isolated"))
    else:
        _ip(ns, "link", "set", "dev", port.tap, "master", BRIDGE)
    # Isolated ports reach only non-isolated ones: nodes reach the server, never each other.
    wanted = port.kind == "node"
    if isolated != wanted:
        _ip(ns, "link", "set", "dev", port.tap, "type", "bridge_slave", "isolated", "on" if wanted else "off")
    if "UP" not in link["flags"]:
        _ip(ns, "link", "set", "dev", port.tap, "up")


def _remove_strays(ns: str, net: LabNetwork, links: dict[str, dict[str, Any]]) -> None:
    """Delete taps (and other bridge ports) the plan no longer has: no rule covers them,
    and a guest still attached there would see the lab's broadcasts."""
    planned = {port.tap for port in net.ports}
    for name, link in links.items():
        ours = name.startswith(TAP_PREFIX) or link.get("master") == BRIDGE
        if ours and name not in planned:
            _ip(ns, "link", "del", "dev", name)


def down(lab: str) -> None:
    """Remove the lab network: deleting the namespace takes its bridge and taps with it.

    Idempotent. A process still holding a tap's fd keeps the (now nameless) namespace, its
    bridge and taps working until it closes the fd: stop the guests first.
    """
    ns = namespace(lab)
    if not _namespace_exists(ns):
        return
    try:
        _run(["ip", "netns", "del", ns])
    except LabNetworkError:
        if _namespace_exists(ns):  # not a concurrent `down` that got there first
            raise


def leftovers() -> list[str]:
    """The labs that have a namespace of ours (``swaplab-<valid lab name>``), by lab name.

    Ownership is proved by the name alone: swaplab creates no other namespace with this
    prefix, and it never looks at a namespace without it.
    """
    if not NETNS_DIR.is_dir():
        return []
    ours = [entry.name for entry in NETNS_DIR.iterdir() if entry.name.startswith(NAMESPACE_PREFIX)]
    return sorted(lab for lab in (name.removeprefix(NAMESPACE_PREFIX) for name in ours) if _LAB_NAME.fullmatch(lab))


def clean_leftovers(keep: set[str]) -> list[str]:
    """``down`` every lab of ``leftovers()`` whose name is not in ``keep``; the labs removed.

    Only namespaces named with our prefix are touched (see ``leftovers``): any other
    namespace on the host, ours to keep or someone else's, is left alone.
    """
    removed = [lab for lab in leftovers() if lab not in keep]
    for lab in removed:
        down(lab)
    return removed


# --- inside a guest ------------------------------------------------------------------


def nic_name_command(mac: str) -> str:
    """A shell command, run in a guest, printing the name of its NIC with ``mac`` (nothing
    when it has none). The MAC is checked here, so nothing else reaches the shell."""
    if not MAC_RE.fullmatch(mac):
        raise LabNetworkError(f"{mac!r} is not a MAC address")
    return f'for d in /sys/class/net/*; do [ "$(cat $d/address)" = {mac} ] && basename $d; done; true'


def guest_link_command(mac: str, address_cidr: str) -> str:
    """Shell lines, run in a guest, giving its NIC with ``mac`` the address ``address_cidr``
    (and no other): how a node or the server takes its place on the lab network. Both
    values are checked here, so nothing but a MAC and an address reaches the shell."""
    ipaddress.IPv4Interface(address_cidr)  # refuses anything but an address/prefix
    return (
        f"dev=$({nic_name_command(mac)})\n"  # which checks the MAC
        f'[ -n "$dev" ] || {{ echo "no NIC with MAC {mac}" >&2; exit 1; }}\n'
        f'ip addr flush dev "$dev"\n'
        f'ip addr add {address_cidr} dev "$dev"\n'
        f'ip link set "$dev" up\n'
    )


# --- nftables --------------------------------------------------------------------------


def ruleset(net: LabNetwork) -> str:
    """The nft script that replaces the lab's table: declare it (so the delete cannot
    fail), delete it, define it anew, all in the one transaction of ``nft -f``."""
    lines = [f"table bridge {NFT_TABLE}", f"delete table bridge {NFT_TABLE}", f"table bridge {NFT_TABLE} {{"]
    lines += _admit_chain(net)
    for port in net.ports:
        lines += _port_chain(port)
    lines += _isolate_chain(net)
    # The namespace's own stack (the bridge device's IGMP, say) has nothing to tell a guest
    # — except, on a lab with machines, the SSH relay's connections to their sshd.
    lines += ["  chain quiet {", "    type filter hook output priority filter; policy drop;"]
    if net.management is not None:
        machines = "{ " + ", ".join(str(port.address) for port in net.ports if port.dhcp) + " }"
        lines += [
            f"    ether type arp arp saddr ip {net.management} accept",
            f"    ether type ip ip saddr {net.management} ip daddr {machines} tcp dport 22 accept",
        ]
    lines.append("  }")
    lines.append("}")
    return "\n".join(lines) + "\n"


def _admit_chain(net: LabNetwork) -> list[str]:
    # Policy drop: a frame from a port the plan does not know never enters the bridge.
    lines = ["  chain admit {", "    type filter hook prerouting priority filter; policy drop;"]
    if net.ports:
        verdicts = ", ".join(f'"{port.tap}" : jump {_chain(port)}' for port in net.ports)
        lines.append(f"    iifname vmap {{ {verdicts} }}")
    lines.append("  }")
    return lines


def _port_chain(port: Port) -> list[str]:
    """Anti-spoofing: only the port's own MAC, IPv4 address and ARP sender; other ether
    types (IPv6, a VLAN tag that would hide the IPv4 header) are dropped too. A machine
    that asks DHCP for its address may also send that request (from 0.0.0.0)."""
    dhcp = (
        ["    ether type ip ip saddr 0.0.0.0 ip daddr 255.255.255.255 udp sport 68 udp dport 67 accept"]
        if port.dhcp
        else []
    )
    return [
        f"  chain {_chain(port)} {{",
        f"    ether saddr != {port.mac} drop",
        *dhcp,
        f"    ether type ip ip saddr {port.address} accept",
        f"    ether type arp arp htype 1 arp ptype ip arp hlen 6 arp plen 4 arp saddr ether {port.mac} arp saddr ip {port.address} accept",
        "    drop",
        "  }",
    ]


def _isolate_chain(net: LabNetwork) -> list[str]:
    lines = ["  chain isolate {", "    type filter hook forward priority filter; policy accept;"]
    if net.nodes:
        nodes = "{ " + ", ".join(f'"{port.tap}"' for port in net.nodes) + " }"
        lines.append(f"    iifname {nodes} oifname {nodes} drop")
        # Nodes are untrusted: no sshd on the lab network is theirs to reach (the server's
        # is the host's way in). Their own SSH goes over the management path.
        lines.append(f"    iifname {nodes} tcp dport 22 drop")
    lines.append("  }")
    return lines


def _chain(port: Port) -> str:
    return f"from-{port.name}"


def load_rules(net: LabNetwork) -> None:
    """Replace the lab's nftables table with ``ruleset(net)``, atomically."""
    _run(["ip", "netns", "exec", net.namespace, "nft", "-f", "-"], stdin=ruleset(net))


# --- taps for a process in the host namespace -------------------------------------------


def load_nft(ns: str, script: str) -> None:
    """Load an nft script in namespace ``ns`` (faults add and delete tables of their own)."""
    _run(["ip", "netns", "exec", ns, "nft", "-f", "-"], stdin=script)


def tc(ns: str, *args: str) -> str:
    """Run ``tc`` in namespace ``ns`` (bandwidth faults shape the lab's taps, never the host's)."""
    return _run(["ip", "netns", "exec", ns, "tc", *args])


def open_tap(net: LabNetwork, port: Port | str, inheritable: bool = False) -> int:
    """An open fd on ``port``'s tap in the lab's namespace, for a process in the host's
    (``-netdev tap,fd=N``). Close-on-exec unless ``inheritable``. The caller closes it.

    /dev/net/tun binds the fd to the namespace of whoever opened it: opening by name from
    the host's namespace would create a new tap there. So it is opened from a thread that
    entered the lab's namespace (setns affects the calling thread only).
    """
    tap = (net.port(port) if isinstance(port, str) else port).tap
    ns = net.namespace
    if not _namespace_exists(ns):
        raise LabNetworkError(f"lab {net.lab} has no network (no namespace {ns}): run up() first")
    fd = _in_namespace(ns, lambda: _attach(ns, tap))
    os.set_inheritable(fd, inheritable)
    return fd


def _attach(ns: str, tap: str) -> int:
    """(In the lab's namespace.) Open /dev/net/tun and attach it to the existing ``tap``."""
    try:
        socket.if_nametoindex(tap)
    except OSError:
        raise LabNetworkError(f"{ns} has no {tap}: run up() first") from None
    fd = os.open("/dev/net/tun", os.O_RDWR | os.O_CLOEXEC)
    try:
        fcntl.ioctl(fd, _TUNSETIFF, struct.pack(_IFREQ, tap.encode(), _IFF_TAP | _IFF_NO_PI))
        _, flags = struct.unpack(_IFREQ, fcntl.ioctl(fd, _TUNGETIFF, bytes(struct.calcsize(_IFREQ))))
    except OSError as exc:
        os.close(fd)
        raise LabNetworkError(f"cannot attach to {tap} in {ns}: {exc}") from exc
    # Deleted since the check above: TUNSETIFF made a new, non-persistent tap (closing drops it).
    if not flags & _IFF_PERSIST:
        os.close(fd)
        raise LabNetworkError(f"{tap} in {ns} disappeared while it was being opened")
    return fd


def _in_namespace(ns: str, action: Callable[[], T]) -> T:
    """``action()`` run in a short-lived thread that entered the network namespace ``ns``."""
    outcome: list[T] = []
    failure: list[BaseException] = []

    def body() -> None:
        try:
            outcome.append(_entered(ns, action))
        except BaseException as exc:  # handed to the caller's thread
            failure.append(exc)

    thread = threading.Thread(target=body, name=f"netns-{ns}")
    thread.start()
    thread.join()
    if failure:
        raise failure[0]
    return outcome[0]


def _entered(ns: str, action: Callable[[], T]) -> T:
    own = os.open("/proc/thread-self/ns/net", os.O_RDONLY | os.O_CLOEXEC)
    try:
        try:
            target = os.open(NETNS_DIR / ns, os.O_RDONLY | os.O_CLOEXEC)
        except OSError as exc:
            raise LabNetworkError(f"cannot open namespace {ns}: {exc}") from exc
        _setns(target, ns, close=True)
        try:
            return action()
        finally:
            # The thread ends next, but it goes back anyway: nothing else may run in the lab's namespace.
            _setns(own, "the process's own namespace", close=False)
    finally:
        os.close(own)


def _setns(fd: int, what: str, close: bool) -> None:
    try:
        if _libc.setns(fd, _CLONE_NEWNET) != 0:
            errno = ctypes.get_errno()
            raise LabNetworkError(f"setns into {what}: {os.strerror(errno)}")
    finally:
        if close:
            os.close(fd)
