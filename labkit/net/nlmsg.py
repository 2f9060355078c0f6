"""Split a netlink datagram into its messages: the one splitter the lab's netlink readers share.

Standard library only: the rtnetlink probe imports it inside slow-starting sandboxes, and the
topology builder (labkit.net.rtnl) on the host.
"""

from __future__ import annotations

import struct
from collections.abc import Iterator
from typing import NamedTuple

NLMSG_HDR = struct.Struct("=IHHII")  # struct nlmsghdr: length, type, flags, seq, pid


def align(n: int) -> int:
    """`n` rounded up to netlink's 4-byte alignment (NLMSG_ALIGN, NLA_ALIGN)."""
    return (n + 3) & ~3


class Header(NamedTuple):
    length: int
    type: int
    flags: int
    seq: int
    pid: int


def split(data: bytes) -> Iterator[tuple[Header, bytes]]:
    """Each message of `data` with its header, padding to 4 skipped.

    A header whose length is below a header's or runs past the end ends the split: it comes
    last, with all the bytes left, so `len(chunk) != header.length` says it is malformed (a
    stack's answer may be; the probe keeps such bytes as a finding). A tail too short for a
    header is dropped, as the kernel's own parser does.
    """
    offset = 0
    while offset + NLMSG_HDR.size <= len(data):
        header = Header(*NLMSG_HDR.unpack_from(data, offset))
        if header.length < NLMSG_HDR.size or offset + header.length > len(data):
            yield header, data[offset:]
            return
        yield header, data[offset : offset + header.length]
        offset += align(header.length)
