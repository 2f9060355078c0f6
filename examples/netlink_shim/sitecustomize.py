"""A NETLINK_ROUTE emulation broken on purpose, for the rtnetlink mutants in examples.mutants.

A sandboxed stack answers rtnetlink itself, so its faults show up in what a program inside sees
on its netlink socket. This file is put first on PYTHONPATH of the programs a mutant Linux runs
(the probe, the socket agent, pyroute2 clients), where Python imports it at start-up; it
replaces `socket.socket` with a class whose AF_NETLINK sockets misbehave as LABKIT_NETLINK_FAULT
says, one fault per mutant:

    groupless           bind with groups and NETLINK_ADD_MEMBERSHIP are refused (EPERM)
    option:NAME         setsockopt and getsockopt of SOL_NETLINK option NAME fail (ENOPROTOOPT)
    type:N              a request of message type N is refused at send (EOPNOTSUPP)
    drop-attr:T:A       attribute A is cut out of every message of type T that is read
    lossy-dump          the last message of every multi-part datagram that is read is lost
    short-error         an error quotes only the request's header, without saying so (NLM_F_CAPPED)

Every other socket, and every other program, is the kernel's as it is. Messages are split with
labkit's own splitter (labkit.net.nlmsg, standard library only): the mutant's programs run with
labkit on their PYTHONPATH.
"""

from __future__ import annotations

import errno
import os
import socket
import struct

from labkit.net.nlmsg import NLMSG_HDR, align, split

FAULT = os.environ.get("LABKIT_NETLINK_FAULT", "")
SOL_NETLINK = 270
OPTIONS = {
    "NETLINK_ADD_MEMBERSHIP": 1,
    "NETLINK_PKTINFO": 3,
    "NETLINK_EXT_ACK": 11,
    "NETLINK_GET_STRICT_CHK": 12,
    "NETLINK_CAP_ACK": 10,
}
NLM_F_MULTI = 0x2
FIXED = {16: 16, 17: 16, 18: 16, 19: 16, 20: 8, 21: 8, 22: 8, 24: 12, 25: 12, 26: 12, 28: 12, 29: 12, 30: 12}  # body before attrs


def _with_length(message: bytes, body: bytes) -> bytes:
    """`message`'s header over a new body, its length saying so."""
    _, kind, flags, seq, pid = NLMSG_HDR.unpack_from(message)
    return NLMSG_HDR.pack(NLMSG_HDR.size + len(body), kind, flags, seq, pid) + body


def _without_attribute(message: bytes, type_: int, attr: int) -> bytes:
    length, kind = NLMSG_HDR.unpack_from(message)[:2]
    if kind != type_ or length != len(message):
        return message
    start = NLMSG_HDR.size + FIXED.get(kind, 0)
    kept, offset = [message[NLMSG_HDR.size : start]], start
    while offset + 4 <= len(message):
        size, number = struct.unpack_from("=HH", message, offset)
        if size < 4:
            return message
        if number & 0x3FFF != attr:
            kept.append(message[offset : offset + align(size)])
        offset += align(size)
    return _with_length(message, b"".join(kept))


def _short_error(message: bytes) -> bytes:
    """An NLMSG_ERROR cut after the quoted request's header, NLM_F_CAPPED not set."""
    cut = NLMSG_HDR.size + 4 + NLMSG_HDR.size  # header, error code, the request's header
    if NLMSG_HDR.unpack_from(message)[1] != 2 or len(message) <= cut:
        return message
    return _with_length(message, message[NLMSG_HDR.size : cut])


def _broken(data: bytes) -> bytes:
    messages = [chunk for _, chunk in split(data)]
    if FAULT.startswith("drop-attr:"):
        _, type_, attr = FAULT.split(":")
        messages = [_without_attribute(m, int(type_), int(attr)) for m in messages]
    elif FAULT == "short-error":
        messages = [_short_error(m) for m in messages]
    elif FAULT == "lossy-dump":
        multi = [m for h, m in split(data) if h.flags & NLM_F_MULTI and h.type > 3]  # not NOOP, ERROR or DONE
        if len(multi) > 1:
            messages.remove(multi[-1])
    else:
        return data
    return b"".join(m.ljust(align(len(m)), b"\0") for m in messages)


class FaultySocket(socket.socket):
    def _netlink(self) -> bool:
        return self.family == socket.AF_NETLINK

    def bind(self, address):  # type: ignore[no-untyped-def]
        if self._netlink() and FAULT == "groupless" and isinstance(address, tuple) and len(address) > 1 and address[1]:
            raise PermissionError(errno.EPERM, os.strerror(errno.EPERM))
        return super().bind(address)

    def _refused_option(self, level: int, option: int) -> bool:
        if not self._netlink() or level != SOL_NETLINK:
            return False
        if FAULT == "groupless":
            return option == OPTIONS["NETLINK_ADD_MEMBERSHIP"]
        return FAULT.startswith("option:") and OPTIONS.get(FAULT.split(":", 1)[1]) == option

    def setsockopt(self, level, option, value, *rest):  # type: ignore[no-untyped-def]
        if self._refused_option(level, option):
            code = errno.EPERM if FAULT == "groupless" else errno.ENOPROTOOPT
            raise OSError(code, os.strerror(code))
        return super().setsockopt(level, option, value, *rest)

    def getsockopt(self, level, option, *rest):  # type: ignore[no-untyped-def]
        if self._refused_option(level, option) and FAULT != "groupless":
            raise OSError(errno.ENOPROTOOPT, os.strerror(errno.ENOPROTOOPT))
        return super().getsockopt(level, option, *rest)

    def _refused_send(self, data) -> bool:  # type: ignore[no-untyped-def]
        return (
            self._netlink()
            and FAULT.startswith("type:")
            and len(data) >= 6
            and struct.unpack_from("=H", data, 4)[0] == int(FAULT[5:])
        )

    def send(self, data, *rest):  # type: ignore[no-untyped-def]
        if self._refused_send(data):
            raise OSError(errno.EOPNOTSUPP, os.strerror(errno.EOPNOTSUPP))
        return super().send(data, *rest)

    def sendto(self, data, *rest):  # type: ignore[no-untyped-def]
        if self._refused_send(data):
            raise OSError(errno.EOPNOTSUPP, os.strerror(errno.EOPNOTSUPP))
        return super().sendto(data, *rest)

    def recv(self, size, *rest):  # type: ignore[no-untyped-def]
        data = super().recv(size, *rest)
        return _broken(data) if self._netlink() else data

    def recvfrom(self, size, *rest):  # type: ignore[no-untyped-def]
        data, address = super().recvfrom(size, *rest)
        return (_broken(data) if self._netlink() else data), address

    def recv_into(self, buffer, nbytes=0, *rest):  # type: ignore[no-untyped-def]
        if not self._netlink():
            return super().recv_into(buffer, nbytes, *rest)
        data = self.recv(nbytes or len(buffer), *rest)
        buffer[: len(data)] = data
        return len(data)

    def recvmsg_into(self, buffers, *rest):  # type: ignore[no-untyped-def]
        returned, ancillary, flags, address = super().recvmsg_into(buffers, *rest)
        if self._netlink() and buffers and returned <= len(buffers[0]):
            data = _broken(bytes(buffers[0][:returned]))
            buffers[0][: len(data)] = data
            returned = len(data)
        return returned, ancillary, flags, address


if FAULT:
    socket.socket = FaultySocket  # type: ignore[misc]
