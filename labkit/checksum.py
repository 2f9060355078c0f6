"""Checksum verdicts on captured frames: which checksum is wrong, and what it should be.

Each checksum is recomputed by scapy from the frame's own bytes (the field deleted, the layer
rebuilt), so the check follows the protocol definition rather than a second implementation.
"""

from __future__ import annotations

from scapy.layers.inet import IP, UDP
from scapy.packet import NoPayload, Packet

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
