"""DNS through a tap stack: queries to the stack's DNS address (.3, ::3) are forwarded, from the
host namespace, to the resolver the host knows (the lab's responder in the outside namespace,
named in the stack's resolv.conf) and answered back, and they go nowhere else.

The Wire plays the container and asks; the responder's events show what reached it and from
where; a watch on the outside's uplink shows everything the stack's host sockets sent meanwhile.
"""

from __future__ import annotations

import ipaddress
import random

import pytest
from scapy.layers.dns import DNS, DNSQR
from scapy.layers.inet import IP, UDP
from scapy.layers.inet6 import IPv6
from scapy.packet import Packet

from labkit.errors import ExpectTimeout
from labkit.net.layouts import HOST4, HOST6, OUTSIDE4, OUTSIDE6
from labkit.net.plan import FAMILIES
from labkit.packet.testbench.guest import Guest
from labkit.packet.wire import Wire
from labkit.stacks import Stack
from labkit.stacks.service import Service
from labkit.testbed.outside import Outside

pytestmark = [pytest.mark.needs("outside", "dns"), pytest.mark.varies_with()]
BOTH = pytest.mark.parametrize("family", FAMILIES)

WAIT = 3.0  # for an answer: the query crosses the stack and the host's socket twice
NAME = "outside.lab"
UNKNOWN = "nobody.outside.lab"
ZONE = {"A": OUTSIDE4, "AAAA": OUTSIDE6}  # what the responder answers for NAME
RESPONDER = {OUTSIDE4, OUTSIDE6}
HOST = {HOST4, HOST6}
LAB = [ipaddress.ip_network("198.18.0.0/15"), ipaddress.ip_network("2001:db8::/32")]
LINK = [ipaddress.ip_network(n) for n in ("224.0.0.0/24", "ff02::/16", "fe80::/10")]  # link scope: never past the uplink
NXDOMAIN = 3
FRESH = random.SystemRandom()


@pytest.fixture
def responder(outside: Outside) -> Service:
    """The lab's DNS responder on the outside's port 53, for NAME only (the host's resolver)."""
    return outside.service("dns", 53, family="any", zone=",".join(f"{NAME}={a}" for a in ZONE.values()))


def ask(wire: Wire, guest: Guest, server: str, name: str, qtype: str) -> tuple[int, DNS]:
    """One query from the guest to `server`:53 and the DNS answer the stack sends back to it."""
    port, ident = FRESH.randrange(20000, 60000), FRESH.randrange(1, 0xFFFF)
    wire.send(guest.ip(server) / UDP(sport=port, dport=53) / DNS(id=ident, rd=1, qd=DNSQR(qname=name, qtype=qtype)))
    try:
        reply = wire.expect(guest.ends.ip(src=server, dst=guest.address) / UDP(sport=53, dport=port), timeout=WAIT)
    except ExpectTimeout:
        pytest.fail(f"a query for {name} {qtype} to {server}:53 got no answer within {WAIT:g}s")
    assert reply.haslayer(DNS), f"the answer from {server}:53 is no DNS message: {reply.summary()}"
    return ident, reply[DNS]


def addresses(answer: DNS, qtype: str) -> list[str]:
    want = {"A": 1, "AAAA": 28}[qtype]
    return [str(rr.rdata) for rr in (answer.an or []) if rr.type == want]


def question(answer: DNS) -> str:
    qd = answer.qd[0] if isinstance(answer.qd, list) else answer.qd
    return qd.qname.decode().rstrip(".") if qd is not None else ""


@BOTH
@pytest.mark.parametrize("qtype", ["A", "AAAA"])
def test_a_lab_name_resolves_to_the_responders_address(wire, stack: Stack, guest, responder, family, qtype):
    server = stack.dns_address(family)
    ident, answer = ask(wire, guest, server, NAME, qtype)
    assert answer.id == ident and answer.qr == 1, f"the answer has id {answer.id} (qr={answer.qr}), want the query's {ident}"
    assert question(answer) == NAME, f"the answer is to the question {question(answer)!r}, want {NAME!r}"
    assert answer.rcode == 0, f"the query for {NAME} {qtype} got rcode {answer.rcode}, want 0 (no error)"
    got = addresses(answer, qtype)
    assert got == [ZONE[qtype]], f"{NAME} {qtype} resolved to {got}, want the responder's [{ZONE[qtype]}]"


@BOTH
def test_an_unknown_name_gets_nxdomain(wire, stack: Stack, guest, responder, family):
    _, answer = ask(wire, guest, stack.dns_address(family), UNKNOWN, "A")
    assert answer.rcode == NXDOMAIN, f"a query for {UNKNOWN} got rcode {answer.rcode}, want 3 (NXDOMAIN)"
    assert addresses(answer, "A") == [], f"a query for {UNKNOWN} got addresses {addresses(answer, 'A')}"


@BOTH
def test_the_responder_gets_the_query_from_the_host(wire, stack: Stack, guest, responder, family):
    """The stack asks the host's resolver from the host's own sockets, as any program there does."""
    ask(wire, guest, stack.dns_address(family), NAME, "A")
    try:
        query = responder.wait_for(lambda e: e["event"] == "query", timeout=WAIT)
    except ExpectTimeout:
        pytest.fail(f"the query was answered, but the lab's responder saw no query: {responder.events[-3:]}")
    assert (query["name"], query["type"]) == (NAME, "A"), f"the responder was asked {query['name']} {query['type']}"
    assert query["peer"][0] in HOST, f"the query reached the responder from {query['peer']}, want one of the host's {sorted(HOST)}"


@BOTH
def test_dns_queries_go_to_the_responder_and_nowhere_else(wire, outside, stack: Stack, guest, responder, family):
    """Everything the stack's host sockets put on the uplink while it resolves stays in the lab,
    and every DNS packet among it is for the lab's responder."""
    watch = outside.watch()
    server = stack.dns_address(family)
    for name, qtype in ((NAME, "A"), (NAME, "AAAA"), (UNKNOWN, "A")):
        ask(wire, guest, server, name, qtype)
    frames = [f.packet for f in watch.drain() if not f.outgoing]
    strays = [p.summary() for p in frames if not stays_in_the_lab(p)]
    assert not strays, f"the stack sent {len(strays)} packet(s) out of the lab while resolving: {strays[:3]}"
    elsewhere = [p.summary() for p in frames if is_dns(p) and ip_of(p).dst not in RESPONDER]
    assert not elsewhere, f"DNS went to {len(elsewhere)} place(s) besides the responder {sorted(RESPONDER)}: {elsewhere[:3]}"
    asked = [p for p in frames if is_dns(p)]
    assert asked, "the answers came, yet no DNS query crossed the uplink to the responder"


def ip_of(pkt: Packet) -> Packet:
    return pkt[IP] if pkt.haslayer(IP) else pkt[IPv6]


def stays_in_the_lab(pkt: Packet) -> bool:
    """Non-IP frames (ARP) stay on the link; an IP packet's destination must be the lab's."""
    if not (pkt.haslayer(IP) or pkt.haslayer(IPv6)):
        return True
    dst = ipaddress.ip_address(ip_of(pkt).dst)
    return any(dst in net for net in LAB + LINK)


def is_dns(pkt: Packet) -> bool:
    return bool(pkt.haslayer(UDP)) and 53 in (pkt[UDP].dport, pkt[UDP].sport)
