"""Neighbour resolution as templates and frames, by the address family of the target: ARP for an
IPv4 address, NDP for an IPv6 one (RFC 826, RFC 4861, RFC 4862's duplicate address probes)."""

from __future__ import annotations

from collections.abc import Iterable
from socket import AF_INET6, inet_ntop, inet_pton

from scapy.layers.inet6 import ICMPv6ND_NA, ICMPv6ND_NS, ICMPv6NDOptDstLLAddr, ICMPv6NDOptSrcLLAddr, IPv6, in6_getnsma, in6_getnsmac
from scapy.layers.l2 import ARP, Ether
from scapy.packet import Packet

from labkit.packet.frames import Frame
from labkit.packet.match import compare

ALL_NODES_MAC, ALL_NODES = "33:33:00:00:00:01", "ff02::1"


def protocol(address: str) -> str:
    """The capability a stack needs to resolve `address`: "arp" or "ndp"."""
    return "ndp" if ":" in address else "arp"


def solicited_node(address: str) -> str:
    """The solicited-node multicast group of an IPv6 address (where its NS goes)."""
    return inet_ntop(AF_INET6, in6_getnsma(inet_pton(AF_INET6, address)))


def solicitation(target: str) -> Packet:
    """A template for a request to resolve `target`: ARP who-has, or a neighbour solicitation."""
    return IPv6() / ICMPv6ND_NS(tgt=target) if ":" in target else ARP(op="who-has", pdst=target)


def solicitations(frames: Iterable[Frame], target: str) -> list[Frame]:
    """The incoming frames among `frames` that ask for `target`."""
    template = solicitation(target)
    return [f for f in frames if not f.outgoing and compare(template, f.packet).matched]


def dad_probe(address: str) -> Packet:
    """A template for RFC 4862's probe: an NS for `address` from the unspecified address."""
    return IPv6(src="::", dst=solicited_node(address)) / ICMPv6ND_NS(tgt=address)


def ask(mac: str, source: str, target: str) -> Packet:
    """A request from `source` at `mac` to resolve `target`, ready to send."""
    if ":" in target:
        return (
            Ether(src=mac, dst=in6_getnsmac(inet_pton(AF_INET6, target)))
            / IPv6(src=source, dst=solicited_node(target), hlim=255)
            / ICMPv6ND_NS(tgt=target)
            / ICMPv6NDOptSrcLLAddr(lladdr=mac)
        )
    return Ether(src=mac, dst="ff:ff:ff:ff:ff:ff") / ARP(op="who-has", hwsrc=mac, psrc=source, pdst=target)


def announce(mac: str, address: str, form: str = "request", source: str | None = None) -> Packet:
    """`address` is at `mac` now, told to everyone unasked: a gratuitous ARP (`form` "request",
    as RFC 5227 announces, or "reply") or an unsolicited neighbour advertisement (override set),
    sent from `source` (default: the address itself)."""
    if ":" in address:
        return (
            Ether(src=mac, dst=ALL_NODES_MAC)
            / IPv6(src=source or address, dst=ALL_NODES, hlim=255)
            / ICMPv6ND_NA(tgt=address, R=0, S=0, O=1)
            / ICMPv6NDOptDstLLAddr(lladdr=mac)
        )
    # A gratuitous reply names its sender as target too (what Linux's arp_is_garp asks for).
    tha = "00:00:00:00:00:00" if form == "request" else mac
    op = 1 if form == "request" else 2
    return Ether(src=mac, dst="ff:ff:ff:ff:ff:ff") / ARP(op=op, hwsrc=mac, psrc=address, hwdst=tha, pdst=address)
