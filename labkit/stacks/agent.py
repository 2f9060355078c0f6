"""The lab's handle on the socket agent (`labkit.agent`) running inside a stack.

A check holds `AgentSocket`s that read like the calls they make:

    listener = agent.socket("ipv4", "stream")
    listener.bind(port=0)
    listener.listen(4)
    port = listener.port
    ...                                    # the Wire connects with the testbench
    conn = listener.accept()
    assert conn.recv(5) == b"hello"

A call the stack refuses raises `SocketCallError` carrying the errno's name (`exc.errno ==
"ECONNREFUSED"`). A call that would block while the check must play the other side on the Wire
(a blocking connect, a recv of data not sent yet) is started with `begin_*` and finished later
with `Pending.result()`: the agent serves requests in order, so one is in flight at a time.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence
from typing import Any

from labkit.errors import ExpectTimeout, LabError
from labkit.lifecycle.process import LabProcess

READY_TIMEOUT = 60.0  # Python under runsc's ptrace platform takes seconds to start on a busy machine
SLACK = 5.0  # the answer's own way back, on top of the call's bound inside


class SocketCallError(AssertionError):
    """The stack answered a socket call with an errno (or the agent's bound ran out: TIMEOUT).

    An AssertionError: a call a check expected to work failing is the stack's verdict."""

    def __init__(self, op: str, errno: str, message: str) -> None:
        super().__init__(f"{op}: {errno} ({message})")
        self.op, self.errno, self.message = op, errno, message


class Pending:
    """A call sent to the agent whose answer the check collects later."""

    def __init__(self, agent: SocketAgent, rid: int, op: str, bound: float) -> None:
        self.agent, self.rid, self.op, self.bound = agent, rid, op, bound
        self._answer: dict[str, Any] | None = None

    def collect(self) -> dict[str, Any]:
        """The agent's answer as it came, read now if it has not been (once: answers come in order)."""
        if self._answer is None:
            self._answer = self.agent._answer(self.rid, self.op, self.bound)
        return self._answer

    def result(self) -> dict[str, Any]:
        return self.agent._unwrap(self.op, self.collect())

    def errno(self) -> str | None:
        """The errno's name the call ended with (None: it succeeded)."""
        try:
            self.result()
        except SocketCallError as exc:
            return exc.errno
        return None


class SocketAgent:
    """One running agent; its sockets are closed by `reset` (the pool calls it between checks)."""

    def __init__(self, process: LabProcess, where: str) -> None:
        self.process, self.where = process, where
        self._next_id = 0
        self._in_flight: Pending | None = None
        try:
            line = process.read_line(READY_TIMEOUT)
        except ExpectTimeout:
            process.close()
            raise LabError(f"the socket agent in {where} did not start within {READY_TIMEOUT:g}s") from None
        if line is None or '"ready"' not in line:
            process.close()
            raise LabError(f"the socket agent in {where} failed to start: {line!r}")
        self.pid: int = json.loads(line)["pid"]  # as the stack sees it (runsc ps inside gVisor)

    @classmethod
    def start(cls, stack: Any) -> SocketAgent:
        """Spawn the agent inside `stack` (through its driver) and wait until it answers."""
        return cls(stack.spawn([sys.executable, "-m", "labkit.agent"]), stack.id)

    # -- the protocol ------------------------------------------------------------------------

    def begin(self, op: str, **args: Any) -> Pending:
        if self._in_flight is not None:
            self._in_flight.collect()  # its answer comes first; its outcome stays with its Pending
        self._next_id += 1
        request = {"id": self._next_id, "op": op, **{k: v for k, v in args.items() if v is not None}}
        stdin = self.process.popen.stdin
        if stdin is None or stdin.closed:
            raise LabError(f"the socket agent in {self.where} is closed")
        try:
            stdin.write((json.dumps(request) + "\n").encode())
            stdin.flush()
        except BrokenPipeError:
            raise LabError(f"the socket agent in {self.where} exited (code {self.process.popen.poll()})") from None
        bound = float(args.get("timeout") or 3.0) + SLACK
        self._in_flight = Pending(self, self._next_id, op, bound)
        return self._in_flight

    def call(self, op: str, **args: Any) -> dict[str, Any]:
        return self.begin(op, **args).result()

    def _answer(self, rid: int, op: str, bound: float) -> dict[str, Any]:
        try:
            line = self.process.read_line(bound)
        except ExpectTimeout:
            raise LabError(f"the socket agent in {self.where} did not answer {op} within {bound:g}s") from None
        if line is None:
            raise LabError(f"the socket agent in {self.where} exited (code {self.process.popen.poll()}) during {op}")
        answer = json.loads(line)
        if answer.get("id") != rid:
            raise LabError(f"the socket agent in {self.where} answered request {answer.get('id')} when {rid} ({op}) was due")
        return answer

    @staticmethod
    def _unwrap(op: str, answer: dict[str, Any]) -> dict[str, Any]:
        if "error" in answer:
            raise LabError(f"the socket agent refused {op}: {answer['error']}")
        if "errno" in answer:
            raise SocketCallError(op, answer["errno"], answer.get("message", ""))
        return answer["ok"]

    # -- what checks use ---------------------------------------------------------------------

    def socket(self, family: str, type: str = "stream", protocol: str = "") -> AgentSocket:
        """A new socket inside the stack: family "ipv4"/"ipv6", type "stream"/"dgram"/"raw"; or
        family "netlink", type "raw", protocol "route" (NETLINK_ROUTE)."""
        fd = self.call("socket", family=family, type=type, protocol=protocol)["fd"]
        return AgentSocket(self, fd, family)

    def listener(self, family: str, port: int = 0, backlog: int = 16, **options: int) -> AgentSocket:
        """A TCP socket bound to `port` (0: any) on every address of the family, listening;
        `options` are set before bind (SO_RCVBUF=..., IPV6_V6ONLY=1)."""
        sock = self.socket(family, "stream")
        for name, value in options.items():
            sock.setsockopt(name, value)
        sock.bind(port=port)
        sock.listen(backlog)
        return sock

    def reset(self) -> list[int]:
        """Close every socket the agent holds, abortively; the fds it closed."""
        return list(self.call("reset")["closed"])

    def close(self) -> None:
        self.process.close()

    @property
    def running(self) -> bool:
        return self.process.running()


class AgentSocket:
    """One socket inside the stack, by its fd in the agent."""

    def __init__(self, agent: SocketAgent, fd: int, family: str) -> None:
        self.agent, self.fd, self.family = agent, fd, family

    def __repr__(self) -> str:
        return f"<AgentSocket fd={self.fd} {self.family} in {self.agent.where}>"

    def _call(self, op: str, **args: Any) -> dict[str, Any]:
        return self.agent.call(op, fd=self.fd, **args)

    def _begin(self, op: str, **args: Any) -> Pending:
        return self.agent.begin(op, fd=self.fd, **args)

    def bind(self, addr: str = "", port: int = 0) -> tuple[str, int]:
        return tuple(self._call("bind", addr=addr, port=port)["name"])

    def bind_netlink(self, pid: int = 0, groups: int = 0) -> tuple[int, int]:
        """A netlink socket's bind(2): port id `pid` (0: the stack picks), multicast `groups`
        (bit mask); (port id, groups) as getsockname then gives them."""
        port, bound = self._call("bind", pid=pid, groups=groups)["name"]
        return int(port), int(bound)

    def listen(self, backlog: int = 16) -> None:
        self._call("listen", backlog=backlog)

    @property
    def port(self) -> int:
        return int(self.getsockname()[1])

    def getsockname(self) -> tuple[str, int]:
        return tuple(self._call("getsockname")["name"])

    def getpeername(self) -> tuple[str, int]:
        return tuple(self._call("getpeername")["name"])

    def accept(self, timeout: float = 3.0) -> AgentSocket:
        got = self._call("accept", timeout=timeout)
        return AgentSocket(self.agent, got["fd"], self.family)

    def begin_accept(self, timeout: float = 3.0) -> Pending:
        return self._begin("accept", timeout=timeout)

    def accepted(self, pending: Pending) -> AgentSocket:
        """The socket a `begin_accept` gave."""
        return AgentSocket(self.agent, pending.result()["fd"], self.family)

    def connect(self, addr: str, port: int, timeout: float = 3.0) -> None:
        self._call("connect", addr=addr, port=port, timeout=timeout)

    def begin_connect(self, addr: str, port: int, timeout: float = 3.0) -> Pending:
        """Start a blocking connect; the check answers the SYN on the Wire, then `.result()`."""
        return self._begin("connect", addr=addr, port=port, timeout=timeout)

    def setblocking(self, blocking: bool) -> None:
        self._call("setblocking", blocking=blocking)

    def setsockopt(self, name: str, value: int | list[int]) -> None:
        self._call("setsockopt", name=name, value=value)

    def getsockopt(self, name: str) -> Any:
        return self._call("getsockopt", name=name)["value"]

    def tcp_info(self) -> dict[str, int]:
        return dict(self.getsockopt("TCP_INFO"))

    def send(self, data: bytes, flags: tuple[str, ...] = (), timeout: float = 3.0) -> int:
        return int(self._call("send", data=data.hex(), flags=list(flags), timeout=timeout)["sent"])

    def send_each(self, pieces: Sequence[bytes], timeout: float = 3.0) -> list[int]:
        """Each piece written by its own send(2), back to back inside the agent: with TCP_NODELAY
        each leaves as a segment of its own, within a millisecond of the last."""
        return [int(n) for n in self._call("send", pieces=[p.hex() for p in pieces], timeout=timeout)["sent"]]

    def sendto(self, data: bytes, addr: str, port: int, flags: tuple[str, ...] = (), timeout: float = 3.0) -> int:
        return int(self._call("send", data=data.hex(), addr=addr, port=port, flags=list(flags), timeout=timeout)["sent"])

    def recv(self, size: int = 65536, flags: tuple[str, ...] = (), timeout: float = 3.0) -> bytes:
        return bytes.fromhex(self._call("recv", size=size, flags=list(flags), timeout=timeout)["data"])

    def recvfrom(self, size: int = 65536, flags: tuple[str, ...] = (), timeout: float = 3.0) -> tuple[bytes, list[Any]]:
        got = self._call("recv", size=size, flags=list(flags), timeout=timeout)
        return bytes.fromhex(got["data"]), got["peer"]

    def recvmsg(self, size: int = 65536, flags: tuple[str, ...] = (), timeout: float = 3.0) -> dict[str, Any]:
        """A netlink socket's recvmsg(2) into `size` bytes: {"data" (hex), "len" (what the call
        returned), "msg_flags", "ancillary", "peer"}."""
        return self._call("recv", size=size, flags=list(flags), timeout=timeout)

    def begin_recv(self, size: int = 65536, flags: tuple[str, ...] = (), timeout: float = 3.0) -> Pending:
        return self._begin("recv", size=size, flags=list(flags), timeout=timeout)

    # A stream hands its data over in pieces the check does not choose, so "read these N bytes"
    # and "what more is there" are reads of their own, shared by every check that counts bytes.

    def recv_exactly(self, size: int, timeout: float = 3.0) -> bytes:
        """`size` bytes, in as many reads as the stack delivers them in, each bounded by
        `timeout`; fewer if a read gives nothing (the peer closed)."""
        data = b""
        while len(data) < size:
            chunk = self.recv(min(size - len(data), 16384), timeout=timeout)
            if not chunk:
                break
            data += chunk
        return data

    def recv_now(self) -> bytes:
        """What the socket holds for the application right now, without waiting (b"" when
        nothing: EAGAIN)."""
        try:
            return self.recv(65536, flags=("MSG_DONTWAIT",))
        except SocketCallError as exc:
            if exc.errno != "EAGAIN":
                raise
            return b""

    def errors(self) -> list[dict[str, Any]]:
        """What the error queue holds (MSG_ERRQUEUE; IP_RECVERR/IPV6_RECVERR must be on)."""
        return list(self._call("recv", size=512, flags=["MSG_ERRQUEUE"])["errors"])

    def poll(self, events: tuple[str, ...] = ("POLLIN",), timeout: float = 1.0) -> set[str]:
        return set(self._call("poll", events=list(events), timeout=timeout)["events"])

    def shutdown(self, how: str = "wr") -> None:
        self._call("shutdown", how=how)

    def close(self) -> None:
        self._call("close")
