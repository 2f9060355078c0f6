"""ARP and NDP resolution, as the stack does it for its own traffic.

The Wire plays every neighbour: it answers for the addresses a check gives it, with a MAC of the
check's choosing, so a check sees both that the stack asks before its first packet and which
answer it then uses. A neighbour nobody answers must end in an error to the sender after a
bounded number of solicitations, not in silence.
"""

from __future__ import annotations

import contextlib
import random
import time

import pytest
from scapy.layers.inet import UDP
from scapy.layers.inet6 import ICMPv6ND_NA, ICMPv6NDOptDstLLAddr, IPv6
from scapy.layers.l2 import Ether

from labkit.errors import ExpectTimeout
from labkit.net.plan import FAMILIES
from labkit.packet import echo
from labkit.packet.testbench import IcmpEcho
from labkit.packet.testbench.neighbours import announce, ask, dad_probe, solicitations

OTHER_MAC = "02:00:00:00:00:55"  # the MAC a neighbour answers with, unlike the Wire's own
EHOSTUNREACH = 113
OFF_LINK = {"ipv4": "198.19.77.7", "ipv6": "2001:db8:77::7"}  # reached through the default gateway

pytestmark = pytest.mark.varies_with("channels")
# A check in which no frame reaches the stack (what it resolves, nobody answers): channels split
# only what the stack reads, so its outcome is the stack's alone, on any of them.
NOTHING_READ = pytest.mark.varies_with()


@pytest.mark.needs("ndp", "ipv6")
def test_answers_neighbour_solicitation_for_own_address_only(stack, wire, plan):
    """The NA may come from any address of the stack's interface (RFC 4861 7.2.4: Linux uses the
    target, pasta its link-local); what counts is the target, the S flag and the MAC it names."""
    wire.send(ask(wire.mac, plan.peer6, plan.unused6()))
    wire.send(ask(wire.mac, plan.peer6, plan.stack6))
    na = wire.expect(IPv6(dst=plan.peer6) / ICMPv6ND_NA(tgt=plan.stack6), timeout=2)
    assert na[ICMPv6ND_NA].S == 1, "the advertisement answering a solicitation must have the Solicited flag"
    lladdr = na[ICMPv6NDOptDstLLAddr].lladdr if na.haslayer(ICMPv6NDOptDstLLAddr) else None
    assert lladdr == stack.mac, f"the advertisement names {lladdr}, the stack's MAC is {stack.mac}"
    wrong = [f for f in wire.frames if f.packet.haslayer(ICMPv6ND_NA) and f.packet[ICMPv6ND_NA].tgt == plan.unused6()]
    assert not wrong, f"the stack advertised {plan.unused6()}, which it does not own"


@pytest.mark.fresh  # the destination must not be resolved yet
@pytest.mark.changes("neighbours")  # the neighbour is left at OTHER_MAC
@pytest.mark.needs("udp", "services")
@pytest.mark.parametrize("where", ["on-link", "gateway"])
@pytest.mark.parametrize("family", FAMILIES)
def test_resolves_before_its_first_packet_and_uses_the_answer(stack, wire, ends, where):
    dst = ends.unused if where == "on-link" else OFF_LINK[ends.family]
    neighbour = ends.unused if where == "on-link" else ends.peer
    wire.own(neighbour, mac=OTHER_MAC)
    payload = random.randbytes(8)
    stack.service("udp-send", to=dst, port=9, payload=payload.hex()).wait_for(lambda e: e["event"] == "sent", timeout=5)
    datagram = wire.expect_frame(ends.ip(dst=dst) / UDP(dport=9) / payload, timeout=5)
    asked = solicitations(wire.frames, neighbour)
    assert asked, f"the stack sent to {dst} without asking for {neighbour} first"
    assert asked[0].ts <= datagram.ts, "the datagram left before the solicitation"
    assert datagram.packet[Ether].dst == OTHER_MAC, (
        f"the datagram went to {datagram.packet[Ether].dst}; {neighbour} was answered with {OTHER_MAC}"
    )


@NOTHING_READ
@pytest.mark.needs("tcp", "services")
@pytest.mark.parametrize("family", FAMILIES)
def test_unanswered_neighbour_ends_in_ehostunreach_after_bounded_solicitations(stack, wire, ends):
    nobody = ends.unused
    attempt = stack.service("tcp-connect", to=nobody, port=9, timeout=20)
    started = time.time()
    outcome = attempt.wait_for(lambda e: e["event"] in ("failed", "connected"), timeout=25)
    failed_at = time.time()
    assert outcome["event"] == "failed" and outcome["errno"] == EHOSTUNREACH, (
        f"connecting to {nobody}, which nobody answers for, gave {outcome} (want EHOSTUNREACH)"
    )
    # Bounded: the solicitations stop. Watch 4 s past the error; a resolution already under way
    # may finish its round (netstack sometimes runs one more for a queued retransmission).
    wire.listen(4)
    asked = solicitations(wire.frames, nobody)
    times = [round(f.ts - started, 2) for f in asked]
    assert 1 <= len(asked) <= 10, f"{len(asked)} solicitations for {nobody}, at {times}s from the connect"
    last = asked[-1].ts - failed_at
    assert last < 3, f"solicitations for {nobody} still went on {last:.1f}s after the sender's error; all at {times}s"


def _announcement_moves_the_neighbour(stack, wire, ends, announcement, what: str) -> None:
    """The stack answers the peer at the Wire's MAC; the peer announces OTHER_MAC; the stack's
    answers must go there. With several channels the announcement and the echo are different
    flows and may be handled out of order: ask again (bounded) before judging."""
    ping = IcmpEcho(wire, ends)
    assert ping.ping(1, timeout=3)[Ether].dst == wire.mac
    wire.own(ends.peer, mac=OTHER_MAC)
    wire.send(announcement)
    for seq in (2, 3, 4):
        wire.send(Ether(src=OTHER_MAC, dst=stack.mac) / ping.request(seq))
        second = ping.expect_reply(seq, timeout=3)
        if second[Ether].dst == OTHER_MAC:
            break
    assert second[Ether].dst == OTHER_MAC, f"after {what} for {ends.peer} at {OTHER_MAC}, the reply went to {second[Ether].dst}"


@pytest.mark.changes("neighbours")  # the peer's entry is left at OTHER_MAC
@pytest.mark.needs("icmp", "ipv4", "arp")
@pytest.mark.parametrize("form", ["request", "reply"])  # RFC 5227 announces with requests; both are seen
def test_gratuitous_arp_updates_the_neighbour(stack, wire, plan, form):
    ends = plan.endpoints("ipv4")
    _announcement_moves_the_neighbour(stack, wire, ends, announce(OTHER_MAC, ends.peer, form), f"a gratuitous ARP {form}")


@pytest.mark.changes("neighbours")  # as above
@pytest.mark.needs("icmp", "ipv6", "ndp")
def test_unsolicited_advertisement_updates_the_neighbour(stack, wire, plan):
    ends = plan.endpoints("ipv6")
    _announcement_moves_the_neighbour(stack, wire, ends, announce(OTHER_MAC, ends.peer), "an unsolicited NA")


# -- duplicate address detection ---------------------------------------------------------------


def _add_address_inside(stack, testbed, address: str, prefixlen: int) -> None:
    """`ip addr add` run inside the stack, as a container's tooling would."""
    done = stack.run(["ip", "-6", "addr", "add", f"{address}/{prefixlen}", "dev", testbed.stack_end.name])
    assert done.returncode == 0, f"{stack.id}: ip addr add {address}/{prefixlen} failed: {done.stderr.strip()}"


@NOTHING_READ
@pytest.mark.changes("addresses")  # it adds one inside the stack
@pytest.mark.needs("ndp", "ipv6", "addr-config")
def test_a_new_ipv6_address_is_probed_before_use(testbed, stack, wire, plan):
    """RFC 4862 5.4: before an address is used, a neighbour solicitation for it from the
    unspecified address goes to its solicited-node group."""
    address = plan.unused6()
    _add_address_inside(stack, testbed, address, plan.net6.prefixlen)
    try:
        wire.expect(dad_probe(address), timeout=3)
    except ExpectTimeout as exc:
        raise AssertionError(f"no duplicate address detection probe for {address} within 3 s after it was added\n{exc}") from None


@pytest.mark.changes("addresses", "neighbours")  # an address, and another node's MAC for it
@pytest.mark.needs("ndp", "ipv6", "addr-config")
def test_a_duplicate_ipv6_address_is_given_up(testbed, stack, wire, plan):
    """Another node answers the probe for the new address: the stack must not take it. An echo
    request to it then goes unanswered, while one to the stack's own address, sent after it, is
    answered (so the silence is not a deaf stack's)."""
    address = plan.unused6()
    _add_address_inside(stack, testbed, address, plan.net6.prefixlen)
    with contextlib.suppress(ExpectTimeout):  # a stack without DAD sends no probe; it is told all the same
        wire.expect(dad_probe(address), timeout=3)
    wire.send(announce(wire.mac, address, source=plan.peer6))
    outcome = echo.echo_outcome(wire, plan.endpoints("ipv6"), address)
    assert outcome != "deaf", f"{stack.id} no longer answers at its own address {plan.stack6}"
    assert outcome == "silent", f"{address} is another node's (it answered the DAD probe), yet the stack answered an echo to it"
