"""Verified injection rate: frames sent on the peer end and matched at the stack's end.

labkit: prebuilt frames through `Wire.inject`, verified by a kernel BPF capture on the far end
(the filter is the template, PACKET_STATISTICS the verdict). Baselines: scapy's `sendp` of
Packet objects through the same kind of socket, and a bare AF_PACKET `send(bytes)` loop.
"""

from __future__ import annotations

import socket
import time

from scapy.layers.inet import IP, UDP
from scapy.layers.l2 import Ether
from scapy.sendrecv import sendp
from scapy.supersocket import SuperSocket

from labkit.net.plan import AddressPlan
from labkit.packet.wire import Wire

from .common import Figure

OTHER_HOST = "02:00:00:00:00:99"  # frames the sandbox kernel drops at once; the capture still sees them


class _Opened(SuperSocket):
    """scapy's send path over a packet socket the lab opened inside the namespace."""

    def __init__(self, sock: socket.socket) -> None:
        self.ins = self.outs = sock
        self.iface = None
        self.promisc = False


def frames(wire: Wire, plan: AddressPlan, n: int) -> list[bytes]:
    base = Ether(src=wire.mac, dst=OTHER_HOST) / IP(src=plan.peer4, dst=plan.stack4) / UDP(dport=9) / (b"x" * 18)
    raw = bytearray(bytes(base))
    out = []
    for i in range(n):  # vary the source port; patch bytes instead of rebuilding (scapy ~1k builds/s)
        raw[34:36] = (1024 + i % 60000).to_bytes(2, "big")
        out.append(bytes(raw))
    return out


def run(n: int = 100_000, n_scapy: int = 3000) -> list[Figure]:
    plan = AddressPlan()
    topo, stack_end, peer_end = plan.build()
    stack_end.ipv6 = peer_end.ipv6 = False
    stack_end.addresses = [a for a in stack_end.addresses if a.version == 4]
    topo["sb"].routes = [r for r in topo["sb"].routes if r.dst.version == 4]
    with topo:
        peer = Wire(peer_end.ns.netns, peer_end.name, mac=peer_end.mac, far_mac=OTHER_HOST)
        far = Wire(stack_end.ns.netns, stack_end.name, mac=stack_end.mac, record=False)
        expr = f"udp and dst port 9 and src host {plan.peer4} and ether src {peer.mac}"
        batch = frames(peer, plan, n)
        try:
            with far.capture(expr) as cap:
                t = time.perf_counter()
                peer.inject(batch)
                got = cap.wait_count(n, timeout=30)
                lab = got / (time.perf_counter() - t)
                if got != n:
                    raise AssertionError(f"labkit injection: only {got} of {n} frames verified at the far end")

            with far.capture(expr) as cap:
                sock = peer_end.ns.socket(socket.AF_PACKET, socket.SOCK_RAW, 0)
                sock.bind((peer_end.name, 0))
                pkts = [
                    Ether(src=peer.mac, dst=OTHER_HOST)
                    / IP(src=plan.peer4, dst=plan.stack4)
                    / UDP(sport=1024 + i, dport=9)
                    / (b"x" * 18)
                    for i in range(n_scapy)
                ]
                t = time.perf_counter()
                sendp(pkts, socket=_Opened(sock), verbose=False)
                got = cap.wait_count(n_scapy, timeout=30)
                scapy_rate = got / (time.perf_counter() - t)

                sock = peer_end.ns.socket(socket.AF_PACKET, socket.SOCK_RAW, 0)  # scapy closed the other one
                sock.bind((peer_end.name, 0))
                send = sock.send
                t = time.perf_counter()
                for f in batch:
                    send(f)
                raw_rate = n / (time.perf_counter() - t)
                sock.close()
        finally:
            peer.close()
            far.close()
    return [
        Figure("injection, labkit inject + BPF verify", lab, "frames/s"),
        Figure("injection, scapy sendp", scapy_rate, "frames/s"),
        Figure("injection, raw AF_PACKET send(bytes), unverified", raw_rate, "frames/s"),
        Figure("injection labkit / scapy sendp", lab / scapy_rate, "x", ">= 50", lab / scapy_rate >= 50),
        Figure("injection labkit / raw send", lab / raw_rate, "x", ">= 0.5", lab / raw_rate >= 0.5),
    ]
