"""What a sandbox builds from the namespace it is given (runsc --network=sandbox and its kin).

The lab prepares a namespace with every case runsc's setup distinguishes: an up interface with
IPv4 and IPv6 addresses and a non-default MTU, a second one with its own routes (on-link and via
a gateway), a down interface with an address, an up one without any, and one default route per
family. The checks compare what the stack shows from inside (rtnetlink, through `ip -j`) and what
is left on the host side with what the lab declared.
"""

from __future__ import annotations

import ipaddress

import pytest
from scapy.layers.inet import UDP
from scapy.layers.l2 import ARP

from labkit.errors import LabError
from labkit.lifecycle.process import run_in
from labkit.net.plan import AddressPlan
from labkit.net.topology import Link, Topology
from labkit.rtnetlink.view import NetView, RouteEntry

# What a sandbox copies from the namespace does not depend on how it then reads its link; the
# channel checks below do (one socket per channel, a virtio_net_hdr with GSO).
pytestmark = [pytest.mark.needs("netns-copy"), pytest.mark.varies_with()]
CHANNELS = pytest.mark.varies_with("channels", "gso", "software_gso")

ETH1 = "198.19.1.2/24"  # second subnet, from the half of the lab range the standard plan leaves free
ETH2 = "198.19.2.2/24"
VIA_ETH1 = ("198.19.64.0/24", "198.19.1.1")
ONLINK_ETH1 = "198.19.65.0/24"
VIA6 = ("2001:db8:40::/64", None)  # gateway filled in from the plan


def rich_layout(plan: AddressPlan) -> tuple[Topology, Link, Link]:
    topo = Topology()
    sb, peer = topo.namespace("sb"), topo.namespace("peer")
    eth0, peer0 = topo.veth(sb, "eth0", peer, "peer0", mtu=1400, a_mac=plan.stack_mac, b_mac=plan.peer_mac)
    peer0.ipv6 = False
    eth0.addr(f"{plan.stack4}/{plan.net4.prefixlen}").addr(f"{plan.stack6}/{plan.net6.prefixlen}")
    eth1, _ = topo.veth(sb, "eth1", peer, "peer1", mtu=9000, ipv6=False)
    eth1.addr(ETH1)
    eth2, _ = topo.veth(sb, "eth2", peer, "peer2", up=False, ipv6=False)
    eth2.addr(ETH2)
    topo.veth(sb, "eth3", peer, "peer3", ipv6=False)  # up, no address at all
    sb.route(VIA_ETH1[0], via=VIA_ETH1[1]).route(ONLINK_ETH1, dev="eth1").route(VIA6[0], via=plan.peer6)
    sb.route("default", via=plan.peer4).route("default", via=plan.peer6)
    return topo, eth0, peer0


def two_defaults_layout(plan: AddressPlan) -> tuple[Topology, Link, Link]:
    topo, eth0, peer0 = rich_layout(plan)
    topo["sb"].route("default", via="198.19.1.1", metric=50)
    return topo, eth0, peer0


rich = pytest.mark.layout.with_args(rich_layout)  # with_args: a lone function would be taken as the test
COPIED = ("eth0", "eth1")
SKIPPED = ("eth2", "eth3")


def host_view(testbed) -> NetView:
    ns = testbed.stack_end.ns.netns
    return NetView.read(lambda argv: run_in(ns, argv, timeout=10))


@pytest.fixture
def views(testbed, stack):
    return NetView.read(stack.run), host_view(testbed), testbed.topology["sb"]


@rich
def test_up_addressed_interfaces_become_nics_with_same_name_mtu_and_mac(views):
    inside, _host, sb = views
    for name in COPIED:
        declared = sb.link(name)
        assert name in inside.links, f"{name} is missing inside; inside has {sorted(inside.links)}"
        got = inside.links[name]
        assert (got.mtu, got.mac, got.up) == (declared.mtu, declared.mac, True), (
            f"{name} inside: mtu {got.mtu}, mac {got.mac}, up {got.up}; the lab gave mtu {declared.mtu}, mac {declared.mac}"
        )


@rich
def test_addresses_appear_inside(views):
    inside, _host, sb = views
    for name in COPIED:
        want = {str(a) for a in sb.link(name).addresses}
        missing = want - inside.addresses.get(name, frozenset())
        assert not missing, (
            f"{name}: addresses {sorted(missing)} missing inside; inside has {sorted(inside.addresses.get(name, []))}"
        )


@rich
def test_routes_appear_inside_on_link_and_via_gateway(views, plan):
    inside, _host, sb = views
    want = {
        RouteEntry(str(ipaddress.ip_network(VIA_ETH1[0])), VIA_ETH1[1], "eth1"),
        RouteEntry(ONLINK_ETH1, None, "eth1"),
        RouteEntry(VIA6[0], plan.peer6, "eth0"),
    }
    for name in COPIED:  # the prefix route of each address
        want |= {RouteEntry(str(a.network), None, name) for a in sb.link(name).addresses}
    missing = sorted(want - inside.routes)
    assert not missing, f"routes missing inside: {[str(r) for r in missing]}; inside: {[str(r) for r in sorted(inside.routes)]}"


@rich
def test_default_gateways_of_both_families_are_kept(views, plan):
    inside, _host, _sb = views
    defaults = {r for r in inside.routes if r.dst in ("0.0.0.0/0", "::/0")}
    assert defaults == {RouteEntry("0.0.0.0/0", plan.peer4, "eth0"), RouteEntry("::/0", plan.peer6, "eth0")}, (
        f"default routes inside: {[str(r) for r in defaults]}"
    )


@rich
def test_addresses_are_gone_from_the_host_side(views):
    _inside, host, _sb = views
    for name in COPIED:
        left = host.addresses.get(name, frozenset())
        assert not left, f"{name} on the host side still has {sorted(left)} after the sandbox took it over"
    # What was skipped keeps its address: the sandbox took only what it uses.
    assert host.addresses.get("eth2") == {ETH2}, f"eth2 on the host side has {sorted(host.addresses.get('eth2', []))}"


@rich
def test_down_and_unaddressed_interfaces_are_skipped(views):
    inside, _host, _sb = views
    present = sorted(set(SKIPPED) & set(inside.links))
    assert not present, f"{present} appear inside, but a down or address-less interface must be skipped"


@rich
def test_loopback_is_present_with_its_addresses(views):
    inside, _host, _sb = views
    loopbacks = [i for i in inside.links.values() if i.loopback]
    assert [i.name for i in loopbacks] == ["lo"], f"loopback interfaces inside: {loopbacks}"
    assert {"127.0.0.1/8", "::1/128"} <= inside.addresses["lo"], f"lo inside has {sorted(inside.addresses['lo'])}"
    assert loopbacks[0].up


@pytest.mark.needs("af-packet")
@CHANNELS
@rich
def test_each_channel_is_a_packet_socket_in_one_hash_fanout_group(testbed, stack):
    sockets = stack.link_sockets()
    channels = stack.options["channels"]
    for name in COPIED:
        index = testbed.topology["sb"].link(name).index
        mine = [s for s in sockets if s.ifindex == index]
        assert len(mine) == channels, f"{name}: {len(mine)} AF_PACKET sockets, want {channels}: {mine}"
        groups = {s.fanout.group if s.fanout else None for s in mine}
        assert len(groups) == 1 and None not in groups, f"{name}: channels are not in one fanout group: {mine}"
        assert {s.fanout.type for s in mine} == {"hash"}, f"{name}: fanout types {[s.fanout for s in mine]}"
    groups_by_link = {s.ifindex: s.fanout.group for s in sockets if s.fanout}
    assert len(set(groups_by_link.values())) == len(groups_by_link), f"two links share a fanout group: {groups_by_link}"


@pytest.mark.needs("af-packet")
@CHANNELS
@rich
def test_fanout_group_defragments(stack):
    # Without PACKET_FANOUT_FLAG_DEFRAG the kernel hashes each IP fragment on its own, so the
    # fragments of one datagram can reach different channels.
    sockets = [s for s in stack.link_sockets() if s.fanout]
    assert sockets, "no channel is in a fanout group"
    lacking = [s for s in sockets if "defrag" not in s.fanout.flags]
    assert not lacking, f"{len(lacking)} of {len(sockets)} channels lack the defrag flag: {lacking[0].fanout}"


@pytest.mark.needs("af-packet")
@CHANNELS
@rich
def test_vnet_header_exactly_when_gso_is_on(testbed, stack):
    # veth offers GSO, so host GSO is available whenever the variant asks for it.
    want = bool(stack.options["gso"])
    got = {s.vnet_hdr for s in stack.link_sockets()}
    assert got == {want}, f"PACKET_VNET_HDR on the channels: {got}; want {want} (gso={stack.options['gso']})"


@pytest.mark.fresh
def test_two_default_routes_of_one_family_are_refused(testbed_factory):
    with pytest.raises(LabError, match="more than one default route") as failure:
        testbed_factory(two_defaults_layout)
    assert "runsc start" in str(failure.value), f"the error does not say which step failed: {failure.value}"


@pytest.mark.stacks("gvisor-none")
@pytest.mark.needs()
def test_network_none_has_only_loopback_and_stays_off_the_wire(testbed, stack, wire, plan):
    inside = NetView.read(stack.run)
    assert list(inside.links) == ["lo"], f"--network=none shows {sorted(inside.links)} inside"
    # The namespace is left as the lab made it, and the sandbox does not use its veth.
    assert {f"{plan.stack4}/{plan.net4.prefixlen}"} <= host_view(testbed).addresses["eth0"]
    probe = stack.run(
        ["python3", "-c", f"import socket; socket.socket(socket.AF_INET, socket.SOCK_DGRAM).sendto(b'x', ('{plan.peer4}', 9))"]
    )
    # ENETUNREACH or EHOSTUNREACH: either way the sandbox has no path to the peer.
    assert probe.returncode != 0 and ("[Errno 101]" in probe.stderr or "[Errno 113]" in probe.stderr), (
        f"a send to {plan.peer4} from inside gave: exit {probe.returncode} {probe.stderr.strip()[-200:]}"
    )
    # The namespace's kernel still owns eth0 and may speak (MLD, say); the sandbox must not.
    wire.expect_none(ARP(pdst=plan.peer4), timeout=0.3)
    wire.expect_none(UDP(dport=9), timeout=0.2)
    assert stack.link_sockets() == [], f"--network=none, yet the sandbox holds AF_PACKET sockets: {stack.link_sockets()}"
