"""Route lookups, end to end: where a datagram really leaves, against what the table says.

Two veths with overlapping prefixes behind them. For each destination the check sends a datagram
from inside the stack and finds it on the wire of the link the route names, addressed to the MAC
of that route's gateway (or of the on-link host); `ip route get` inside the stack must say the
same, and so must the kernel for the same table (built in a namespace of its own).
"""

from __future__ import annotations

import json
import random

import pytest
from scapy.layers.inet import IP, UDP
from scapy.layers.inet6 import IPv6

from labkit.lifecycle.process import run_in
from labkit.net.plan import AddressPlan
from labkit.net.topology import Link, Topology
from labkit.packet.wire import Wire

GW1_MAC, ONLINK1_MAC = "02:00:00:00:01:01", "02:00:00:00:01:07"
pytestmark = pytest.mark.varies_with("channels")
ENETUNREACH = 101

# destination -> (link, gateway or None for on-link)
CASES = {
    "198.19.64.5": ("eth0", "gw0"),  # 198.19.64.0/24 via eth0's gateway beats 198.19.64.0/18 via eth1
    "198.19.100.5": ("eth1", "198.19.1.1"),  # only the /18 matches
    "198.19.200.5": ("eth0", "gw0"),  # only the default matches
    "198.19.1.7": ("eth1", None),  # on-link on eth1
    "2001:db8:40:1::5": ("eth0", "gw0"),
    "2001:db8:40:2::5": ("eth1", "2001:db8:1::1"),
    "2001:db8:99::5": ("eth0", "gw0"),
    "2001:db8:1::7": ("eth1", None),
}


def two_links(plan: AddressPlan) -> tuple[Topology, Link, Link]:
    topo, eth0, peer0 = plan.build()
    sb, peer = topo["sb"], topo["peer"]
    eth1, peer1 = topo.veth(sb, "eth1", peer, "peer1", mtu=plan.mtu)
    peer1.ipv6 = False
    eth1.addr("198.19.1.2/24").addr("2001:db8:1::2/64")
    sb.route("198.19.64.0/18", via="198.19.1.1").route("198.19.64.0/24", via=plan.peer4)
    sb.route("2001:db8:40::/48", via="2001:db8:1::1").route("2001:db8:40:1::/64", via=plan.peer6)
    return topo, eth0, peer0


def no_default(plan: AddressPlan) -> tuple[Topology, Link, Link]:
    topo, eth0, peer0 = plan.build()
    topo["sb"].routes.clear()
    return topo, eth0, peer0


def route_get(run, dst: str) -> dict:
    done = run(["ip", "-j", "route", "get", dst])
    if done.returncode != 0:
        return {"error": done.stderr.strip()}
    entry = json.loads(done.stdout)[0]
    return {"dev": entry.get("dev"), "gateway": entry.get("gateway")}


@pytest.fixture
def second_wire(testbed):
    peer1 = testbed.topology["peer"].link("peer1")
    with Wire(peer1.ns.netns, peer1.name, mac=peer1.mac, far_mac=testbed.topology["sb"].link("eth1").mac) as w:
        w.own("198.19.1.1", mac=GW1_MAC)
        w.own("2001:db8:1::1", mac=GW1_MAC)
        w.own("198.19.1.7", mac=ONLINK1_MAC)
        w.own("2001:db8:1::7", mac=ONLINK1_MAC)
        yield w


@pytest.fixture(scope="module")
def kernel_answers():
    """`ip route get` for every case on the kernel, with the same table."""
    topo, _, _ = two_links(AddressPlan())
    with topo:
        ns = topo["sb"].netns
        yield {dst: route_get(lambda argv: run_in(ns, argv, timeout=10), dst) for dst in CASES}


@pytest.mark.needs("udp", "services")
@pytest.mark.layout.with_args(two_links)
@pytest.mark.parametrize("dst", list(CASES))
def test_datagram_leaves_where_the_longest_matching_route_says(stack, wire, second_wire, plan, dst, kernel_answers):
    if not stack.can("ipv6" if ":" in dst else "ipv4"):
        pytest.skip(f"{stack.id} lacks this family")
    link, gateway = CASES[dst]
    gateway = (plan.peer6 if ":" in dst else plan.peer4) if gateway == "gw0" else gateway
    wires = {"eth0": wire, "eth1": second_wire}
    macs = {"eth0": wire.mac, "eth1": GW1_MAC if gateway else ONLINK1_MAC}
    for w in wires.values():
        w.drain()
    payload = random.randbytes(8)
    stack.service("udp-send", to=dst, port=9, payload=payload.hex()).wait_for(lambda e: e["event"] == "sent", timeout=5)
    ip = IPv6 if ":" in dst else IP
    frame = wires[link].expect(ip(dst=dst) / UDP(dport=9) / payload, timeout=5)
    assert frame.dst == macs[link], f"to {dst} via {gateway or 'on-link'}: sent to MAC {frame.dst}, want {macs[link]}"
    other = "eth1" if link == "eth0" else "eth0"
    wires[other].expect_none(ip(dst=dst) / UDP(dport=9) / payload, timeout=0.2)

    inside = route_get(stack.run, dst)
    assert inside == {"dev": link, "gateway": gateway}, (
        f"ip route get {dst} inside {stack.id}: {inside}; the datagram left on {link} via {gateway}"
    )
    assert kernel_answers[dst] == inside, f"ip route get {dst}: the kernel says {kernel_answers[dst]}, {stack.id} says {inside}"


@pytest.mark.needs("udp", "services")
@pytest.mark.layout.with_args(no_default)
@pytest.mark.parametrize("dst", ["198.19.200.5", "2001:db8:99::5"])
def test_no_route_gives_enetunreach(stack, plan, dst):
    if not stack.can("ipv6" if ":" in dst else "ipv4"):
        pytest.skip(f"{stack.id} lacks this family")
    outcome = stack.service("udp-send", to=dst, port=9).wait_for(lambda e: e["event"] in ("sent", "error"), timeout=5)
    assert outcome.get("errno") == ENETUNREACH, f"sending to {dst} with no route to it gave {outcome} (want ENETUNREACH)"
    inside = route_get(stack.run, dst)
    assert "unreachable" in inside.get("error", "").lower(), f"ip route get {dst} with no route: {inside}"
