"""The libc handle and the Linux constants the lab uses, each defined once.

Python's `socket` module lacks most AF_PACKET options, and `os` has no setns(2) or mount(2), so
the lab calls libc through ctypes and names the kernel's numbers here, as <linux/*.h> does.
Netlink and rtnetlink numbers come from pyroute2 instead; this module needs only the standard
library, so programs that run inside a sandbox may import it.
"""

from __future__ import annotations

import ctypes
import os

libc = ctypes.CDLL(None, use_errno=True)


def check(rc: int, what: str) -> None:
    """Raise OSError naming `what` when a libc call returned non-zero (errno from the call)."""
    if rc != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"{what}: {os.strerror(err)}")


# <linux/sched.h>: namespaces
CLONE_NEWNS = 0x00020000
CLONE_NEWNET = 0x40000000

# <linux/mount.h>
MS_BIND = 0x1000
MS_REC = 0x4000
MS_PRIVATE = 1 << 18
MS_SHARED = 1 << 20
MNT_DETACH = 2

# <linux/if_ether.h>
ETH_P_ALL = 0x0003

# <asm-generic/socket.h>
SO_ATTACH_FILTER = 26
SO_RCVBUFFORCE = 33
SO_TIMESTAMPNS = 35

# <linux/if_packet.h>
SOL_PACKET = 263
PACKET_OUTGOING = 4  # sll_pkttype of a frame this host sent
PACKET_STATISTICS = 6
PACKET_AUXDATA = 8
PACKET_VERSION = 10
PACKET_VNET_HDR = 15
PACKET_FANOUT = 18
PACKET_VNET_HDR_SZ = 24
PACKET_FANOUT_HASH = 0
PACKET_FANOUT_LB = 1
PACKET_FANOUT_FLAG_DEFRAG = 0x8000

# <linux/sock_diag.h>, <linux/packet_diag.h>, <linux/sockios.h>: what the kernel says of a packet socket
NETLINK_SOCK_DIAG = 4
SOCK_DIAG_BY_FAMILY = 20
PACKET_SHOW_INFO = 0x01
PACKET_SHOW_RING_CFG = 0x04
PACKET_SHOW_MEMINFO = 0x10
PACKET_DIAG_INFO = 0  # the attribute types of a packet_diag_msg (this enum has no NONE)
PACKET_DIAG_RX_RING = 2
PACKET_DIAG_MEMINFO = 6
SK_MEMINFO_RMEM_ALLOC = 0
SK_MEMINFO_RCVBUF = 1
SK_MEMINFO_DROPS = 8
SIOCGSKNS = 0x894C  # an fd on the network namespace a socket belongs to

# <asm/unistd_64.h> (the same number on every architecture since the unified syscall table)
SYS_PIDFD_GETFD = 438

# <linux/sockios.h>, <linux/ethtool.h>
SIOCETHTOOL = 0x8946
ETHTOOL_GTXCSUM = 0x16
ETHTOOL_STXCSUM = 0x17
ETHTOOL_STSO = 0x1F

# <linux/capability.h>
CAP_NET_ADMIN = 12
LINUX_CAPABILITY_VERSION_3 = 0x20080522
