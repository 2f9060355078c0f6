"""Kernel socket filters from tcpdump expressions, compiled by libpcap for Ethernet frames."""

from __future__ import annotations

import ctypes
import socket
from functools import lru_cache

from labkit.errors import LabInputError
from labkit.uapi import SO_ATTACH_FILTER

DLT_EN10MB = 1


class _SockFprog(ctypes.Structure):
    _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.c_void_p)]


@lru_cache(maxsize=256)
def program(expr: str) -> tuple[int, bytes]:
    """(instruction count, instructions) for `expr`; cached, since tests reuse a few filters."""
    try:
        from scapy.arch.common import compile_filter, free_filter
        from scapy.error import Scapy_Exception
    except ImportError as exc:  # pragma: no cover - scapy is a hard dependency
        raise LabInputError(f"cannot compile capture filter {expr!r}: {exc}") from None
    try:
        bp = compile_filter(expr, linktype=DLT_EN10MB)
    except ImportError as exc:
        raise LabInputError(f"cannot compile capture filter {expr!r}: {exc} (install: apt-get install -y libpcap0.8)") from None
    except (Scapy_Exception, OSError) as exc:
        raise LabInputError(f"bad capture filter {expr!r}: {exc}; allowed: a pcap-filter(7) expression") from None
    count = bp.bf_len
    insns = ctypes.string_at(ctypes.addressof(bp.bf_insns.contents), count * 8)
    free_filter(bp)  # zeroes bf_len, hence the copy above
    return count, insns


def attach_raw(sock: socket.socket, count: int, insns: bytes) -> None:
    """Attach a compiled program (see `program`) to `sock` (SO_ATTACH_FILTER)."""
    buf = ctypes.create_string_buffer(insns, len(insns))
    prog = _SockFprog(count, ctypes.addressof(buf))
    sock.setsockopt(socket.SOL_SOCKET, SO_ATTACH_FILTER, bytes(prog))


# `ret #0`: accept nothing. For send-only sockets, so frames never queue on them.
DROP_ALL = (1, bytes.fromhex("0600000000000000"))
