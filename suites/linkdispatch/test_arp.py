"""ARP: a stack answers who-has for the addresses it owns, with its own MAC, and for no other."""

import pytest
from scapy.layers.l2 import ARP, Ether

pytestmark = [pytest.mark.needs("arp", "ipv4"), pytest.mark.varies_with("channels")]


def who_has(wire, plan, target: str) -> Ether:
    return Ether(src=wire.mac, dst="ff:ff:ff:ff:ff:ff") / ARP(op="who-has", hwsrc=wire.mac, psrc=plan.peer4, pdst=target)


def test_answers_who_has_for_own_address(stack, wire, plan):
    wire.send(who_has(wire, plan, plan.stack4))
    try:
        reply = wire.expect(Ether(dst=wire.mac) / ARP(op="is-at", psrc=plan.stack4), timeout=2)
    except AssertionError as exc:
        raise AssertionError(f"no ARP reply came from {stack.id} for who-has {plan.stack4}:\n{exc}") from None
    assert reply[ARP].hwsrc == stack.mac, f"ARP reply names MAC {reply[ARP].hwsrc}, the stack's is {stack.mac}"
    assert reply[Ether].src == stack.mac, f"ARP reply sent from {reply[Ether].src}, the stack's MAC is {stack.mac}"
    assert (reply[ARP].pdst, reply[ARP].hwdst) == (plan.peer4, wire.mac), (
        f"ARP reply addressed to {reply[ARP].pdst} at {reply[ARP].hwdst}"
    )


def test_ignores_who_has_for_address_it_does_not_own(stack, wire, plan):
    wire.send(who_has(wire, plan, plan.unused4()))
    wire.expect_none(ARP(op="is-at"), timeout=0.5)
    # The silence must not be because the stack is deaf: it still answers for its own address.
    wire.send(who_has(wire, plan, plan.stack4))
    wire.expect(ARP(op="is-at", psrc=plan.stack4), timeout=2)
