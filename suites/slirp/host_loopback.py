"""The host-loopback check of the slirp suite, as a function that tests/ also runs against a
slirp4netns that is dead or deaf, to show that the check then fails.

A failed connect proves nothing by itself: when slirp4netns is gone, its tap and the routes
through it are gone too, and the connect fails with the same "network unreachable"; when it
hangs, the connect times out. So the check wants slirp4netns's own refusal (libslirp answers
the SYN with an ICMP destination unreachable from the gateway, which the socket's error queue
shows), slirp4netns still running after it, and, in the same run, a connection that must work
(a port forward from the host's loopback to the guest) working.

"The host" is the lab host namespace slirp4netns runs in: the service the guest must not reach
listens on its 127.0.0.1, and the control's client connects from there.
"""

from __future__ import annotations

import errno
import socket
import struct
from dataclasses import dataclass

from labkit.net.netns import NetNS
from labkit.stacks.slirp4netns import Slirp4netns

from .conftest import carried, free_port

IP_RECVERR = 11  # <linux/in.h>: queue ICMP errors on the socket, with who sent them
SO_EE_ORIGIN_ICMP = 2
ICMP_DEST_UNREACH = 3


@dataclass(frozen=True)
class Attempt:
    outcome: str  # "connected", or the exception
    errno: int | None = None
    icmp: tuple[int, int, str] | None = None  # (type, code, sender) of the ICMP error that ended it

    def __str__(self) -> str:
        if self.icmp is None:
            return f"{self.outcome} (no ICMP error came back)"
        return f"{self.outcome} (ICMP type {self.icmp[0]} code {self.icmp[1]} from {self.icmp[2]})"


def connect(netns: NetNS, address: str, port: int, timeout: float = 3.0) -> Attempt:
    """A TCP connect from inside `netns`, and the ICMP error that ended it, if one did."""
    with netns.entered():
        client = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    with client:
        client.setsockopt(socket.SOL_IP, IP_RECVERR, 1)
        client.settimeout(timeout)
        try:
            client.connect((address, port))
            return Attempt("connected")
        except OSError as exc:
            failure = exc
        return Attempt(f"{type(failure).__name__}: {failure}", failure.errno, _icmp_error(client))


def _icmp_error(sock: socket.socket) -> tuple[int, int, str] | None:
    try:
        _, ancillary, _, _ = sock.recvmsg(1, 512, socket.MSG_ERRQUEUE | socket.MSG_DONTWAIT)
    except OSError:
        return None  # nothing queued: the error did not come from the network
    for level, kind, data in ancillary:
        if level == socket.SOL_IP and kind == IP_RECVERR and len(data) >= 24:
            # struct sock_extended_err (16 bytes), then the offender's sockaddr_in
            _, origin, icmp_type, icmp_code = struct.unpack_from("=IBBB", data)
            if origin == SO_EE_ORIGIN_ICMP:
                return icmp_type, icmp_code, socket.inet_ntoa(data[20:24])
    return None


def assert_host_loopback_blocked(netns: NetNS, slirp: Slirp4netns, gateway: str, timeout: float = 3.0) -> None:
    """The guest cannot reach the host namespace's 127.0.0.1 through the gateway, because slirp4netns
    refuses it: not because slirp4netns is dead or deaf."""
    with slirp.host.socket(socket.AF_INET, socket.SOCK_STREAM) as host_service:
        host_service.bind(("127.0.0.1", 0))
        host_service.listen(1)
        port = host_service.getsockname()[1]
        attempt = connect(netns, gateway, port, timeout)
    assert attempt.outcome != "connected", f"host loopback is blocked by default, yet the gateway reached 127.0.0.1:{port}"
    assert slirp.running(), f"slirp4netns is not running after the attempt ({attempt}): its log: {slirp.log_tail()}"
    # libslirp 4.7 answers the SYN with an ICMP destination unreachable (net); a reset would do as
    # well, since only libslirp is on the far side of the tap. A missing tap gives the same errno
    # with no ICMP error behind it, and a stopped slirp4netns a timeout.
    from_gateway = attempt.icmp is not None and attempt.icmp[::2] == (ICMP_DEST_UNREACH, gateway)
    refused = (attempt.errno == errno.ENETUNREACH and from_gateway) or attempt.errno == errno.ECONNREFUSED
    assert refused, (
        f"slirp4netns did not refuse {gateway}:{port} itself: want an ICMP destination unreachable from the gateway "
        f"{gateway} (or a reset), got {attempt}"
    )
    assert _forward_works(netns, slirp, timeout), "slirp4netns does not carry a port forward in the same run: it is not serving"


def _forward_works(netns: NetNS, slirp: Slirp4netns, timeout: float) -> bool:
    """The control: the host namespace's 127.0.0.1 -> guest through an API port forward, which must work."""
    with netns.entered():
        inside = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    with inside:
        inside.bind(("0.0.0.0", 0))
        inside.listen(1)
        host_port = free_port(slirp.host, socket.SOCK_STREAM)
        forward = slirp.api.add_hostfwd("tcp", "127.0.0.1", host_port, inside.getsockname()[1])
        try:
            return carried(slirp.host, "tcp", host_port, inside, timeout)
        finally:
            slirp.api.remove_hostfwd(forward)
