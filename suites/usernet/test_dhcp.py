"""DHCP (and, for pasta, router advertisements and DHCPv6) from the Wire on tap0, as a container's
client asks a tap stack for its configuration: what the stack hands out must be what it was told.

The Wire is the client, with a MAC of its own (a locally administered lab MAC, as Ethernet source
and chaddr / DUID), not the tap's: a lease is the client's, not the namespace kernel's, and two
clients are told apart by their MACs. libslirp leases from a pool of its own (.15 to .30 of the
configured network, `stack.dhcp_range()`), not the .100 `--configure` gives the namespace; pasta
leases the one address it was told. Either must name its gateway as router and server, the
network's mask, the DNS server it documents (`stack.dns_offered()`) and the link's MTU (the plan's).

pasta sends every frame for the container to the MAC it heard from last, so after a check the
fixture speaks once from the tap's own MAC again (an ARP request, as the namespace's kernel
would), or the next check's connections into the container would go to the client's MAC.
"""

from __future__ import annotations

import ipaddress
import random
from collections.abc import Callable
from dataclasses import dataclass

import pytest
from scapy.layers.dhcp import BOOTP, DHCP
from scapy.layers.dhcp6 import (
    DUID_LL,
    DHCP6_Advertise,
    DHCP6_Reply,
    DHCP6_Request,
    DHCP6_Solicit,
    DHCP6OptClientId,
    DHCP6OptDNSServers,
    DHCP6OptElapsedTime,
    DHCP6OptIA_NA,
    DHCP6OptIAAddress,
    DHCP6OptOptReq,
    DHCP6OptServerId,
)
from scapy.layers.inet import IP, UDP
from scapy.layers.inet6 import (
    ICMPv6ND_RA,
    ICMPv6ND_RS,
    ICMPv6NDOptMTU,
    ICMPv6NDOptPrefixInfo,
    ICMPv6NDOptRDNSS,
    ICMPv6NDOptSrcLLAddr,
    IPv6,
)
from scapy.layers.l2 import Ether
from scapy.packet import Packet
from scapy.utils6 import in6_mactoifaceid

from labkit.errors import ExpectTimeout
from labkit.net.plan import AddressPlan
from labkit.packet.wire import Wire
from labkit.stacks import Stack

pytestmark = [pytest.mark.needs("outside", "dhcp"), pytest.mark.varies_with()]
IPV6 = pytest.mark.needs("outside", "dhcp", "ipv6", "ndp")

CLIENT, OTHER = "02:00:00:00:15:01", "02:00:00:00:15:02"  # the Wire's clients: lab MACs, not the tap's
WAIT = 2.0  # a user-space server answers at once; also how long silence is waited out
WAIT6 = 3.0
MESSAGE = {1: "discover", 2: "offer", 3: "request", 4: "decline", 5: "ack", 6: "nak", 7: "release", 8: "inform"}
ASKED = [1, 3, 6, 26, 51, 54]  # mask, router, DNS, interface MTU, lease time, server id


# -- a DHCPv4 client on the Wire ---------------------------------------------------------------


@dataclass(frozen=True)
class Reply:
    """A DHCPv4 server's answer: its message type, the address it gives, and its options by name
    (scapy's names; each a tuple, since an option may list several values)."""

    kind: str
    yiaddr: str
    chaddr: str
    options: dict[str, tuple[object, ...]]

    @classmethod
    def of(cls, packet: Packet) -> Reply:
        options: dict[str, tuple[object, ...]] = {}
        for option in packet[DHCP].options:
            if isinstance(option, tuple) and option:
                options[str(option[0])] = tuple(option[1:])
        kind = options.pop("message-type", (0,))[0]
        chaddr = ":".join(f"{b:02x}" for b in bytes(packet[BOOTP].chaddr)[:6])
        name = MESSAGE.get(kind, f"type-{kind}") if isinstance(kind, int) else str(kind)
        return cls(name, packet[BOOTP].yiaddr, chaddr, options)

    def one(self, name: str) -> object:
        """The option's single value, or None when the server did not send it."""
        values = self.options.get(name)
        return values[0] if values else None

    def __str__(self) -> str:
        return f"{self.kind.upper()} yiaddr={self.yiaddr} {self.options}"


class DhcpClient:
    """The Wire as one DHCP client (RFC 2131), from `mac`: broadcasts from 0.0.0.0 with the
    broadcast flag, as a client without an address does."""

    def __init__(self, wire: Wire, mac: str) -> None:
        self.wire, self.mac = wire, mac

    def exchange(self, kind: str, *options: tuple[str, object], timeout: float = WAIT) -> Reply | None:
        """Send a `kind` message; the server's answer to it (matched by xid), or None if none came."""
        xid = random.getrandbits(32)
        chaddr = bytes.fromhex(self.mac.replace(":", "")) + bytes(10)
        message = [("message-type", kind), ("client_id", b"\x01" + chaddr[:6]), *options, ("param_req_list", ASKED), "end"]
        self.wire.drain()
        self.wire.send(
            Ether(src=self.mac, dst="ff:ff:ff:ff:ff:ff")
            / IP(src="0.0.0.0", dst="255.255.255.255")
            / UDP(sport=68, dport=67)
            / BOOTP(op=1, chaddr=chaddr, xid=xid, flags=0x8000)
            / DHCP(options=message)
        )
        try:
            return Reply.of(self.wire.expect(BOOTP(op=2, xid=xid), timeout=timeout))
        except ExpectTimeout:
            return None

    def discover(self) -> Reply:
        offer = self.exchange("discover")
        assert offer is not None, f"a DHCPDISCOVER from {self.mac} got no answer within {WAIT}s; want an OFFER"
        assert offer.kind == "offer", f"a DHCPDISCOVER from {self.mac} was answered with {offer}; want an OFFER"
        return offer

    def request(self, address: str, server: object = None) -> Reply | None:
        """A DHCPREQUEST for `address`: selecting the offer of `server`, or (no server) a client
        rebooting with an address it remembers (RFC 2131 4.3.2)."""
        options: list[tuple[str, object]] = [("requested_addr", address)]
        if server is not None:
            options.append(("server_id", server))
        return self.exchange("request", *options)

    def lease(self) -> tuple[Reply, Reply]:
        """DISCOVER, then REQUEST the offered address from the server that offered it: (offer, ack)."""
        offer = self.discover()
        ack = self.request(offer.yiaddr, offer.one("server_id"))
        assert ack is not None, f"a DHCPREQUEST from {self.mac} for the offered {offer.yiaddr} got no answer within {WAIT}s"
        assert ack.kind == "ack", f"a DHCPREQUEST from {self.mac} for the offered {offer.yiaddr} got {ack}; want an ACK"
        return offer, ack


@pytest.fixture
def client(wire: Wire) -> Callable[..., DhcpClient]:
    """`client(mac=CLIENT)`: a DHCP client on the Wire."""
    return lambda mac=CLIENT: DhcpClient(wire, mac)


def not_leased(stack: Stack, plan: AddressPlan) -> str:
    """An address of the container's network the stack does not lease, nor use itself."""
    taken = {*stack.dhcp_range(), plan.peer4, plan.stack4, stack.dns_address("ipv4")}
    return next(str(h) for h in reversed(list(plan.net4.hosts())) if str(h) not in taken)


# -- DHCPv4 --------------------------------------------------------------------------------------


def test_a_discover_is_offered_an_address_of_the_stacks_range(client, stack, plan):
    """RFC 2131 4.3.1: the OFFER gives the client (by its chaddr) an address of the server's
    pool, inside the configured network, names the server (its gateway address) and a lease time."""
    offer = client().discover()
    pool = stack.dhcp_range()
    assert offer.yiaddr in pool, f"offered {offer.yiaddr}; want one of the stack's range {pool[0]}..{pool[-1]}"
    assert ipaddress.ip_address(offer.yiaddr) in plan.net4, f"offered {offer.yiaddr}, outside the container's {plan.net4}"
    assert offer.chaddr == CLIENT, f"the OFFER is for chaddr {offer.chaddr}; the client is {CLIENT}"
    assert offer.one("server_id") == plan.stack4, f"server identifier {offer.one('server_id')}; want the gateway {plan.stack4}"
    lease = offer.one("lease_time")
    assert isinstance(lease, int) and lease > 0, f"lease time {lease}; want a lease time (option 51) in the OFFER"


def test_the_offer_names_the_gateway_and_the_networks_mask(client, plan):
    offer = client().discover()
    assert offer.options.get("router") == (plan.stack4,), f"router {offer.options.get('router')}; want ({plan.stack4},)"
    mask = str(plan.net4.netmask)
    assert offer.one("subnet_mask") == mask, f"subnet mask {offer.one('subnet_mask')}; want {mask} ({plan.net4})"


def test_the_offer_names_the_dns_server_the_stack_documents(client, stack):
    """The DNS server given is the one the stack documents handing out (`stack.dns_offered`):
    libslirp its own forwarder (.3), pasta the resolver it was told."""
    offer = client().discover()
    want = stack.dns_offered("ipv4")
    got = offer.options.get("name_server")
    assert got == (want,), f"DNS servers (option 6) {got}; want ({want},), what {stack.id} documents"


@pytest.mark.varies_with("mtu")
def test_the_offer_carries_the_links_mtu(client, plan):
    """RFC 2132 5.1: the interface MTU option, asked for, is the MTU the stack runs the link with."""
    offer = client().discover()
    got = offer.one("interface-mtu")
    assert got == plan.mtu, f"interface MTU (option 26) {got}; want {plan.mtu} (asked for it: options {ASKED})"


def test_a_request_for_the_offered_address_is_acknowledged(client, plan):
    """RFC 2131 4.3.2: the REQUEST selecting the offer gets an ACK of the same address, with
    the same server, router and mask, and a lease time."""
    offer, ack = client().lease()
    assert ack.yiaddr == offer.yiaddr, f"the ACK gives {ack.yiaddr}; the OFFER gave {offer.yiaddr}"
    for name in ("server_id", "router", "subnet_mask"):
        assert ack.options.get(name) == offer.options.get(name), (
            f"{name} {ack.options.get(name)} in the ACK; the OFFER said {offer.options.get(name)}"
        )
    lease = ack.one("lease_time")
    assert isinstance(lease, int) and lease > 0, f"lease time {lease}; want a lease time (option 51) in the ACK"


def test_the_same_client_asking_again_gets_the_same_address(client):
    """A server keeps a client's lease (RFC 2131 4.3.1: the client's current address first)."""
    me = client()
    _, first = me.lease()
    again = me.discover()
    assert again.yiaddr == first.yiaddr, f"{CLIENT} leased {first.yiaddr}, then was offered {again.yiaddr}"
    ack = me.request(again.yiaddr, again.one("server_id"))
    assert ack is not None and ack.kind == "ack" and ack.yiaddr == first.yiaddr, (
        f"{CLIENT} asking again for its {first.yiaddr} got {ack}; want an ACK of it"
    )


def test_two_clients_get_different_addresses(client, stack):
    pool = stack.dhcp_range()
    if len(pool) < 2:
        pytest.skip(f"{stack.id} leases one address ({pool[0]}): nothing to tell two clients apart by")
    _, mine = client(CLIENT).lease()
    _, theirs = client(OTHER).lease()
    assert {mine.yiaddr, theirs.yiaddr} <= set(pool), f"leased {mine.yiaddr} and {theirs.yiaddr}; want both of {pool}"
    assert mine.yiaddr != theirs.yiaddr, f"{CLIENT} and {OTHER} were both leased {mine.yiaddr}"


def test_a_request_for_an_address_outside_the_range_is_not_acknowledged(client, stack, plan):
    """RFC 2131 4.3.2: a client rebooting with an address the server does not lease (here one
    of the container's network outside the stack's range) gets a NAK, or silence; never an ACK,
    which would confirm a lease the server does not hold."""
    wanted = not_leased(stack, plan)
    answer = client().request(wanted)
    assert answer is None or answer.kind == "nak", f"a DHCPREQUEST for {wanted}, outside the stack's range, got {answer}"


# -- pasta: router advertisements and DHCPv6 ---------------------------------------------------


def link_local(mac: str) -> str:
    """The client's EUI-64 link-local address (RFC 4291 2.5.1)."""
    return str(ipaddress.ip_address("fe80::" + in6_mactoifaceid(mac)))


def solicit_router(wire: Wire, mac: str = CLIENT) -> Packet:
    wire.drain()
    wire.send(
        Ether(src=mac, dst="33:33:00:00:00:02")
        / IPv6(src=link_local(mac), dst="ff02::2", hlim=255)
        / ICMPv6ND_RS()
        / ICMPv6NDOptSrcLLAddr(lladdr=mac)
    )
    try:
        return wire.expect(ICMPv6ND_RA(), timeout=WAIT6)
    except ExpectTimeout:
        pass
    pytest.fail(f"a router solicitation from {link_local(mac)} got no router advertisement within {WAIT6}s")


def options_of(packet: Packet, kind: type[Packet]) -> list[Packet]:
    """Every option layer of type `kind` in `packet`."""
    found, layer = [], packet.getlayer(kind)
    while layer is not None:
        found.append(layer)
        layer = layer.payload.getlayer(kind)
    return found


@IPV6
@pytest.mark.varies_with("mtu")
def test_a_router_solicitation_gets_an_advertisement_of_the_container_prefix(wire, stack, plan):
    """RFC 4861 6.2.6: the stack answers a solicitation with an advertisement of the container's
    prefix, the link's MTU and (RFC 8106) its DNS address, if it sends one."""
    ra = solicit_router(wire)
    prefixes = [(p.prefix, p.prefixlen) for p in options_of(ra, ICMPv6NDOptPrefixInfo)]
    want = (str(plan.net6.network_address), plan.net6.prefixlen)
    assert want in prefixes, f"the RA advertises prefixes {prefixes}; want {want[0]}/{want[1]}"
    mtus = [o.mtu for o in options_of(ra, ICMPv6NDOptMTU)]
    assert mtus == [plan.mtu], f"the RA's MTU options {mtus}; want [{plan.mtu}]"
    servers = [str(a) for o in options_of(ra, ICMPv6NDOptRDNSS) for a in o.dns]
    assert servers in ([], [stack.dns_offered("ipv6")]), f"the RA's RDNSS {servers}; want [{stack.dns_offered('ipv6')}]"


def dhcpv6(wire: Wire, message: Packet, answer: type[Packet], mac: str = CLIENT) -> Packet:
    """Send a DHCPv6 `message` (its options already added) from `mac`'s link-local address to
    All_DHCP_Relay_Agents_and_Servers; the `answer` with its transaction id."""
    wire.drain()
    wire.send(
        Ether(src=mac, dst="33:33:00:01:00:02") / IPv6(src=link_local(mac), dst="ff02::1:2") / UDP(sport=546, dport=547) / message
    )
    try:
        return wire.expect(answer(trid=message.trid), timeout=WAIT6)
    except ExpectTimeout:
        pass
    pytest.fail(f"a DHCPv6 {type(message).__name__[6:]} got no {answer.__name__[6:]} within {WAIT6}s")


def solicit(wire: Wire, iaid: int = 0x1501) -> Packet:
    """RFC 8415 18.2.1: a Solicit with a client DUID (DUID-LL of the client MAC) and an IA_NA."""
    trid = random.getrandbits(24)
    message = (
        DHCP6_Solicit(trid=trid)
        / DHCP6OptClientId(duid=DUID_LL(lladdr=CLIENT))
        / DHCP6OptElapsedTime()
        / DHCP6OptIA_NA(iaid=iaid)
        / DHCP6OptOptReq(reqopts=[23])
    )
    return dhcpv6(wire, message, DHCP6_Advertise)


def addresses_of(answer: Packet, iaid: int) -> list[str]:
    """The addresses the answer's IA_NA `iaid` gives."""
    return [
        str(o.addr)
        for ia in options_of(answer, DHCP6OptIA_NA)
        if ia.iaid == iaid
        for o in ia.ianaopts
        if isinstance(o, DHCP6OptIAAddress)
    ]


@IPV6
def test_a_dhcpv6_solicit_is_advertised_the_address_the_stack_was_told(wire, plan):
    """RFC 8415 18.3.1 / 18.3.2: the Advertise echoes the client's DUID, names the server, and
    its IA_NA gives the container's address; a Request for it gets a Reply with the same."""
    advertise = solicit(wire)
    client_id = advertise.getlayer(DHCP6OptClientId)
    assert client_id is not None and client_id.duid.lladdr == CLIENT, f"the Advertise's client DUID is {client_id}; want {CLIENT}'s"
    server = advertise.getlayer(DHCP6OptServerId)
    assert server is not None, "the Advertise names no server (no Server Identifier option)"
    offered = addresses_of(advertise, 0x1501)
    assert offered == [plan.peer6], f"the Advertise's IA_NA gives {offered}; want [{plan.peer6}], the address the stack was told"
    request = (
        DHCP6_Request(trid=random.getrandbits(24))
        / DHCP6OptClientId(duid=DUID_LL(lladdr=CLIENT))
        / DHCP6OptServerId(duid=server.duid)
        / DHCP6OptElapsedTime()
        / DHCP6OptIA_NA(iaid=0x1501, ianaopts=[DHCP6OptIAAddress(addr=plan.peer6)])
    )
    reply = dhcpv6(wire, request, DHCP6_Reply)
    assert addresses_of(reply, 0x1501) == [plan.peer6], (
        f"the Reply's IA_NA gives {addresses_of(reply, 0x1501)}; want [{plan.peer6}]"
    )


@IPV6
def test_dhcpv6_names_the_dns_server_the_stack_documents(wire, stack):
    """RFC 3646: the DNS servers given (asked for in the Option Request) are the one the stack
    documents handing out (`stack.dns_offered`)."""
    advertise = solicit(wire)
    servers = [str(a) for o in options_of(advertise, DHCP6OptDNSServers) for a in o.dnsservers]
    want = stack.dns_offered("ipv6")
    assert servers == [want], f"DNS servers (option 23) {servers}; want [{want}], what {stack.id} documents"
