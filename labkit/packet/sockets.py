"""The AF_PACKET sockets a process holds, as the kernel sees them.

A sandbox's link endpoint is nothing but a few AF_PACKET sockets on the veth; how many there are,
which fanout group they share, and whether they speak virtio_net_hdr decides how frames are
dispatched. The lab reads that from outside: `/proc/PID/net/packet` lists the sockets of the
process's namespace, `/proc/PID/fd` says which of them the process holds, and a duplicate taken
with pidfd_getfd(2) answers getsockopt without disturbing the owner. sock_diag (NETLINK_SOCK_DIAG,
asked in the namespace the socket belongs to) adds what getsockopt cannot say: the geometry of a
PACKET_RX_RING and how many bytes are queued now.

How many frames a socket's queue holds when its owner reads nothing is then a matter of
arithmetic (`queue_capacity`): the ring's frame count, or the receive buffer over what one frame
costs there (its skb truesize, which `truesize_of` measures on a socket the lab owns).
"""

from __future__ import annotations

import ctypes
import fcntl
import os
import select
import socket
import struct
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

from pyroute2.netlink import NLM_F_DUMP, NLM_F_REQUEST, NLMSG_DONE, NLMSG_ERROR

from labkit.errors import LabError
from labkit.net import nlmsg
from labkit.net.netns import NetNS, entered
from labkit.packet import bpf
from labkit.uapi import (
    ETH_P_ALL,
    NETLINK_SOCK_DIAG,
    PACKET_DIAG_INFO,
    PACKET_DIAG_MEMINFO,
    PACKET_DIAG_RX_RING,
    PACKET_FANOUT,
    PACKET_SHOW_INFO,
    PACKET_SHOW_MEMINFO,
    PACKET_SHOW_RING_CFG,
    PACKET_STATISTICS,
    PACKET_VERSION,
    PACKET_VNET_HDR,
    SIOCGSKNS,
    SK_MEMINFO_DROPS,
    SK_MEMINFO_RCVBUF,
    SK_MEMINFO_RMEM_ALLOC,
    SO_RCVBUFFORCE,
    SOCK_DIAG_BY_FAMILY,
    SOL_PACKET,
    SYS_PIDFD_GETFD,
    libc,
)

FANOUT_TYPES = {0: "hash", 1: "lb", 2: "cpu", 3: "rollover", 4: "rnd", 5: "qm", 6: "cbpf", 7: "ebpf"}
FANOUT_FLAGS = {0x1000: "rollover", 0x2000: "uniqueid", 0x4000: "ignore_outgoing", 0x8000: "defrag"}
TPACKET_V1, TPACKET_V2, TPACKET_V3 = 0, 1, 2



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
class Ring:
    """A PACKET_RX_RING as its owner set it up (struct packet_diag_ring)."""

    block_size: int
    block_nr: int
    frame_size: int
    frame_nr: int
    sizeof_priv: int = 0  # TPACKET_V3: bytes each block keeps for its owner before the frames

    def __str__(self) -> str:
        return f"RX ring of {self.frame_nr} frames ({self.block_nr} blocks of {self.block_size} bytes)"


@dataclass(frozen=True)
class Diag:
    """What sock_diag says of one packet socket."""

    inode: int
    ifindex: int
    version: int  # TPACKET_V1..V3
    rx_ring: Ring | None
    rmem_alloc: int  # bytes queued now: the truesize of every frame waiting to be read
    rcvbuf: int
    drops: int  # sk_drops: frames the socket itself refused since it was made


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
    rx_ring: Ring | None = None  # from sock_diag: a PACKET_RX_RING, if the owner maps one
    queued: int | None = None  # from sock_diag: bytes waiting to be read (sk_rmem_alloc)


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


def _describe(dup: socket.socket, inode: int, fd: int, row: dict[str, int] | None, diag: Diag | None) -> PacketSocket:
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
        rx_ring=diag.rx_ring if diag else None,
        queued=diag.rmem_alloc if diag else None,
    )


def packet_sockets(pid: int) -> list[PacketSocket]:
    """The AF_PACKET sockets held by `pid`, with their fanout, vnet header and buffer settings.

    Every socket fd of the process is looked at, not only the rows of its namespace's
    /proc/net/packet: a socket made in another namespace (runsc opens its channels before the
    sandbox moves) is listed there, not here. A duplicate whose inode is not the one listed (the
    fd number was reused meanwhile) is skipped. Ring and queue come from sock_diag, asked once per
    namespace the sockets belong to.
    """
    rows = {r["inode"]: r for r in parse_proc_net_packet(Path(f"/proc/{pid}/net/packet").read_text())}
    diags: dict[int, dict[int, Diag]] = {}  # by the inode of the socket's network namespace
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
                found.append(_describe(sock, inode, fd, rows.get(inode), _diag_of(sock, diags).get(inode)))
    return found


def _diag_of(sock: socket.socket, cache: dict[int, dict[int, Diag]]) -> dict[int, Diag]:
    nsfd = fcntl.ioctl(sock.fileno(), SIOCGSKNS)
    try:
        key = os.fstat(nsfd).st_ino
        if key not in cache:
            cache[key] = packet_diag(nsfd)
        return cache[key]
    finally:
        os.close(nsfd)


_DIAG_REQ = struct.Struct("=IHHIIBBHII8x")  # nlmsghdr + struct packet_diag_req (cookie left 0)
_DIAG_MSG = struct.Struct("=BBHI8x")  # struct packet_diag_msg: family, type, num, inode, cookie
_RTA = struct.Struct("=HH")


def _diag_socket(netns_fd: int) -> socket.socket:
    """A NETLINK_SOCK_DIAG socket in the namespace behind `netns_fd` (a packet_diag dump lists
    the sockets of the namespace its netlink socket lives in)."""
    with entered(netns_fd, "of a packet socket"):
        return socket.socket(socket.AF_NETLINK, socket.SOCK_RAW | socket.SOCK_CLOEXEC, NETLINK_SOCK_DIAG)


def packet_diag(netns_fd: int, timeout: float = 2.0) -> dict[int, Diag]:
    """Every packet socket of the network namespace behind `netns_fd`, by inode, as sock_diag
    reports it: version, RX ring, queued bytes, receive buffer, drops."""
    with _diag_socket(netns_fd) as nl:
        show = PACKET_SHOW_INFO | PACKET_SHOW_RING_CFG | PACKET_SHOW_MEMINFO
        nl.send(_DIAG_REQ.pack(_DIAG_REQ.size, SOCK_DIAG_BY_FAMILY, NLM_F_REQUEST | NLM_F_DUMP, 1, 0, socket.AF_PACKET, 0, 0, 0, show))
        out: dict[int, Diag] = {}
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([nl], [], [], left)[0]:
                raise LabError(f"sock_diag: no end of the packet socket dump within {timeout:g}s")
            for header, msg in nlmsg.split(nl.recv(1 << 16)):
                if header.type == NLMSG_DONE:
                    return out
                if header.type == NLMSG_ERROR:
                    err = -struct.unpack_from("=i", msg, nlmsg.NLMSG_HDR.size)[0]
                    raise LabError(f"sock_diag refused the packet socket dump: {os.strerror(err)}")
                if header.type == SOCK_DIAG_BY_FAMILY:
                    diag = _parse_diag(msg[nlmsg.NLMSG_HDR.size :])
                    out[diag.inode] = diag


def _parse_diag(body: bytes) -> Diag:
    _family, _type, _num, inode = _DIAG_MSG.unpack_from(body)
    ifindex = version = rmem = rcvbuf = drops = 0
    ring = None
    offset = _DIAG_MSG.size
    while offset + _RTA.size <= len(body):
        length, kind = _RTA.unpack_from(body, offset)
        if length < _RTA.size:
            break
        value = body[offset + _RTA.size : offset + length]
        if kind == PACKET_DIAG_INFO:
            ifindex, version = struct.unpack_from("=II", value)
        elif kind == PACKET_DIAG_RX_RING:
            size, blocks, frame_size, frames, _retire_tmo, priv = struct.unpack_from("=6I", value)
            ring = Ring(size, blocks, frame_size, frames, priv)
        elif kind == PACKET_DIAG_MEMINFO:
            mem = struct.unpack_from(f"={len(value) // 4}I", value)
            rmem, rcvbuf, drops = mem[SK_MEMINFO_RMEM_ALLOC], mem[SK_MEMINFO_RCVBUF], mem[SK_MEMINFO_DROPS]
        offset += (length + 3) & ~3
    return Diag(inode, ifindex, version, ring, rmem, rcvbuf, drops)


def socket_diag(sock: socket.socket) -> Diag:
    """sock_diag's view of one socket the caller holds (e.g. one the lab opened)."""
    nsfd = fcntl.ioctl(sock.fileno(), SIOCGSKNS)
    try:
        diags = packet_diag(nsfd)
    finally:
        os.close(nsfd)
    inode = os.fstat(sock.fileno()).st_ino
    if inode not in diags:
        raise LabError(f"sock_diag does not list packet socket inode {inode}")
    return diags[inode]


# -- how many frames a queue holds ------------------------------------------------------------

_V3_BLOCK_HEADER = 48  # ALIGN(sizeof(struct tpacket_block_desc), 8)
_V3_FRAME_HEADER = 96  # TPACKET_ALIGN(TPACKET3_HDRLEN + 16): where the network header starts


def queue_capacity(sock: PacketSocket, frame_len: int, truesize: int) -> tuple[int, str]:
    """How many frames of `frame_len` bytes, each costing `truesize` bytes of receive buffer, the
    kernel queues on `sock` while its owner reads none of them; and what bounds that, in words.

    A socket with an RX ring holds a ring's worth: one frame per slot (TPACKET_V1/V2), or as many
    as fit in the blocks (V3). Without a ring the kernel queues a frame while the bytes already
    queued are below the receive buffer (packet_rcv), so an empty queue takes at least
    rcvbuf // truesize of them.
    """
    ring = sock.rx_ring
    if ring is not None and ring.frame_nr:
        if sock.version == TPACKET_V3:  # a frame goes in while it ends before the block does
            per_frame = (_V3_FRAME_HEADER - 14 + frame_len + 7) & ~7
            per_block = (ring.block_size - _V3_BLOCK_HEADER - ((ring.sizeof_priv + 7) & ~7) - 1) // per_frame
            return ring.block_nr * per_block, (
                f"TPACKET_V3 RX ring of {ring.block_nr} blocks of {ring.block_size} bytes, {per_block} frames of {frame_len} bytes each"
            )
        return ring.frame_nr, str(ring)
    if not sock.rcvbuf:
        raise LabError(f"packet socket inode {sock.inode}: no receive buffer size to size its queue by")
    return sock.rcvbuf // truesize, f"rcvbuf {sock.rcvbuf} / truesize {truesize}"


def truesize_of(
    ns_socket: Callable[[int, int, int], socket.socket],
    ifname: str,
    program: tuple[int, bytes],
    send: Callable[[bytes], object],
    frames: Iterable[bytes],
    timeout: float = 2.0,
) -> list[int]:
    """What each of `frames` costs a packet socket's receive buffer on `ifname` (its skb truesize),
    measured, not guessed: a socket the lab opens there (through `ns_socket`, in the interface's
    namespace, with `program` so that only these frames queue on it) sees each frame sent with
    `send`, and sock_diag says how many bytes it queued before the frame is read away. Each wait
    is for the frame to queue (select), bounded by `timeout`.
    """
    sock = ns_socket(socket.AF_PACKET, socket.SOCK_RAW, 0)
    with sock:
        bpf.attach_raw(sock, *program)
        sock.setsockopt(socket.SOL_SOCKET, SO_RCVBUFFORCE, 1 << 20)
        sock.bind((ifname, ETH_P_ALL))
        sizes: list[int] = []
        for frame in frames:
            send(frame)
            if not select.select([sock], [], [], timeout)[0]:
                raise LabError(
                    f"calibration frame {len(sizes) + 1} never queued on a lab packet socket on {ifname} within {timeout:g}s"
                )
            sizes.append(socket_diag(sock).rmem_alloc)
            sock.recv(1 << 16)
        return sizes



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


# -- the backlog in front of every packet socket of a veth -------------------------------------

BACKLOG_SYSCTL = "/proc/sys/net/core/netdev_max_backlog"


def netdev_max_backlog(ns: NetNS | None = None) -> int:
    """How many frames the kernel queues per CPU between a veth and the packet sockets and stack
    behind it (the input backlog, net.core.netdev_max_backlog).

    Read in `ns` when that namespace shows it; the kernel keeps it global and shows it in the
    initial namespace only, and then the lab's own view (which must be that one) is read. Nothing
    is written.
    """
    if ns is not None:
        with ns.entered():  # /proc/sys/net shows the namespace of the thread that opens it
            try:
                with open(BACKLOG_SYSCTL) as f:
                    return int(f.read())
            except FileNotFoundError:
                pass
    try:
        return int(Path(BACKLOG_SYSCTL).read_text())
    except FileNotFoundError:
        raise LabError(
            f"{BACKLOG_SYSCTL} is shown neither in {ns} nor in the lab's namespace: run the lab in the initial one"
        ) from None


def backlog_drops() -> int:
    """Frames the kernel dropped because a CPU's input backlog was full, summed over the CPUs
    (/proc/net/softnet_stat, second column): a host-wide count, every namespace's."""
    return sum(int(line.split()[1], 16) for line in Path("/proc/net/softnet_stat").read_text().splitlines() if line.strip())
