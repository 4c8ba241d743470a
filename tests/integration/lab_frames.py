"""A lab network to send real frames through: a fresh namespace, bridge and taps per test,
each tap's fd as a guest's side of the wire, and Ethernet/IPv4/UDP/ARP frames built by hand.

A "not delivered" check never waits for a timeout: the frame under test is followed by a
control frame that must be delivered to the same tap, and a tap write is delivered
synchronously, so once the control has arrived the frame under test would have too.
"""

from __future__ import annotations

import ipaddress
import itertools
import json
import os
import select
import struct
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from tests.conftest import require_tools, unavailable
from workers.lab import network
from workers.lab.network import LabNetwork, Port

PID = os.getpid()
_labs = itertools.count()
BROADCAST = "ff:ff:ff:ff:ff:ff"


def plan() -> LabNetwork:
    """A fresh lab per test; port names carry the pid so they are unique on the host too."""
    return network.lab_network(f"t{PID}-{next(_labs)}", [f"a{PID}", f"b{PID}"], server=f"s{PID}")


def lab_up() -> Iterator[LabNetwork]:
    """A fresh lab network, up until the generator is closed (skipped without root, ip, nft)."""
    require_tools(("ip", "nft"))
    if os.geteuid() != 0 or not os.path.exists("/dev/net/tun"):
        unavailable("the lab network needs root and /dev/net/tun")
    lab = plan()
    try:
        network.up(lab)
        yield lab
    finally:
        network.down(lab.lab)


@dataclass
class Guest:
    """One port of the lab with its tap's fd, as the guest's side of the wire."""

    port: Port
    fd: int

    def send(self, *frames: bytes) -> None:
        for frame in frames:
            os.write(self.fd, frame)

    def receive_until(self, marker: bytes, timeout: float = 2.0) -> list[bytes]:
        """Every frame delivered up to and including the one carrying ``marker``."""
        frames: list[bytes] = []
        deadline = time.monotonic() + timeout
        while not any(marker in frame for frame in frames):
            left = deadline - time.monotonic()
            assert left > 0, f"{marker!r} never reached {self.port.name}"
            if select.select([self.fd], [], [], left)[0]:
                frames.append(os.read(self.fd, 65536))
        return frames

    def drain(self) -> None:
        while select.select([self.fd], [], [], 0.05)[0]:
            os.read(self.fd, 65536)


def opened_guests(net: LabNetwork) -> Iterator[tuple[Guest, Guest, Guest]]:
    """(server, node a, node b), each known to the bridge (it sent one frame already)."""
    opened: list[Guest] = []
    try:
        for port in net.ports:
            opened.append(Guest(port, network.open_tap(net, port)))
            os.set_blocking(opened[-1].fd, False)
        wait_forwarding(net)
        server, a, b = opened
        # The bridge learns where each MAC lives, so unicast goes to one port, not a flood.
        server.send(arp(server.port, server.port.address, b"learn-s"))
        a.send(udp(a.port, server.port, marker=b"learn-a"))
        b.send(udp(b.port, server.port, marker=b"learn-b"))
        server.receive_until(b"learn-b")
        for guest in opened:
            guest.drain()
        yield server, a, b
    finally:
        for guest in opened:
            os.close(guest.fd)


def wait_forwarding(net: LabNetwork, timeout: float = 5.0) -> None:
    """Opening a tap gives it carrier, but the bridge hears of it through the kernel's
    link watch, which may lag by up to a second: until then the port drops frames."""
    deadline = time.monotonic() + timeout
    while True:
        states = {link["ifname"]: link["state"] for link in links(net.namespace) if link["master"]}
        if set(states.values()) == {"forwarding"}:
            return
        assert time.monotonic() < deadline, f"bridge ports not forwarding: {states}"
        time.sleep(0.05)


# --- frames ----------------------------------------------------------------------------


def mac(text: str) -> bytes:
    return bytes.fromhex(text.replace(":", ""))


def ether(dst: str, src: str, ethertype: int, payload: bytes) -> bytes:
    return mac(dst) + mac(src) + struct.pack("!H", ethertype) + payload


def checksum(data: bytes) -> int:
    total = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


def ipv4(src: ipaddress.IPv4Address, dst: ipaddress.IPv4Address, proto: int, payload: bytes) -> bytes:
    header = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(payload), 1, 0, 64, proto, 0, src.packed, dst.packed)
    return header[:10] + struct.pack("!H", checksum(header)) + header[12:] + payload


def udp(
    sender: Port,
    to: Port,
    marker: bytes,
    src_mac: str | None = None,
    src_ip: ipaddress.IPv4Address | None = None,
) -> bytes:
    """A UDP datagram (checksum 0: none, allowed over IPv4) carrying ``marker``."""
    datagram = struct.pack("!HHHH", 40000, 9, 8 + len(marker), 0) + marker
    packet = ipv4(src_ip or sender.address, to.address, 17, datagram)
    return ether(to.mac, src_mac or sender.mac, 0x0800, packet)


def tcp_syn(sender: Port, to: Port, port: int, marker: bytes) -> bytes:
    segment = struct.pack("!HHIIBBHHH", 40000, port, 1, 0, 5 << 4, 0x02, 65535, 0, 0) + marker
    return ether(to.mac, sender.mac, 0x0800, ipv4(sender.address, to.address, 6, segment))


def arp(sender: Port, sender_ip: ipaddress.IPv4Address, marker: bytes, sender_mac: str | None = None) -> bytes:
    """A broadcast ARP request from ``sender`` (its Ethernet source is always its own MAC)."""
    body = struct.pack("!HHBBH", 1, 0x0800, 6, 4, 1)
    body += mac(sender_mac or sender.mac) + sender_ip.packed + bytes(6) + sender_ip.packed
    return ether(BROADCAST, sender.mac, 0x0806, body + marker)


def carries(frames: list[bytes], marker: bytes) -> bool:
    return any(marker in frame for frame in frames)


# --- helpers ---------------------------------------------------------------------------


def links(ns: str | None) -> list[dict[str, Any]]:
    """What identifies the links of a namespace (None: the host's), without its timers."""
    argv = ["ip", "-j", "-d", "link", "show"] if ns is None else ["ip", "-n", ns, "-j", "-d", "link", "show"]
    listed = json.loads(subprocess.run(argv, check=True, capture_output=True, text=True).stdout)
    return [
        {
            "ifname": link["ifname"],
            "ifindex": link["ifindex"],
            "flags": link["flags"],
            "master": link.get("master"),
            "address": link["address"],
            "isolated": link.get("linkinfo", {}).get("info_slave_data", {}).get("isolated"),
            "state": link.get("linkinfo", {}).get("info_slave_data", {}).get("state"),
        }
        for link in listed
    ]


def nft_ruleset(ns: str) -> str:
    argv = ["ip", "netns", "exec", ns, "nft", "list", "ruleset"]
    return subprocess.run(argv, check=True, capture_output=True, text=True).stdout


def host_rules_and_qdiscs() -> tuple[str, str]:
    """The host's packet rules (nftables, iptables-nft's too) and queueing disciplines:
    what a lab's faults must leave as they were."""
    rules = subprocess.run(["nft", "list", "ruleset"], capture_output=True, text=True, check=True).stdout
    return rules, subprocess.run(["tc", "qdisc", "show"], capture_output=True, text=True, check=True).stdout
