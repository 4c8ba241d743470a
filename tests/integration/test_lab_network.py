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
import os
import struct
import subprocess
from collections.abc import Callable

import pytest

from tests.conftest import require_tools, unavailable
from tests.integration.lab_frames import (
    PID,
    Guest,
    arp,
    carries,
    ether,
    links,
    nft_ruleset,
    plan,
    tcp_syn,
    udp,
)
from workers.lab import network
from workers.lab.network import LabNetwork, Port

pytestmark = [pytest.mark.integration, pytest.mark.timeout(60)]


@pytest.fixture(autouse=True)
def _root_and_tools() -> None:
    require_tools(("ip", "nft"))
    if os.geteuid() != 0 or not os.path.exists("/dev/net/tun"):
        unavailable("the lab network needs root and /dev/net/tun")


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
