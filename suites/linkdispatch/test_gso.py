"""Segmentation offload on the sending side: a large TCP write from inside the stack.

Seen twice. (a) On the sandbox end of the veth, a lab PACKET_VNET_HDR socket reads what the stack
hands the kernel: with GSO, TCP super-frames whose virtio_net_hdr must let a device cut them
(gso_type of the IP version, gso_size the MSS, csum_start/csum_offset at the TCP checksum,
hdr_len covering the headers, NEEDS_CSUM). (b) Past a router whose outgoing link has no
offloads, where the kernel has cut and checksummed them as a NIC would: every segment fits the
MTU, sequence numbers are contiguous, checksums are valid, and the far host got every byte.
"""

from __future__ import annotations

import hashlib
import itertools
import socket
from dataclasses import dataclass

import pytest
from scapy.layers.inet import IP, TCP

from labkit.net import layouts
from labkit.net.plan import FAMILIES
from labkit.packet.checksum import checksum_errors
from labkit.packet.layers.virtio_net import GSO_ECN, GSO_TCPV4, GSO_TCPV6, TCP_CSUM_OFFSET
from labkit.packet.vnet import VnetSocket

BYTES = 200_000
ETH = 14

pytestmark = [pytest.mark.needs("tcp", "services"), pytest.mark.layout.with_args(layouts.routed)]


def _mss_option(tcp: TCP) -> int | None:
    return next((v for k, v in tcp.options if k == "MSS"), None)


def _segment_payload_limit(frames, ip, mtu: int) -> int:
    """The MSS a data segment may carry: the far host's MSS option, less the options data segments carry."""
    syn_ack = next((p for out, p in frames if not out and p.haslayer(TCP) and p[TCP].flags & 0x12 == 0x12), None)
    assert syn_ack is not None, "no SYN-ACK from the far host reached the stack"
    announced = _mss_option(syn_ack[TCP]) or 536
    first_data = next(p for out, p in frames if out and p.haslayer(TCP) and len(p[TCP].payload))
    options = first_data[TCP].dataofs * 4 - 20
    return min(announced, mtu - len(ip()) - 20) - options


@dataclass
class BulkWrite:
    """One large TCP write from the stack to the far host, as seen at both places."""

    ip: type
    me: str
    near: list  # (outgoing?, virtio_net_hdr / frame) on the sandbox end
    far: list  # frames arriving at the far host's link
    sent: dict
    received: int
    digest: str

    def data_leaving_stack(self) -> list:
        ip = self.ip
        return [p for out, p in self.near if out and p.haslayer(ip) and p.haslayer(TCP) and len(p[TCP].payload)]

    def flow_at_far_host(self) -> list:
        ip = self.ip
        return [p for _out, p in self.far if p.haslayer(ip) and p[ip].src == self.me and p.haslayer(TCP)]


def bulk_write(testbed, stack, ends) -> BulkWrite:
    """Each check makes its own transfer: a verdict must not rest on what an earlier check did."""
    return _transfer(testbed, stack, ends)


def _transfer(testbed, stack, ends) -> BulkWrite:
    ip = ends.ip
    far_addr = layouts.FAR4 if ends.version == 4 else layouts.FAR6
    far_ns = testbed.topology["far"]
    sandbox_end = testbed.stack_end
    with (
        VnetSocket(sandbox_end.ns.netns, sandbox_end.name) as at_stack,
        VnetSocket(far_ns.netns, layouts.FAR_IFNAME) as at_far,
        far_ns.socket(ends.af, socket.SOCK_STREAM) as listener,
    ):
        listener.settimeout(3)
        listener.bind((far_addr, 0))
        listener.listen(1)
        source = stack.service("tcp-source", to=far_addr, port=listener.getsockname()[1], bytes=BYTES)
        try:
            conn, _ = listener.accept()
        except TimeoutError:
            syns = [p for out, p in at_stack.collect(0.1, 1) if out and p.haslayer(TCP) and p[TCP].flags & 0x02]
            raise AssertionError(
                f"no connection from {stack.id} reached the far host within 3s; its SYNs: "
                + "; ".join(f"{p[TCP].summary()} chksum={p[TCP].chksum:#06x} {checksum_errors(p[ip]) or 'valid'}" for p in syns[:2])
            ) from None
        digest, received = hashlib.sha256(), 0
        with conn:
            conn.settimeout(10)
            while chunk := conn.recv(1 << 20):
                digest.update(chunk)
                received += len(chunk)
        sent = source.wait_for(lambda e: e["event"] == "sent", timeout=10)
        near = at_stack.collect(timeout=0.2, until=10)
        far = at_far.collect(timeout=0.2, until=10, outgoing=False)
    return BulkWrite(ip, ends.stack, near, far, sent, received, digest.hexdigest())


FAMILY = pytest.mark.parametrize("family", FAMILIES)


@FAMILY
def test_gso_frames_carry_a_header_a_device_can_act_on(testbed, stack, ends):
    bulk = bulk_write(testbed, stack, ends)
    assert (bulk.received, bulk.digest) == (bulk.sent["len"], bulk.sent["sha256"]), (
        f"far host got {bulk.received} of {bulk.sent['len']} bytes"
    )
    data = bulk.data_leaving_stack()
    assert data, "no data segment left the stack"
    gso = [p for p in data if p.is_gso]
    promised = stack.options.get("gso")
    if promised is True:
        assert gso, f"{stack.id} has GSO on, yet all {len(data)} data frames left already cut"
    elif promised is False:
        assert not gso, f"{stack.id} has GSO off, yet {len(gso)} frames carry a GSO type: {gso[0].summary()}"
    ip_len = len(bulk.ip())
    cut = {len(p[TCP].payload) for p in bulk.flow_at_far_host()}
    for p in gso:
        tcp_len = p[TCP].dataofs * 4
        got = {
            "gso_type": p.gso_type & ~GSO_ECN,
            "csum_start": p.csum_start,
            "csum_offset": p.csum_offset,
            "needs_csum": p.needs_csum,
        }
        want = {
            "gso_type": GSO_TCPV4 if bulk.ip is IP else GSO_TCPV6,
            "csum_start": ETH + ip_len,
            "csum_offset": TCP_CSUM_OFFSET,
            "needs_csum": True,
        }
        assert got == want, f"virtio_net_hdr of a {len(p[TCP].payload)}-byte super-frame: {got}, want {want}"
        assert p.hdr_len >= ETH + ip_len + tcp_len, f"hdr_len {p.hdr_len} does not cover the {ETH + ip_len + tcp_len} header bytes"
        assert p.gso_size < len(p[TCP].payload), (
            f"a GSO frame of {len(p[TCP].payload)} bytes with gso_size {p.gso_size} needs no cutting"
        )
        assert p.gso_size in cut, f"gso_size {p.gso_size}, but the device cut segments of {sorted(cut)[-3:]} bytes"


@FAMILY
def test_segments_on_the_wire_fit_the_mtu_are_contiguous_and_checksummed(testbed, stack, ends):
    bulk = bulk_write(testbed, stack, ends)
    ip = bulk.ip
    flow = bulk.flow_at_far_host()
    assert flow, "nothing from the stack reached the far host's link"
    mtu = testbed.plan.mtu
    too_big = [len(p[ip]) for p in flow if len(p[ip]) > mtu]
    assert not too_big, f"{len(too_big)} segments exceed the MTU {mtu}: {too_big[:5]}"
    unfinished = [p for p in flow if p.needs_csum or p.is_gso]
    assert not unfinished, f"{len(unfinished)} frames reached the wire with offload work left undone"
    bad = [(p[TCP].seq, checksum_errors(p[ip])) for p in flow if checksum_errors(p[ip])]
    assert not bad, f"bad checksums on the wire: {bad[:3]}"
    segments = sorted({(p[TCP].seq, len(p[TCP].payload)) for p in flow if len(p[TCP].payload)})
    gaps = [(a, b) for (a, alen), (b, _) in itertools.pairwise(segments) if (a + alen) % 2**32 != b]
    assert not gaps, f"sequence numbers not contiguous at {gaps[:3]}"
    total = sum(n for _, n in segments)
    assert total == BYTES, f"segments carry {total} bytes, {BYTES} were sent"


@FAMILY
def test_full_segments_use_the_whole_mss(testbed, stack, ends):
    """What the far host announced, less the option bytes each segment carries, is what fits."""
    bulk = bulk_write(testbed, stack, ends)
    mss = _segment_payload_limit(bulk.near, bulk.ip, testbed.plan.mtu)
    sizes = [len(p[TCP].payload) for p in bulk.flow_at_far_host()]
    assert sizes, "no data segment reached the far host"
    assert max(sizes) == mss, f"the largest segment carries {max(sizes)} bytes; the MSS allows {mss}"
    gso_sizes = {p.gso_size for p in bulk.data_leaving_stack() if p.is_gso}
    assert gso_sizes <= {mss}, f"gso_size {sorted(gso_sizes)} in the stack's GSO headers; the MSS allows {mss}"
