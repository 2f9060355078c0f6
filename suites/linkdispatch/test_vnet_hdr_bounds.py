"""What the kernel accepts in a virtio_net_hdr written to a PACKET_VNET_HDR socket.

An fd-based endpoint writes one of these before every frame; these checks pin down, on the
kernel the lab runs on, which headers are refused (EINVAL) and which are repaired, so the lab
knows what a stack's headers must satisfy. The stack under test plays no part: the lab writes on
one end of a veth and reads on the other.
"""

from __future__ import annotations

import errno

import pytest
from scapy.layers.inet import IP, TCP
from scapy.layers.inet6 import IPv6
from scapy.layers.l2 import Ether

from labkit.net.plan import AddressPlan
from labkit.packet.layers.virtio_net import F_NEEDS_CSUM, GSO_TCPV4, GSO_TCPV6, TCP_CSUM_OFFSET, VirtioNetHdr
from labkit.packet.vnet import VnetSocket

PAYLOAD = 4000
HEADERS = 14 + 20 + 20


def good(**changes) -> VirtioNetHdr:
    fields = {
        "flags": F_NEEDS_CSUM,
        "gso_type": GSO_TCPV4,
        "hdr_len": HEADERS,
        "gso_size": 1448,
        "csum_start": 14 + 20,
        "csum_offset": TCP_CSUM_OFFSET,
    }
    fields.update(changes)
    return VirtioNetHdr(**fields)


@pytest.fixture(scope="module")
def veth():
    plan = AddressPlan()
    topo, near, far = plan.build()
    with topo:
        frame = Ether(src=far.mac, dst=near.mac) / IP(src=plan.peer4, dst=plan.stack4) / TCP(sport=1, dport=9, flags="A")
        with VnetSocket(far.ns.netns, far.name) as tx, VnetSocket(near.ns.netns, near.name) as rx:
            yield tx, rx, bytes(frame / (b"x" * PAYLOAD))


def write(veth, header: VirtioNetHdr):
    """(errno or None, headers of what arrived at the other end)."""
    tx, rx, frame = veth
    rx.collect(0.0, 0.0)  # drop leftovers
    try:
        tx.send(bytes(header) + frame)
        error = None
    except OSError as exc:
        error = exc.errno
    return error, [p for out, p in rx.collect(0.1, 2) if not out]


@pytest.mark.parametrize(
    "case, header",
    [
        ("gso type without gso_size", good(gso_size=0)),
        ("unknown gso_type", good(gso_type=7)),
        ("gso type of the other IP version", good(gso_type=GSO_TCPV6)),
        ("hdr_len past the packet", good(hdr_len=HEADERS + PAYLOAD + 1)),
        ("csum_offset past the packet", good(gso_type=0, gso_size=0, csum_offset=HEADERS + PAYLOAD)),
        ("csum_start past the packet", good(gso_type=0, gso_size=0, csum_start=HEADERS + PAYLOAD + 1)),
    ],
)
def test_kernel_refuses(veth, case, header):
    error, arrived = write(veth, header)
    assert error == errno.EINVAL, f"{case}: the kernel answered {errno.errorcode.get(error, error)}, want EINVAL"
    assert arrived == [], f"{case}: refused, yet {len(arrived)} frame(s) arrived"


@pytest.mark.parametrize(
    "case, header",
    [
        ("a well-formed TCPv4 GSO header", good()),
        ("hdr_len shorter than the headers", good(hdr_len=20)),
        ("hdr_len 0", good(hdr_len=0)),
        ("GSO without NEEDS_CSUM", good(flags=0, csum_start=0, csum_offset=0)),
    ],
)
def test_kernel_accepts_and_delivers_one_gso_frame(veth, case, header):
    error, arrived = write(veth, header)
    assert error is None, f"{case}: refused with {errno.errorcode.get(error, error)}"
    assert len(arrived) == 1, f"{case}: {len(arrived)} frames arrived, want the one super-frame"
    got = arrived[0]
    assert (got.gso_type, got.gso_size, got.needs_csum) == (GSO_TCPV4, 1448, True), (
        f"{case}: arrived as gso_type {got.gso_type}, gso_size {got.gso_size}, needs_csum {got.needs_csum}"
    )
    assert len(got[TCP].payload) == PAYLOAD


def test_ipv6_gso_header_on_an_ipv6_frame_is_accepted(veth):
    tx, rx, _ = veth
    plan = AddressPlan()
    frame = (
        Ether(src=plan.peer_mac, dst=plan.stack_mac)
        / IPv6(src=plan.peer6, dst=plan.stack6)
        / TCP(sport=1, dport=9, flags="A")
        / (b"y" * PAYLOAD)
    )
    header = good(gso_type=GSO_TCPV6, hdr_len=14 + 40 + 20, csum_start=14 + 40)
    rx.collect(0.0, 0.0)
    tx.send(bytes(header) + bytes(frame))
    arrived = [p for out, p in rx.collect(0.1, 2) if not out]
    assert [(p.gso_type, p.gso_size) for p in arrived] == [(GSO_TCPV6, 1448)]
