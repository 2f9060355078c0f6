"""The AF_PACKET sockets a process holds, as the kernel sees them.

A sandbox's link endpoint is nothing but a few AF_PACKET sockets on the veth; how many there are,
which fanout group they share, and whether they speak virtio_net_hdr decides how frames are
dispatched. The lab reads that from outside: `/proc/PID/net/packet` lists the sockets of the
process's namespace, `/proc/PID/fd` says which of them the process holds, and a duplicate taken
with pidfd_getfd(2) answers getsockopt without disturbing the owner.
"""

from __future__ import annotations

import ctypes
import os
import socket
import struct
from dataclasses import dataclass
from pathlib import Path

from labkit.uapi import PACKET_FANOUT, PACKET_STATISTICS, PACKET_VERSION, PACKET_VNET_HDR, SOL_PACKET, SYS_PIDFD_GETFD, libc

FANOUT_TYPES = {0: "hash", 1: "lb", 2: "cpu", 3: "rollover", 4: "rnd", 5: "qm", 6: "cbpf", 7: "ebpf"}
FANOUT_FLAGS = {0x1000: "rollover", 0x2000: "uniqueid", 0x4000: "ignore_outgoing", 0x8000: "defrag"}



@dataclass(frozen=True)
class Fanout:
    group: int
    type: str
    flags: frozenset[str]

    @classmethod
    def decode(cls, value: int) -> Fanout | None:
        """The PACKET_FANOUT getsockopt value: group id in the low 16 bits, type and flags above."""
        value &= 0xFFFFFFFF  # getsockopt's int is signed; the defrag flag is its top bit
        if value == 0:
            return None
        mode = value >> 16
        kind = FANOUT_TYPES.get(mode & 0xFF, f"type{mode & 0xFF}")
        return cls(value & 0xFFFF, kind, frozenset(n for bit, n in FANOUT_FLAGS.items() if mode & bit))


@dataclass(frozen=True)
class PacketSocket:
    """One AF_PACKET socket: its /proc/net/packet row, and getsockopt answers when it could be read."""

    inode: int
    type: int  # SOCK_RAW (3) or SOCK_DGRAM (2)
    protocol: int  # host order, e.g. 0x0003 for ETH_P_ALL
    ifindex: int
    running: bool
    fd: int | None = None  # the fd number in the owning process
    fanout: Fanout | None = None
    vnet_hdr: bool | None = None
    version: int | None = None  # TPACKET_V1..V3
    rcvbuf: int | None = None
    sndbuf: int | None = None


def parse_proc_net_packet(text: str) -> list[dict[str, int]]:
    """Rows of /proc/net/packet: sk RefCnt Type Proto Iface R Rmem User Inode."""
    rows = []
    for line in text.splitlines()[1:]:
        f = line.split()
        if len(f) < 9:
            continue
        rows.append({"type": int(f[2]), "proto": int(f[3], 16), "ifindex": int(f[4]), "running": int(f[5]), "inode": int(f[8])})
    return rows


def _socket_fds(pid: int) -> dict[int, int]:
    """inode -> fd number for the sockets `pid` holds."""
    out = {}
    base = f"/proc/{pid}/fd"
    for name in os.listdir(base):
        try:
            target = os.readlink(f"{base}/{name}")
        except OSError:
            continue
        if target.startswith("socket:["):
            out[int(target[8:-1])] = int(name)
    return out


def pidfd_getfd(pid: int, fd: int) -> int:
    """A duplicate of `fd` from process `pid` (needs ptrace rights over it: root here)."""
    pidfd = os.pidfd_open(pid)
    try:
        dup = libc.syscall(SYS_PIDFD_GETFD, pidfd, fd, 0)
        if dup < 0:
            err = ctypes.get_errno()
            raise OSError(err, f"pidfd_getfd({pid}, {fd}): {os.strerror(err)}")
        return dup
    finally:
        os.close(pidfd)


def _int_opt(sock: socket.socket, level: int, opt: int) -> int | None:
    try:
        return struct.unpack("i", sock.getsockopt(level, opt, 4))[0]
    except OSError:
        return None


def _describe(dup: socket.socket, inode: int, fd: int, row: dict[str, int] | None) -> PacketSocket:
    fanout = _int_opt(dup, SOL_PACKET, PACKET_FANOUT)
    vnet = _int_opt(dup, SOL_PACKET, PACKET_VNET_HDR)
    return PacketSocket(
        inode=inode,
        type=row["type"] if row else (_int_opt(dup, socket.SOL_SOCKET, socket.SO_TYPE) or 0),
        protocol=row["proto"] if row else (_int_opt(dup, socket.SOL_SOCKET, socket.SO_PROTOCOL) or 0),
        ifindex=row["ifindex"] if row else -1,  # -1: the socket lives in another namespace's table
        running=bool(row["running"]) if row else False,
        fd=fd,
        fanout=Fanout.decode(fanout or 0),
        vnet_hdr=None if vnet is None else bool(vnet),
        version=_int_opt(dup, SOL_PACKET, PACKET_VERSION),
        rcvbuf=_int_opt(dup, socket.SOL_SOCKET, socket.SO_RCVBUF),
        sndbuf=_int_opt(dup, socket.SOL_SOCKET, socket.SO_SNDBUF),
    )


def packet_sockets(pid: int) -> list[PacketSocket]:
    """The AF_PACKET sockets held by `pid`, with their fanout, vnet header and buffer settings.

    Every socket fd of the process is looked at, not only the rows of its namespace's
    /proc/net/packet: a socket made in another namespace (runsc opens its channels before the
    sandbox moves) is listed there, not here. A duplicate whose inode is not the one listed (the
    fd number was reused meanwhile) is skipped.
    """
    rows = {r["inode"]: r for r in parse_proc_net_packet(Path(f"/proc/{pid}/net/packet").read_text())}
    found = []
    for inode, fd in sorted(_socket_fds(pid).items(), key=lambda item: item[1]):
        try:
            dup = pidfd_getfd(pid, fd)
        except OSError:
            continue  # closed meanwhile, or no right to look
        try:
            sock = socket.socket(fileno=dup) if os.fstat(dup).st_ino == inode else None
        except OSError:
            sock = None
        if sock is None:
            os.close(dup)
            continue
        with sock:
            if _int_opt(sock, socket.SOL_SOCKET, socket.SO_DOMAIN) == socket.AF_PACKET:
                found.append(_describe(sock, inode, fd, rows.get(inode)))
    return found



def packet_statistics(pid: int, fd: int) -> tuple[int, int]:
    """(packets, drops) the socket `fd` of `pid` counted since the last call, which resets them.

    The counters are the kernel's own for that socket (struct tpacket_stats; the V3 form adds a
    freeze count after the same two fields).
    """
    dup = pidfd_getfd(pid, fd)
    with socket.socket(fileno=dup) as s:
        raw = s.getsockopt(SOL_PACKET, PACKET_STATISTICS, 12)
    packets, drops = struct.unpack_from("II", raw)
    return packets, drops
