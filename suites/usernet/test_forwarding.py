"""Port forwarding as a matrix of round trips: each forward of the lab's table
(labkit.stacks.forwarding.STANDARD) carries traffic from a client outside to a service in the
container and back, checked at both ends.

A case puts the forward in place (`stack.forward`), starts one echo service in the container per
port of it, and drives clients from the outside namespace (the loopback case: from the host
namespace's 127.0.0.1) to the host's forwarded ports. TCP: several concurrent connections, every
port of a range used, each sending a payload that spans many segments (at either MTU); the
client's echo and the service's digest must both equal what was sent. UDP: a burst of numbered
datagrams to each port, every one echoed intact from the forwarded address and seen by the
service. The source address the service saw is compared with the one the stack documents
(`stack.forwarded_source`).

Whether a forwarded connection crosses the tap is the documented rule below (`crosses_tap`):
a service that sees the container's own loopback address was reached by a splice (pasta's, for
a client on the host's loopback), so nothing of it may cross tap0; from any other source it
came across the tap. A capture on tap0 counts the port's frames either way.
"""

from __future__ import annotations

import hashlib
import os
import socket
import threading
import time
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import pytest

from labkit.errors import ExpectTimeout
from labkit.packet.wire import Wire
from labkit.pytest_plugin.fixtures import require
from labkit.stacks import Stack, StackSpec
from labkit.stacks.forwarding import STANDARD, PortForward
from labkit.stacks.service import Service
from labkit.testbed.outside import Outside

pytestmark = [pytest.mark.needs("outside", "port-forward"), pytest.mark.varies_with()]

TCP_FORWARDS = [f for f in STANDARD if f.proto == "tcp"]
UDP_FORWARDS = [f for f in STANDARD if f.proto == "udp"]
SPLICED_SOURCE = "127.0.0.1"  # the container's own loopback: what a spliced connection comes from

TCP_PAYLOAD = 200 * 1024  # bytes per connection: many segments even at MTU 65520
TCP_CONNECTIONS = 3  # at least; a range gets one per port if it has more
UDP_DATAGRAMS, UDP_SIZE = 8, 1000  # per port
TIMEOUT = 5.0  # per socket operation
SETTLE = 2.0  # for what is due by now (a burst's echoes, the services' events): they come within ms


@pytest.fixture(autouse=True)
def expressible(request: pytest.FixtureRequest, stack_spec: StackSpec, fwd: PortForward) -> None:
    """Skips, with the stack's reason, a forward it cannot express (slirp4netns: IPv6) before a
    testbed is built for nothing: a tap testbed takes about a second to come up."""
    require(request, stack_spec)  # a stack without the capabilities skips saying so, as the testbed would
    if (why := stack_spec.create().forward_refusal(fwd)) is not None:
        pytest.skip(why)


def crosses_tap(source: str) -> bool:
    """Whether a forwarded connection whose source the container sees as `source` crossed tap0:
    a splice delivers it through the container's loopback (source 127.0.0.1), anything else
    arrives across the tap."""
    return source != SPLICED_SOURCE


def family_of(fwd: PortForward) -> int:
    return socket.AF_INET if fwd.family == "ipv4" else socket.AF_INET6


def services_for(stack: Stack, fwd: PortForward, kind: str) -> dict[int, Service]:
    """One echo service in the container per port of the forward: container port -> service."""
    version = "4" if fwd.family == "ipv4" else "6"
    return {cport: stack.service(kind, cport, family=version) for _, cport in fwd.ports}


def client_socket(outside: Outside, fwd: PortForward, kind: int) -> socket.socket:
    """A client socket of the outside namespace, or of the host's for the loopback forward."""
    sock = outside.socket(family_of(fwd), kind, where="host" if fwd.loopback else "outside")
    sock.settimeout(TIMEOUT)
    return sock


def client_address(outside: Outside, fwd: PortForward) -> str:
    """Where the forward's clients are (their sockets are bound there): the outside's address,
    or the host's loopback."""
    return "127.0.0.1" if fwd.loopback else outside.address(fwd.family)


def short(digest: str) -> str:
    return digest[:12]


def await_events(services: dict[int, Service], event: str, due: Counter[int]) -> dict[int, list[dict[str, Any]]]:
    """Every `event` of each service (container port -> events), once as many as `due` says came
    or SETTLE passed: by the time the clients are done they are due, so a missing one is waited
    for once and then shows in the comparison."""
    deadline = time.monotonic() + SETTLE
    for port, svc in services.items():
        for _ in range(due[port] - sum(e["event"] == event for e in svc.events)):
            try:
                svc.wait_for(lambda e: e["event"] == event, max(0.1, deadline - time.monotonic()))
            except ExpectTimeout:
                break
    return {port: [e for e in svc.events if e["event"] == event] for port, svc in services.items()}


# -- TCP ---------------------------------------------------------------------------------------


@dataclass
class Connection:
    """One client connection of a case: what it sent, what came back, and what went wrong."""

    index: int
    host_port: int
    container_port: int
    payload: bytes
    echoed: bytes = b""
    error: str = ""

    @property
    def label(self) -> str:
        return f"connection {self.index}"

    @property
    def digest(self) -> tuple[int, str]:
        return len(self.payload), hashlib.sha256(self.payload).hexdigest()

    def describe(self, fwd: PortForward) -> str:
        echoed = hashlib.sha256(self.echoed).hexdigest()
        return (
            f"{self.label} to {fwd.connect_to()}:{self.host_port} (container port {self.container_port}) "
            f"sent {len(self.payload)} bytes sha256 {short(self.digest[1])}, got back {len(self.echoed)} bytes "
            f"sha256 {short(echoed)}" + (f" ({self.error})" if self.error else "")
        )


def connections_for(fwd: PortForward) -> list[Connection]:
    """At least TCP_CONNECTIONS connections, spread over the forward's ports so each is used."""
    ports = fwd.ports
    count = max(TCP_CONNECTIONS, len(ports))
    return [Connection(i, *ports[i % len(ports)], os.urandom(TCP_PAYLOAD)) for i in range(count)]


def run_connection(outside: Outside, fwd: PortForward, conn: Connection) -> None:
    """Connect, send the payload while reading the echo (a thread each way, so neither side's
    buffers can stall the other), half-close, and read the echo to its end."""
    with client_socket(outside, fwd, socket.SOCK_STREAM) as sock:
        sock.bind((client_address(outside, fwd), 0))
        try:
            sock.connect((fwd.connect_to(), conn.host_port))
        except OSError as exc:
            conn.error = f"connect failed: {exc}"
            return
        send_error: list[str] = []

        def send() -> None:
            try:
                sock.sendall(conn.payload)
                sock.shutdown(socket.SHUT_WR)
            except OSError as exc:
                send_error.append(f"send failed: {exc}")

        sender = threading.Thread(target=send, daemon=True)
        sender.start()
        chunks = []
        try:
            while data := sock.recv(65536):
                chunks.append(data)
        except OSError as exc:
            conn.error = f"reading the echo failed: {exc}"
        sender.join(TIMEOUT)
        conn.echoed = b"".join(chunks)
        if send_error and not conn.error:
            conn.error = send_error[0]


@pytest.mark.parametrize("fwd", TCP_FORWARDS, ids=[f.name for f in TCP_FORWARDS])
def test_tcp_forward_echoes_concurrent_connections_intact(stack: Stack, outside: Outside, wire: Wire, fwd: PortForward) -> None:
    """Concurrent connections to every port of the forward reach the container's echo service
    from the source the stack documents; each payload comes back whole, and the service behind
    the port read exactly what was sent to that port."""
    services = services_for(stack, fwd, "tcp-echo")
    conns = connections_for(fwd)
    with tap_watch(wire, fwd) as crossed, stack.forward(fwd):
        with ThreadPoolExecutor(len(conns)) as pool:
            for future in [pool.submit(run_connection, outside, fwd, c) for c in conns]:
                future.result(timeout=4 * TIMEOUT)
        closed = await_events(services, "closed", Counter(c.container_port for c in conns))

    problems = [c.describe(fwd) for c in conns if c.error or c.echoed != c.payload]
    labels = {c.digest: c.label for c in conns}
    for port, events in closed.items():
        read = sorted(labels.get((e["len"], e["sha256"]), f"{e['len']} bytes sha256 {short(e['sha256'])}") for e in events)
        want = sorted(c.label for c in conns if c.container_port == port)
        if read != want:
            problems.append(f"the service on container port {port} read {read or 'nothing'}; want {want}")
    assert not problems, f"{fwd.name}: " + "; ".join(problems)

    seen = check_sources(stack, fwd, client_address(outside, fwd), services, "accepted")
    check_tap_crossing(fwd, seen, crossed[0])


# -- UDP ---------------------------------------------------------------------------------------


def datagram(port: int, seq: int) -> bytes:
    """Datagram `seq` to container port `port`: its tag ("port:seq") up front, random bytes after."""
    return f"{port}:{seq}:".encode().ljust(16, b".") + os.urandom(UDP_SIZE - 16)


def tag(data: bytes) -> str:
    return data[:16].rstrip(b".").rstrip(b":").decode(errors="replace")


def udp_round(outside: Outside, fwd: PortForward, host_port: int, sent: list[bytes]) -> tuple[list[bytes], list[str]]:
    """Send the burst to `host_port` and collect the echoes until all came or SETTLE passed:
    the replies, and where the ones from elsewhere than the forwarded address came from."""
    want_from = (fwd.connect_to(), host_port)
    replies: list[bytes] = []
    strangers: list[str] = []
    with client_socket(outside, fwd, socket.SOCK_DGRAM) as sock:
        sock.bind((client_address(outside, fwd), 0))  # not connected: a reply from elsewhere is evidence too
        for data in sent:
            sock.sendto(data, want_from)
        deadline = time.monotonic() + SETTLE
        while len(replies) < len(sent) and (left := deadline - time.monotonic()) > 0:
            sock.settimeout(left)
            try:
                data, source = sock.recvfrom(65536)
            except TimeoutError:
                break
            if source[:2] != want_from:
                strangers.append(f"{tag(data)} came back from {source[0]}:{source[1]}")
            replies.append(data)
    return replies, strangers


def describe_round(sent: list[bytes], got: list[bytes], strangers: list[str]) -> str:
    missing = [tag(d) for d in sent if d not in got]
    foreign = [f"{len(d)} bytes tagged {tag(d)!r}" for d in got if d not in sent]
    text = f"sent {len(sent)} x {UDP_SIZE} bytes {tag(sent[0])}..{tag(sent[-1])}, got back {len(got)}"
    for what, items in (("no echo of", missing), ("replies it did not send:", foreign), ("", strangers)):
        if items:
            text += f"; {what} {items[:8]}".replace(";  ", "; ")
    return text


@pytest.mark.parametrize("fwd", UDP_FORWARDS, ids=[f.name for f in UDP_FORWARDS])
def test_udp_forward_echoes_every_datagram_intact(stack: Stack, outside: Outside, wire: Wire, fwd: PortForward) -> None:
    """A burst of tagged datagrams to every port of the forward reaches the container's echo
    service behind that port from the source the stack documents, and every one comes back
    intact from the address and port the client sent it to."""
    services = services_for(stack, fwd, "udp-echo")
    bursts = {cport: [datagram(cport, seq) for seq in range(UDP_DATAGRAMS)] for _, cport in fwd.ports}
    problems = []
    with tap_watch(wire, fwd) as crossed, stack.forward(fwd):
        for host_port, cport in fwd.ports:
            got, strangers = udp_round(outside, fwd, host_port, bursts[cport])
            if sorted(got) != sorted(bursts[cport]) or strangers:
                where = f"{fwd.connect_to()}:{host_port} (container port {cport})"
                problems.append(f"to {where}: {describe_round(bursts[cport], got, strangers)}")
        seen = await_events(services, "datagram", Counter({cport: len(b) for cport, b in bursts.items()}))

    tags = {hashlib.sha256(d).hexdigest(): tag(d) for burst in bursts.values() for d in burst}
    for cport, events in seen.items():
        saw = sorted(tags.get(e.get("sha256", ""), f"{e['len']} bytes not sent") for e in events)
        want = sorted(tag(d) for d in bursts[cport])
        if saw != want:
            problems.append(f"the service on container port {cport} saw {saw or 'nothing'}; want {want}")
    assert not problems, f"{fwd.name}: " + "; ".join(problems)

    seen = check_sources(stack, fwd, client_address(outside, fwd), services, "datagram")
    check_tap_crossing(fwd, seen, crossed[0])


# -- what both share: the source the service saw, and the tap --------------------------------


def check_sources(stack: Stack, fwd: PortForward, client: str, services: dict[int, Service], event: str) -> str:
    """Every connection or datagram reached the service from the address the stack documents;
    that address, as the service saw it."""
    want = stack.forwarded_source(fwd, client)
    sources = sorted({e["peer"][0] for svc in services.values() for e in svc.events if e["event"] == event})
    assert sources == [want], f"{fwd.name}: the service inside saw the client {client} as {sources}; {stack.id} documents {want}"
    return sources[0]


@contextmanager
def tap_watch(wire: Wire, fwd: PortForward) -> Iterator[list[int]]:
    """Counts the frames of the forward's container ports on tap0 (by the kernel, so a
    200 KiB stream costs nothing to count) while the body runs; the count is in the list after."""
    ports = " or ".join(f"port {cport}" for _, cport in fwd.ports)
    counted: list[int] = []
    with wire.capture(f"{fwd.proto} and ({ports})") as capture:
        try:
            yield counted
        finally:
            counted.append(capture.count())


def check_tap_crossing(fwd: PortForward, source: str, frames: int) -> None:
    """A splice (the service saw `source`, its own loopback) leaves tap0 silent; anything else crossed it."""
    if crosses_tap(source):
        assert frames > 0, f"{fwd.name}: no {fwd.proto} frame of the forward crossed tap0, yet the service saw {source}"
    else:
        assert frames == 0, (
            f"{fwd.name}: {frames} {fwd.proto} frame(s) of the forward crossed tap0; a splice to {source} crosses none"
        )


# -- what the stack says is forwarded ------------------------------------------------------------

LISTED = [f for f in STANDARD if f.count > 1]  # ranges: several API calls per forward, each to be listed and removed


@pytest.mark.needs("outside", "port-forward", "forward-api")
@pytest.mark.parametrize("fwd", LISTED, ids=[f.name for f in LISTED])
def test_a_forward_is_listed_while_in_place_and_gone_after(stack: Stack, fwd: PortForward) -> None:
    """An engine shows and removes forwards through the stack's own list (slirp4netns's
    list_hostfwd): each port of a forward is listed, with its address and container port, while
    it is in place, and none after. pasta's forwards are fixed at its start: it lacks `forward-api`."""
    assert stack.listed_forwards() is not None, f"{stack.id} has the forward-api capability but lists nothing"
    want = {(fwd.proto, fwd.host_addr, host, container) for host, container in fwd.ports}

    def listed() -> set[tuple[str, str | None, int, int]]:
        return {(f.proto, f.host_addr, f.host_port, f.container_port) for f in stack.listed_forwards() or []}

    before = listed()
    with stack.forward(fwd):
        during = listed()
    after = listed()
    assert want <= during, (
        f"{fwd.name}: in place, the stack lists {sorted(during, key=str)}; missing {sorted(want - during, key=str)}"
    )
    assert during - before == want, f"{fwd.name}: the stack lists more than was asked: {sorted(during - before - want, key=str)}"
    assert after == before, f"{fwd.name}: after removal the stack still lists {sorted(after - before, key=str)}"
