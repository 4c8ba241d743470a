"""The lab network with the real kernel: a namespace, a bridge, taps and nftables rules.

No QEMU: the test process opens the taps' fds from the host namespace as QEMU would. A
frame written into a tap's fd enters the bridge as if that guest had sent it; reading
another tap's fd shows what the bridge delivered to that guest. Frames are built by hand.

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
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import pytest

from tests.conftest import require_tools, unavailable
from workers.lab import network
from workers.lab.network import LabNetwork, Port

pytestmark = [pytest.mark.integration, pytest.mark.timeout(60)]

PID = os.getpid()
_labs = itertools.count()
BROADCAST = "ff:ff:ff:ff:ff:ff"


@pytest.fixture(autouse=True)
def _root_and_tools() -> None:
    require_tools(("ip", "nft"))
    if os.geteuid() != 0 or not os.path.exists("/dev/net/tun"):
        unavailable("the lab network needs root and /dev/net/tun")


def plan() -> LabNetwork:
    """A fresh lab per test; port names carry the pid so they are unique on the host too."""
    return network.lab_network(f"t{PID}-{next(_labs)}", [f"a{PID}", f"b{PID}"], server=f"s{PID}")


@pytest.fixture
def net() -> Iterator[LabNetwork]:
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


@pytest.fixture
def guests(net: LabNetwork) -> Iterator[tuple[Guest, Guest, Guest]]:
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


# --- tests -----------------------------------------------------------------------------


def test_up_builds_the_lab_in_its_namespace_and_again_changes_nothing(net: LabNetwork) -> None:
    before = links(net.namespace)
    by_name = {link["ifname"]: link for link in before}
    assert by_name[network.BRIDGE]["master"] is None
    for port in net.ports:
        assert by_name[port.tap]["master"] == network.BRIDGE
        assert "UP" in by_name[port.tap]["flags"]
        assert by_name[port.tap]["isolated"] is (port.kind == "node")
    rules = nft_ruleset(net.namespace)
    assert rules.count(f"table bridge {network.NFT_TABLE}") == 1

    network.up(net)

    assert links(net.namespace) == before
    assert nft_ruleset(net.namespace) == rules


def test_nothing_appears_in_the_host_namespace(net: LabNetwork, guests: tuple[Guest, Guest, Guest]) -> None:
    host = {link["ifname"] for link in links(None)}
    # Even with every tap open from this (host) process, no tap of the lab is here.
    assert host.isdisjoint({port.tap for port in net.ports})
    assert os.path.exists(f"/var/run/netns/{net.namespace}")


def test_a_node_reaches_the_server_as_itself(guests: tuple[Guest, Guest, Guest]) -> None:
    server, a, _ = guests
    a.send(udp(a.port, server.port, marker=b"own-udp"), arp(a.port, a.port.address, b"own-arp"))
    got = server.receive_until(b"own-arp")
    assert carries(got, b"own-udp")


def test_spoofed_frames_from_a_node_are_dropped(guests: tuple[Guest, Guest, Guest]) -> None:
    server, a, b = guests
    vlan_tagged = ether(
        server.port.mac, a.port.mac, 0x8100, struct.pack("!HH", 7, 0x0800) + udp(a.port, server.port, b"vlan")[14:]
    )
    a.send(
        udp(a.port, server.port, marker=b"spoof-ip", src_ip=b.port.address),
        udp(a.port, server.port, marker=b"spoof-mac", src_mac=b.port.mac),
        arp(a.port, b.port.address, b"spoof-arp-ip"),
        arp(a.port, a.port.address, b"spoof-arp-mac", sender_mac=b.port.mac),
        vlan_tagged,  # a tag would hide the spoofed IPv4 header from a naive rule
        udp(a.port, server.port, marker=b"control"),
    )
    got = server.receive_until(b"control")
    for marker in (b"spoof-ip", b"spoof-mac", b"spoof-arp-ip", b"spoof-arp-mac", b"vlan"):
        assert not carries(got, marker), marker


def test_nodes_do_not_reach_each_other(guests: tuple[Guest, Guest, Guest]) -> None:
    server, a, b = guests
    a.send(udp(a.port, b.port, marker=b"a-to-b"), arp(a.port, a.port.address, b"a-arp"))
    server.receive_until(b"a-arp")  # the broadcast reaches the server ...
    server.send(udp(server.port, b.port, marker=b"control"))
    got = b.receive_until(b"control")  # ... and the server reaches b, but a does not
    assert not carries(got, b"a-to-b")
    assert not carries(got, b"a-arp")


def test_nodes_do_not_reach_the_servers_sshd(guests: tuple[Guest, Guest, Guest]) -> None:
    server, a, _ = guests
    a.send(tcp_syn(a.port, server.port, 22, b"ssh"), tcp_syn(a.port, server.port, 2049, b"nfs"))
    got = server.receive_until(b"nfs")
    assert not carries(got, b"ssh")


def test_down_removes_the_lab_and_clean_leftovers_only_ours() -> None:
    lab, stray = plan(), plan()
    other = f"other-{PID}"
    network.up(lab)
    network.up(stray)
    subprocess.run(["ip", "netns", "add", other], check=True)
    try:
        assert {lab.lab, stray.lab} <= set(network.leftovers())
        assert other not in network.leftovers()
        # Everything else that exists is kept: a lab of a real worker may be running.
        keep = set(network.leftovers()) - {stray.lab}
        assert network.clean_leftovers(keep) == [stray.lab]
        assert not os.path.exists(f"/var/run/netns/{stray.namespace}")
        assert os.path.exists(f"/var/run/netns/{lab.namespace}")
        assert os.path.exists(f"/var/run/netns/{other}")

        network.down(lab.lab)
        assert not os.path.exists(f"/var/run/netns/{lab.namespace}")
        network.down(lab.lab)  # again: nothing to do, no error
        with pytest.raises(network.LabNetworkError, match="run up"):
            network.open_tap(lab, lab.ports[0])
    finally:
        subprocess.run(["ip", "netns", "del", other], check=False)
        network.down(lab.lab)
        network.down(stray.lab)


def test_a_failing_command_names_itself_and_its_error(net: LabNetwork) -> None:
    with pytest.raises(network.LabNetworkError, match=r"`ip -n .* link set dev nosuch up` failed.*nosuch"):
        network._ip(net.namespace, "link", "set", "dev", "nosuch", "up")


SUBNET = network.DEFAULT_SUBNET


def port(name: str = "node1", mac: str = "02:00:00:00:00:0b", address: str = "10.77.0.11") -> Port:
    return Port(name, "node", mac, ipaddress.IPv4Address(address))


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda: LabNetwork("Lab!", SUBNET, ()), "lab name 'Lab!'"),
        (lambda: port(name="a-very-long-node"), "1-11 characters"),
        (lambda: port(name="-x"), "port name '-x'"),
        (lambda: port(mac="00:16:3e:00:00:01"), "not a locally administered unicast"),
        (lambda: port(mac="03:00:00:00:00:01"), "not a locally administered unicast"),
        (lambda: port(mac="02:00:00:00:00"), "is not lower-case"),
        (lambda: LabNetwork("lab", SUBNET, (port(address="10.78.0.11"),)), "is not a host of 10.77.0.0/24"),
        (lambda: LabNetwork("lab", SUBNET, (port(address="10.77.0.255"),)), "is not a host of"),
        (
            lambda: LabNetwork("lab", SUBNET, (port(), port(name="node2", mac="02:00:00:00:00:0c"))),
            "two ports have the address 10.77.0.11",
        ),
        (
            lambda: LabNetwork("lab", SUBNET, (port(), port(name="node2", address="10.77.0.12"))),
            "two ports have the MAC",
        ),
        (lambda: network.lab_network("lab", [f"n{i}" for i in range(300)]), "no room for 300 nodes"),
    ],
)
def test_invalid_plans_are_refused(make: Callable[[], object], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        make()
