"""The socket agent: socket calls made inside a stack on the lab's behalf, one JSON line each.

The device-under-test half of a transport check. The lab plays the peer on the Wire frame by
frame; the agent is the application on the stack's side, so a check can make the stack connect,
listen, set an option or read, and see what the stack answers. Standard library only: the same
file runs under the kernel in a namespace and inside gVisor (runsc exec with the host's Python).

    {"id": 1, "op": "socket", "family": "ipv4", "type": "stream"}
    -> {"id": 1, "ok": {"fd": 3}}
    {"id": 2, "op": "connect", "fd": 3, "addr": "198.18.0.1", "port": 9, "timeout": 3}
    -> {"id": 2, "errno": "ECONNREFUSED", "message": "[Errno 111] Connection refused"}

Each answer is the call's result (`ok`) or the errno's name (`errno`), or `error` for a request
the agent cannot understand. Calls that can block take a `timeout` (at most MAX_TIMEOUT s) and
end with the lab's own `TIMEOUT` when it passes, so no request can hang the agent. Requests are
served one at a time, in order. The agent ends when its stdin closes (the lab's lifeline);
`reset` closes every socket it holds, abortively (SO_LINGER 0), so nothing it opened for one
check retransmits into the next.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import select
import signal
import socket
import struct
import sys
from collections.abc import Callable, Iterator
from typing import Any

DEFAULT_TIMEOUT = 3.0
MAX_TIMEOUT = 30.0
MAX_READ = 1 << 20
WRITE_PIECE = 16384

FAMILIES = {"ipv4": socket.AF_INET, "ipv6": socket.AF_INET6, "netlink": socket.AF_NETLINK}
TYPES = {"stream": socket.SOCK_STREAM, "dgram": socket.SOCK_DGRAM, "raw": socket.SOCK_RAW}
PROTOCOLS = {
    "": 0,
    "tcp": socket.IPPROTO_TCP,
    "udp": socket.IPPROTO_UDP,
    "icmp": socket.IPPROTO_ICMP,
    "icmpv6": socket.IPPROTO_ICMPV6,
    "route": 0,  # NETLINK_ROUTE, with family "netlink"
}
SOL_NETLINK = 270

# name -> (level, option, how its value is given): "int", "linger" [onoff, seconds], "tcp_info".
OPTIONS: dict[str, tuple[int, int, str]] = {
    "SO_RCVBUF": (socket.SOL_SOCKET, socket.SO_RCVBUF, "int"),
    "SO_SNDBUF": (socket.SOL_SOCKET, socket.SO_SNDBUF, "int"),
    "SO_RCVBUFFORCE": (socket.SOL_SOCKET, 33, "int"),
    "SO_LINGER": (socket.SOL_SOCKET, socket.SO_LINGER, "linger"),
    "SO_REUSEADDR": (socket.SOL_SOCKET, socket.SO_REUSEADDR, "int"),
    "SO_ERROR": (socket.SOL_SOCKET, socket.SO_ERROR, "int"),
    "SO_KEEPALIVE": (socket.SOL_SOCKET, socket.SO_KEEPALIVE, "int"),
    "TCP_NODELAY": (socket.IPPROTO_TCP, socket.TCP_NODELAY, "int"),
    "TCP_MAXSEG": (socket.IPPROTO_TCP, socket.TCP_MAXSEG, "int"),
    "TCP_CORK": (socket.IPPROTO_TCP, 3, "int"),
    "TCP_SYNCNT": (socket.IPPROTO_TCP, 7, "int"),
    "TCP_LINGER2": (socket.IPPROTO_TCP, 8, "int"),
    "TCP_INFO": (socket.IPPROTO_TCP, 11, "tcp_info"),
    "TCP_QUICKACK": (socket.IPPROTO_TCP, 12, "int"),
    "TCP_USER_TIMEOUT": (socket.IPPROTO_TCP, 18, "int"),
    "IP_TTL": (socket.IPPROTO_IP, socket.IP_TTL, "int"),
    "IP_MTU_DISCOVER": (socket.IPPROTO_IP, 10, "int"),
    "IP_RECVERR": (socket.IPPROTO_IP, 11, "int"),
    "IP_MTU": (socket.IPPROTO_IP, 14, "int"),
    "IPV6_UNICAST_HOPS": (socket.IPPROTO_IPV6, 16, "int"),
    "IPV6_MTU_DISCOVER": (socket.IPPROTO_IPV6, 23, "int"),
    "IPV6_MTU": (socket.IPPROTO_IPV6, 24, "int"),
    "IPV6_RECVERR": (socket.IPPROTO_IPV6, 25, "int"),
    "IPV6_V6ONLY": (socket.IPPROTO_IPV6, 26, "int"),
    # What netlink clients set (iproute2, pyroute2, libnl, sd-netlink, Go's netlink): the
    # options of SOL_SOCKET they use, then SOL_NETLINK's (linux/netlink.h).
    "SO_SNDBUFFORCE": (socket.SOL_SOCKET, 32, "int"),
    "SO_PASSCRED": (socket.SOL_SOCKET, 16, "int"),
    "SO_RCVTIMEO": (socket.SOL_SOCKET, socket.SO_RCVTIMEO, "timeval"),
    "NETLINK_ADD_MEMBERSHIP": (SOL_NETLINK, 1, "int"),
    "NETLINK_DROP_MEMBERSHIP": (SOL_NETLINK, 2, "int"),
    "NETLINK_PKTINFO": (SOL_NETLINK, 3, "int"),
    "NETLINK_BROADCAST_ERROR": (SOL_NETLINK, 4, "int"),
    "NETLINK_NO_ENOBUFS": (SOL_NETLINK, 5, "int"),
    "NETLINK_LISTEN_ALL_NSID": (SOL_NETLINK, 8, "int"),
    "NETLINK_LIST_MEMBERSHIPS": (SOL_NETLINK, 9, "groups"),
    "NETLINK_CAP_ACK": (SOL_NETLINK, 10, "int"),
    "NETLINK_EXT_ACK": (SOL_NETLINK, 11, "int"),
    "NETLINK_GET_STRICT_CHK": (SOL_NETLINK, 12, "int"),
}
TIMEVAL = struct.Struct("=qq")
MSG_FLAGS = {
    "MSG_OOB": socket.MSG_OOB,
    "MSG_PEEK": socket.MSG_PEEK,
    "MSG_DONTWAIT": socket.MSG_DONTWAIT,
    "MSG_WAITALL": socket.MSG_WAITALL,
    "MSG_TRUNC": socket.MSG_TRUNC,
    "MSG_ERRQUEUE": 0x2000,
    "MSG_MORE": 0x8000,
    "MSG_NOSIGNAL": socket.MSG_NOSIGNAL,
}
POLL_EVENTS = {
    "POLLIN": select.POLLIN,
    "POLLPRI": select.POLLPRI,
    "POLLOUT": select.POLLOUT,
    "POLLERR": select.POLLERR,
    "POLLHUP": select.POLLHUP,
    "POLLNVAL": select.POLLNVAL,
    "POLLRDHUP": 0x2000,
}
SHUTDOWN = {"rd": socket.SHUT_RD, "wr": socket.SHUT_WR, "rdwr": socket.SHUT_RDWR}
# struct tcp_info up to tcpi_total_retrans: 8 one-byte fields, then 24 u32s (linux/tcp.h).
TCP_INFO = struct.Struct("=8B24I")
TCP_INFO_FIELDS = (
    "state ca_state retransmits probes backoff options wscale app_limited "
    "rto ato snd_mss rcv_mss unacked sacked lost retrans fackets last_data_sent last_ack_sent "
    "last_data_recv last_ack_recv pmtu rcv_ssthresh rtt rttvar snd_ssthresh snd_cwnd advmss "
    "reordering rcv_rtt rcv_space total_retrans"
).split()
# struct sock_extended_err (linux/errqueue.h), then the offender's sockaddr.
EXTENDED_ERR = struct.Struct("=IBBBBII")
ORIGINS = {0: "none", 1: "local", 2: "icmp", 3: "icmp6"}


class BadRequest(Exception):
    """A request the agent cannot carry out as written (not an errno of the stack's)."""


class TimedOut(Exception):
    """A bounded call whose time ran out."""


class Agent:
    def __init__(self) -> None:
        self.sockets: dict[int, socket.socket] = {}

    # -- helpers -----------------------------------------------------------------------------

    def sock(self, req: dict[str, Any]) -> socket.socket:
        fd = req.get("fd")
        if fd not in self.sockets:
            raise BadRequest(f"unknown fd {fd!r}; open: {sorted(self.sockets)}")
        return self.sockets[fd]

    @staticmethod
    def timeout(req: dict[str, Any]) -> float:
        value = req.get("timeout", DEFAULT_TIMEOUT)
        if not isinstance(value, (int, float)) or not 0 <= value <= MAX_TIMEOUT:
            raise BadRequest(f"bad timeout {value!r}; allowed: 0 to {MAX_TIMEOUT:g} seconds")
        return float(value)

    @staticmethod
    def flags(req: dict[str, Any], key: str = "flags") -> int:
        names = req.get(key, [])
        bad = [n for n in names if n not in MSG_FLAGS]
        if bad:
            raise BadRequest(f"unknown flag {bad[0]!r}; allowed: {', '.join(MSG_FLAGS)}")
        out = 0
        for name in names:
            out |= MSG_FLAGS[name]
        return out

    @staticmethod
    def address(s: socket.socket, req: dict[str, Any]) -> tuple:
        addr, port = req.get("addr", ""), req.get("port", 0)
        if not isinstance(port, int) or not 0 <= port <= 65535:
            raise BadRequest(f"bad port {port!r}; allowed: 0-65535")
        if s.family == socket.AF_INET6:
            return (addr or "::", port, 0, 0)
        return (addr or "0.0.0.0", port)

    @staticmethod
    def peer(addr: Any) -> list[Any] | None:
        """[host, port] of an address, or None where the call gave none (a stream socket's
        recvfrom: b'' from Linux, an empty sockaddr from gVisor after a reset)."""
        if isinstance(addr, tuple) and len(addr) >= 2 and isinstance(addr[0], (str, int)):
            return [addr[0], addr[1]]  # (host, port), or a netlink (port id, groups)
        return None

    @contextlib.contextmanager
    def bounded(self, s: socket.socket, timeout: float) -> Iterator[None]:
        """A blocking call on a blocking socket, ended after `timeout` (TimedOut); a socket the
        check made non-blocking stays so, and answers EAGAIN. (MSG_WAITALL then gives what came
        within the bound.)"""
        if not s.getblocking():
            yield
            return
        s.settimeout(max(timeout, 0.001))  # 0 would make it non-blocking (EAGAIN): a bound of 0 is a look
        try:
            yield
        except TimeoutError as exc:
            if exc.errno is not None:  # the stack's ETIMEDOUT (a connection it gave up), not the bound
                raise
            raise TimedOut(f"nothing within {timeout:g}s") from None
        finally:
            s.setblocking(True)

    def wait(self, s: socket.socket, events: int, timeout: float) -> None:
        """Block until `s` is ready for `events` or raise TimedOut: every blocking call is bounded."""
        poller = select.poll()
        poller.register(s.fileno(), events | select.POLLERR | select.POLLHUP)
        if not poller.poll(int(timeout * 1000)):
            raise TimedOut(f"not ready within {timeout:g}s")

    # -- the calls ---------------------------------------------------------------------------

    def op_socket(self, req: dict[str, Any]) -> dict[str, Any]:
        for key, table in (("family", FAMILIES), ("type", TYPES), ("protocol", PROTOCOLS)):
            if req.get(key, "") not in table:
                raise BadRequest(f"bad {key} {req.get(key)!r}; allowed: {', '.join(k for k in table if k)}")
        s = socket.socket(FAMILIES[req["family"]], TYPES[req["type"]], PROTOCOLS[req.get("protocol", "")])
        self.sockets[s.fileno()] = s
        return {"fd": s.fileno()}

    def op_bind(self, req: dict[str, Any]) -> dict[str, Any]:
        """bind(2) to an address and port, or for a netlink socket to a port id (`pid`, 0: the
        kernel picks) and multicast `groups` (a bit mask)."""
        s = self.sock(req)
        if s.family == socket.AF_NETLINK:
            s.bind((int(req.get("pid", 0)), int(req.get("groups", 0))))
        else:
            s.bind(self.address(s, req))
        return {"name": self.peer(s.getsockname())}

    def op_listen(self, req: dict[str, Any]) -> dict[str, Any]:
        self.sock(req).listen(int(req.get("backlog", 16)))
        return {}

    def op_accept(self, req: dict[str, Any]) -> dict[str, Any]:
        s = self.sock(req)
        with self.bounded(s, self.timeout(req)):
            conn, addr = s.accept()
        conn.setblocking(True)
        self.sockets[conn.fileno()] = conn
        return {"fd": conn.fileno(), "peer": self.peer(addr)}

    def op_connect(self, req: dict[str, Any]) -> dict[str, Any]:
        """Blocking (bounded by `timeout`) unless the socket is non-blocking: then the errno of
        connect(2) itself (EINPROGRESS for TCP) is the answer."""
        s = self.sock(req)
        target = self.address(s, req)
        if not s.getblocking():
            code = s.connect_ex(target)
            if code:
                raise OSError(code, os.strerror(code))
            return {}
        s.setblocking(False)
        try:
            code = s.connect_ex(target)
            if code == errno.EINPROGRESS:
                self.wait(s, select.POLLOUT, self.timeout(req))
                code = s.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
            if code:
                raise OSError(code, os.strerror(code))
        finally:
            s.setblocking(True)
        return {"name": self.peer(s.getsockname())}

    def op_setblocking(self, req: dict[str, Any]) -> dict[str, Any]:
        self.sock(req).setblocking(bool(req.get("blocking", True)))
        return {}

    def _option(self, req: dict[str, Any]) -> tuple[int, int, str]:
        name = req.get("name")
        if name not in OPTIONS:
            raise BadRequest(f"unknown option {name!r}; allowed: {', '.join(OPTIONS)}")
        return OPTIONS[name]

    def op_setsockopt(self, req: dict[str, Any]) -> dict[str, Any]:
        level, opt, kind = self._option(req)
        value = req.get("value")
        if kind == "linger":
            if not (isinstance(value, list) and len(value) == 2):
                raise BadRequest(f"bad SO_LINGER value {value!r}; allowed: [onoff, seconds]")
            self.sock(req).setsockopt(level, opt, struct.pack("ii", int(value[0]), int(value[1])))
        elif kind == "int" and isinstance(value, int):
            self.sock(req).setsockopt(level, opt, value)
        elif kind == "timeval" and isinstance(value, (int, float)):
            self.sock(req).setsockopt(level, opt, TIMEVAL.pack(int(value), int(value % 1 * 1_000_000)))
        else:
            raise BadRequest(f"bad value {value!r} for {req['name']}; allowed: an integer")
        return {}

    def op_getsockopt(self, req: dict[str, Any]) -> dict[str, Any]:
        level, opt, kind = self._option(req)
        s = self.sock(req)
        if kind == "int":
            return {"value": s.getsockopt(level, opt)}
        if kind == "linger":
            return {"value": list(struct.unpack("ii", s.getsockopt(level, opt, 8)))}
        if kind == "timeval":
            seconds, micros = TIMEVAL.unpack(s.getsockopt(level, opt, TIMEVAL.size))
            return {"value": seconds + micros / 1_000_000}
        if kind == "groups":  # a bit map of u32s: the groups the socket is a member of
            raw = s.getsockopt(level, opt, 16)
            words = struct.unpack(f"={len(raw) // 4}I", raw[: len(raw) // 4 * 4])
            return {"value": [32 * i + bit + 1 for i, word in enumerate(words) for bit in range(32) if word >> bit & 1]}
        raw = s.getsockopt(level, opt, TCP_INFO.size)
        raw = raw.ljust(TCP_INFO.size, b"\0")
        info = dict(zip(TCP_INFO_FIELDS, TCP_INFO.unpack(raw), strict=True))
        info["snd_wscale"], info["rcv_wscale"] = info["wscale"] & 0xF, info.pop("wscale") >> 4
        info["length"] = len(raw)
        return {"value": info}

    def op_send(self, req: dict[str, Any]) -> dict[str, Any]:
        """send/sendto of `data`, or of each of `pieces` in turn (writes back to back, with no
        round trip to the lab between them: what a check of segment timing needs)."""
        s = self.sock(req)
        pieces = req["pieces"] if "pieces" in req else [req.get("data", "")]
        flags = self.flags(req)
        target = self.address(s, req) if "addr" in req else None
        sent = []
        for piece in pieces:
            data, how = bytes.fromhex(piece), flags
            if s.getblocking() and not how & socket.MSG_DONTWAIT:
                self.wait(s, select.POLLOUT, self.timeout(req))
                how |= socket.MSG_DONTWAIT  # never more than the buffer takes now: bounded
            sent.append(s.sendto(data, how, target) if target else s.send(data, how))
        return {"sent": sent[0] if "pieces" not in req else sent}

    def op_recv(self, req: dict[str, Any]) -> dict[str, Any]:
        """recvfrom, or recvmsg of the error queue with MSG_ERRQUEUE (the extended error decoded)."""
        s = self.sock(req)
        size = req.get("size", 65536)
        if not isinstance(size, int) or not 0 <= size <= MAX_READ:
            raise BadRequest(f"bad size {size!r}; allowed: 0-{MAX_READ}")
        flags = self.flags(req)
        if flags & MSG_FLAGS["MSG_ERRQUEUE"]:
            return self._error_queue(s, size, flags)
        if s.family == socket.AF_NETLINK:
            if flags & socket.MSG_DONTWAIT:
                return self._datagram(s, size, flags)
            with self.bounded(s, self.timeout(req)):
                return self._datagram(s, size, flags)
        if flags & socket.MSG_DONTWAIT:  # the check asks for EAGAIN rather than a wait
            data, addr = s.recvfrom(size, flags)
        else:
            with self.bounded(s, self.timeout(req)):
                data, addr = s.recvfrom(size, flags)
        return {"data": data.hex(), "len": len(data), "peer": self.peer(addr)}

    def _datagram(self, s: socket.socket, size: int, flags: int) -> dict[str, Any]:
        """recvmsg(2) into a buffer of `size` bytes: `len` is what the call returned (with
        MSG_TRUNC, the datagram's real length), `msg_flags` says whether it was cut, and the
        control messages come as [level, type, hex] (NETLINK_PKTINFO's group, credentials)."""
        buffer = bytearray(size)
        returned, ancillary, msg_flags, addr = s.recvmsg_into([buffer], 1024, flags)
        return {
            "data": bytes(buffer[: min(returned, size)]).hex(),
            "len": returned,
            "msg_flags": [n for n, bit in MSG_FLAGS.items() if msg_flags & bit] + (["MSG_CTRUNC"] if msg_flags & 8 else []),
            "ancillary": [[level, kind, blob.hex()] for level, kind, blob in ancillary],
            "peer": self.peer(addr),
        }

    def _error_queue(self, s: socket.socket, size: int, flags: int) -> dict[str, Any]:
        data, ancillary, msg_flags, _addr = s.recvmsg(size, 512, flags | socket.MSG_DONTWAIT)
        errors = []
        for level, kind, blob in ancillary:
            if (level, kind) not in ((socket.IPPROTO_IP, 11), (socket.IPPROTO_IPV6, 25)):
                continue
            ee_errno, origin, ee_type, code, _pad, info, _data = EXTENDED_ERR.unpack_from(blob)
            offender = blob[EXTENDED_ERR.size :]
            errors.append(
                {
                    "errno": errno.errorcode.get(ee_errno, str(ee_errno)),
                    "origin": ORIGINS.get(origin, str(origin)),
                    "type": ee_type,
                    "code": code,
                    "info": info,
                    "offender": _sockaddr(offender),
                }
            )
        return {"data": data.hex(), "len": len(data), "errors": errors, "msg_flags": msg_flags}

    def op_poll(self, req: dict[str, Any]) -> dict[str, Any]:
        s = self.sock(req)
        names = req.get("events", ["POLLIN"])
        bad = [n for n in names if n not in POLL_EVENTS]
        if bad:
            raise BadRequest(f"unknown poll event {bad[0]!r}; allowed: {', '.join(POLL_EVENTS)}")
        mask = 0
        for name in names:
            mask |= POLL_EVENTS[name]
        poller = select.poll()
        poller.register(s.fileno(), mask)
        got = poller.poll(int(self.timeout(req) * 1000))
        revents = got[0][1] if got else 0
        return {"events": [n for n, bit in POLL_EVENTS.items() if revents & bit]}

    def op_shutdown(self, req: dict[str, Any]) -> dict[str, Any]:
        how = req.get("how", "wr")
        if how not in SHUTDOWN:
            raise BadRequest(f"bad shutdown {how!r}; allowed: {', '.join(SHUTDOWN)}")
        self.sock(req).shutdown(SHUTDOWN[how])
        return {}

    def op_getsockname(self, req: dict[str, Any]) -> dict[str, Any]:
        return {"name": self.peer(self.sock(req).getsockname())}

    def op_getpeername(self, req: dict[str, Any]) -> dict[str, Any]:
        return {"name": self.peer(self.sock(req).getpeername())}

    def op_close(self, req: dict[str, Any]) -> dict[str, Any]:
        s = self.sock(req)
        del self.sockets[s.fileno()]
        s.close()
        return {}

    def op_reset(self, req: dict[str, Any]) -> dict[str, Any]:
        """Close every socket, each with SO_LINGER 0: a connection ends with a RST at once."""
        closed = sorted(self.sockets)
        for s in self.sockets.values():
            try:
                if s.type == socket.SOCK_STREAM:
                    s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            except OSError:
                pass
            s.close()
        self.sockets.clear()
        return {"closed": closed}

    # -- the loop ----------------------------------------------------------------------------

    def handle(self, line: str) -> dict[str, Any]:
        try:
            req = json.loads(line)
            if not isinstance(req, dict):
                raise ValueError("not an object")
        except ValueError as exc:
            return {"id": None, "error": f"bad request {line.strip()[:80]!r}: {exc}; allowed: one JSON object per line"}
        rid = req.get("id")
        op: Callable[[dict[str, Any]], dict[str, Any]] | None = getattr(self, f"op_{req.get('op')}", None)
        if op is None:
            allowed = ", ".join(n[3:] for n in dir(self) if n.startswith("op_"))
            return {"id": rid, "error": f"unknown op {req.get('op')!r}; allowed: {allowed}"}
        try:
            return {"id": rid, "ok": op(req)}
        except BadRequest as exc:
            return {"id": rid, "error": str(exc)}
        except TimedOut as exc:
            return {"id": rid, "errno": "TIMEOUT", "message": str(exc)}
        except OSError as exc:
            name = errno.errorcode.get(exc.errno, str(exc.errno)) if exc.errno else type(exc).__name__
            return {"id": rid, "errno": name, "message": str(exc)}
        except (KeyError, TypeError, ValueError) as exc:
            return {"id": rid, "error": f"bad request for {req.get('op')}: {exc!r}"}


def _sockaddr(raw: bytes) -> str | None:
    if len(raw) >= 8 and struct.unpack_from("=H", raw)[0] == socket.AF_INET:
        return socket.inet_ntop(socket.AF_INET, raw[4:8])
    if len(raw) >= 24 and struct.unpack_from("=H", raw)[0] == socket.AF_INET6:
        return socket.inet_ntop(socket.AF_INET6, raw[8:24])
    return None


def main() -> None:
    signal.signal(signal.SIGINT, signal.SIG_DFL)  # the run's Ctrl-C ends the agent quietly
    agent = Agent()
    out = sys.stdout
    out.write(json.dumps({"event": "ready", "pid": os.getpid()}) + "\n")
    out.flush()
    for line in sys.stdin:
        if line.strip():
            answer(out, json.dumps(agent.handle(line)) + "\n")


def answer(out: Any, text: str) -> None:
    """Write an answer in pieces: a single large write to the lab's pipe from inside gVisor
    (runsc 20221219, ptrace) was seen to stall for seconds where 16 KiB pieces flow at once."""
    for start in range(0, len(text), WRITE_PIECE):
        out.write(text[start : start + WRITE_PIECE])
        out.flush()


if __name__ == "__main__":
    main()
