"""Checksum verdicts on captured frames: which checksum is wrong, and what it should be.

Each checksum is recomputed by scapy from the frame's own bytes (the field deleted, the layer
rebuilt), so the check follows the protocol definition rather than a second implementation.
"""

from __future__ import annotations

from scapy.layers.inet import IP, TCP, UDP, in4_pseudoheader
from scapy.layers.inet6 import IPv6, in6_pseudoheader
from scapy.packet import NoPayload, Packet
from scapy.utils import checksum as internet_checksum

_FIELD_NAMES = ("chksum", "cksum")


def _checksummed_layers(pkt: Packet) -> list[tuple[int, Packet, str]]:
    found = []
    layer, i = pkt, 0
    while not isinstance(layer, NoPayload):
        for name in _FIELD_NAMES:
            if any(f.name == name for f in layer.fields_desc):
                found.append((i, layer, name))
                break
        layer, i = layer.payload, i + 1
    return found


def _nth(pkt: Packet, index: int) -> Packet:
    layer = pkt
    for _ in range(index):
        layer = layer.payload
    return layer


def checksum_errors(pkt: Packet) -> list[str]:
    """`['UDP.chksum: 0x1234, should be 0xabcd', ...]` for every wrong checksum; [] if all are right.

    An IPv4 UDP checksum of 0 means "none" and is not an error (RFC 768); on IPv6 it is.
    """
    errors = []
    for index, layer, name in _checksummed_layers(pkt):
        got = layer.getfieldval(name)
        if isinstance(layer, UDP) and got == 0 and isinstance(layer.underlayer, IP):
            continue
        fresh = pkt.copy()
        delattr(_nth(fresh, index), name)
        want = _nth(type(pkt)(bytes(fresh)), index).getfieldval(name)
        if got != want:
            errors.append(f"{type(layer).__name__}.{name}: {got:#06x}, should be {want:#06x}")
    return errors


def checksums_present(pkt: Packet) -> list[str]:
    """Names of the checksummed layers in `pkt`, e.g. ['IP', 'UDP'] (what a check covered)."""
    return [type(layer).__name__ for _, layer, _ in _checksummed_layers(pkt)]


def finish_partial(pkt: Packet) -> Packet:
    """What a device would put on the wire for a CHECKSUM_PARTIAL frame.

    With tx offload the sender leaves the pseudo-header sum in the TCP/UDP checksum field and
    the device sums the L4 bytes from there. Doing the device's part here lets a check judge
    whether the sender's seed was right, instead of skipping the checksum.
    """
    out = pkt.copy()
    l4 = out.getlayer(TCP) or out.getlayer(UDP)
    ip = out.getlayer(IP) or out.getlayer(IPv6)
    if l4 is None or ip is None:
        return out
    length = (ip.len - ip.ihl * 4) if isinstance(ip, IP) else ip.plen
    data = bytes(l4)[:length]  # without Ethernet padding
    value = internet_checksum(data)  # ones' complement of the sum, seed included
    if isinstance(l4, UDP) and value == 0:
        value = 0xFFFF
    l4.chksum = value
    return type(pkt)(bytes(out))


def leave_to_device(pkt: Packet) -> Packet:
    """The frame as a sender using checksum offload hands it over (the inverse of finish_partial).

    The TCP/UDP checksum field holds only the folded pseudo-header sum, with the full L4
    length; the device (or the receiver trusting CHECKSUM_PARTIAL) does the rest.
    """
    out = type(pkt)(bytes(pkt))
    l4 = out.getlayer(TCP) or out.getlayer(UDP)
    ip = out.getlayer(IP) or out.getlayer(IPv6)
    if l4 is None or ip is None:
        return out
    proto = 6 if isinstance(l4, TCP) else 17
    length = len(bytes(l4))
    pseudo = bytes(in4_pseudoheader(proto, ip, length) if isinstance(ip, IP) else in6_pseudoheader(proto, ip, length))  # type: ignore[arg-type]  # IPv6 here
    l4.chksum = ~internet_checksum(pseudo) & 0xFFFF
    return type(pkt)(bytes(out))
