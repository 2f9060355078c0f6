"""The socket agent (labkit.agent) and the lab's handle on it: calls, errnos, bounds, bad requests,
reset, and its life with a pooled testbed."""

from __future__ import annotations

import json
import socket
import struct
import subprocess
import sys
import time

import pytest

from labkit.errors import LabError
from labkit.lifecycle.process import LabProcess
from labkit.net.plan import AddressPlan
from labkit.net.topology import Topology
from labkit.stacks import LinuxStack, StackSpec
from labkit.stacks.agent import SocketAgent, SocketCallError
from labkit.testbed import Testbed
from labkit.testbed.pool import TestbedPool

ARGV = [sys.executable, "-m", "labkit.agent"]


@pytest.fixture
def agent():
    """An agent on the machine itself (127.0.0.1 only): the lab's own logic, no stack needed."""
    a = SocketAgent(LabProcess(ARGV, stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=LinuxStack.child_env()), "this machine")
    yield a
    a.close()


def test_a_connection_through_the_agent_carries_data(agent):
    listener = agent.socket("ipv4", "stream")
    listener.setsockopt("SO_REUSEADDR", 1)
    assert listener.bind("127.0.0.1", 0)[0] == "127.0.0.1"
    listener.listen(4)
    client = agent.socket("ipv4", "stream")
    client.connect("127.0.0.1", listener.port)
    server = listener.accept()
    assert client.send(b"over the agent") == 14
    assert server.recv(100, flags=("MSG_PEEK",)) == b"over the agent"  # still there after a peek
    assert server.recv(100) == b"over the agent"
    assert server.getpeername() == client.getsockname()
    assert client.send_each([b"one", b"two", b"three"]) == [3, 3, 5]
    assert server.recv_exactly(11) == b"onetwothree"
    info = client.tcp_info()
    assert info["state"] == 1 and info["snd_mss"] > 0, info  # TCP_ESTABLISHED


@pytest.fixture
def netns_agent():
    """An agent in a namespace of the lab's own: what its netlink sockets hear is the lab's."""
    topology = Topology()
    ns = topology.namespace("nl")
    with topology:
        assert ns.netns is not None
        env = LinuxStack.child_env()
        a = SocketAgent(LabProcess(ARGV, netns=ns.netns, stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=env), "nl")
        try:
            yield a
        finally:
            a.close()


def test_a_netlink_socket_through_the_agent_binds_reads_and_sizes(netns_agent):
    """NETLINK_ROUTE in the agent: bind with groups, the options tools set, and recvmsg's
    length and flags (a link dump of the lab's namespace)."""
    nl = netns_agent.socket("netlink", "raw", "route")
    port, groups = nl.bind_netlink(groups=0x1 | 0x10)
    assert port > 0 and groups == 0x11
    assert nl.getsockopt("NETLINK_LIST_MEMBERSHIPS") == [1, 5]
    nl.setsockopt("NETLINK_EXT_ACK", 1)
    assert nl.getsockopt("NETLINK_EXT_ACK") == 1
    nl.setsockopt("SO_RCVTIMEO", 1.5)
    assert nl.getsockopt("SO_RCVTIMEO") == 1.5
    with pytest.raises(SocketCallError) as caught:
        nl.recvmsg(100, flags=("MSG_DONTWAIT",))
    assert caught.value.errno == "EAGAIN"
    dump = struct.pack("=IHHII", 32, 18, 0x301, 7, 0) + bytes(16)  # RTM_GETLINK, REQUEST|DUMP
    assert nl.send(dump) == 32
    peeked = nl.recvmsg(0, flags=("MSG_PEEK", "MSG_TRUNC"), timeout=2)
    assert peeked["len"] > 32 and peeked["data"] == "" and "MSG_TRUNC" in peeked["msg_flags"]
    cut = nl.recvmsg(40)
    assert cut["len"] == 40 and "MSG_TRUNC" in cut["msg_flags"] and cut["peer"] == [0, 0]
    assert struct.unpack_from("=IHHI", bytes.fromhex(cut["data"]))[1:] == (16, 0x2, 7)  # RTM_NEWLINK, MULTI, seq 7
    nl.close()


def test_a_refused_call_names_the_errno(agent):
    closed = agent.socket("ipv4", "stream")
    closed.bind("127.0.0.1", 0)
    port = closed.port
    closed.close()
    with pytest.raises(SocketCallError) as caught:
        agent.socket("ipv4", "stream").connect("127.0.0.1", port)
    assert caught.value.errno == "ECONNREFUSED" and caught.value.op == "connect"


def test_a_call_that_would_block_ends_at_its_bound(agent):
    sock = agent.socket("ipv4", "dgram")
    sock.bind("127.0.0.1", 0)
    began = time.monotonic()
    with pytest.raises(SocketCallError) as caught:
        sock.recv(10, timeout=0.2)
    assert caught.value.errno == "TIMEOUT"
    assert time.monotonic() - began < 3
    with pytest.raises(SocketCallError) as caught:
        sock.recv(10, flags=("MSG_DONTWAIT",))
    assert caught.value.errno == "EAGAIN"


def test_a_pending_call_is_answered_after_the_peer_acts(agent):
    receiver = agent.socket("ipv4", "dgram")
    receiver.bind("127.0.0.1", 0)
    port = receiver.port  # before the recv goes out: the agent answers one call at a time
    pending = receiver.begin_recv(10, timeout=2)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.sendto(b"later", ("127.0.0.1", port))
    assert bytes.fromhex(pending.result()["data"]) == b"later"
    assert pending.errno() is None


@pytest.mark.parametrize(
    "request_line, says",
    [
        ("not json", "allowed: one JSON object per line"),
        ('{"id": 1, "op": "frobnicate"}', "unknown op 'frobnicate'; allowed:"),
        ('{"id": 1, "op": "close", "fd": 999}', "unknown fd 999"),
        ('{"id": 1, "op": "socket", "family": "ipx", "type": "stream"}', "bad family 'ipx'; allowed: ipv4, ipv6"),
        ('{"id": 1, "op": "recv", "fd": 0, "timeout": 3600}', "unknown fd 0"),
    ],
)
def test_a_bad_request_is_a_clear_error_not_a_hang(agent, request_line, says):
    stdin = agent.process.popen.stdin
    stdin.write(request_line.encode() + b"\n")
    stdin.flush()
    answer = json.loads(agent.process.read_line(5))
    assert says in answer["error"], answer


def test_bad_arguments_are_named(agent):
    sock = agent.socket("ipv4", "dgram")
    with pytest.raises(LabError, match=r"bad timeout 3600; allowed: 0 to 30 seconds"):
        sock.recv(10, timeout=3600)
    with pytest.raises(LabError, match=r"unknown option 'SO_NOPE'; allowed: SO_RCVBUF"):
        sock.setsockopt("SO_NOPE", 1)
    with pytest.raises(LabError, match=r"unknown flag 'MSG_NOPE'"):
        sock.recv(10, flags=("MSG_NOPE",))


def test_reset_closes_every_socket_and_the_agent_ends_with_its_stdin(agent):
    a = agent.socket("ipv4", "stream")
    b = agent.socket("ipv6", "dgram")
    assert sorted(agent.reset()) == sorted([a.fd, b.fd])
    with pytest.raises(LabError, match="unknown fd"):
        a.close()
    assert agent.process.close(grace=5) == 0  # EOF on stdin: it exits by itself, cleanly


def test_a_pooled_testbed_keeps_its_agent_and_not_its_sockets():
    """The agent outlives a check (it is slow to start under gVisor) but what the check opened
    with it does not: the pool's full look finds the stack as it was handed out."""
    pool = TestbedPool(isolation="canary")
    spec = StackSpec(ReusedLinux)
    try:
        bed = pool.acquire(spec, AddressPlan())
        agent = bed.stack.agent()
        agent.listener("ipv4", port=7777)
        assert "tcp listen 0.0.0.0:7777" in bed.stack.state()["sockets"]
        assert pool.release(bed, reusable=True, changes=frozenset()) == {}
        again = pool.acquire(spec, AddressPlan())
        assert again is bed and again.stack.agent() is agent, "the agent was started again"
        assert "tcp listen 0.0.0.0:7777" not in again.stack.state()["sockets"]
        assert pool.release(again, reusable=True, changes=frozenset()) == {}
    finally:
        pool.close()


def test_a_socket_the_check_left_is_not_handed_on_even_if_reset_fails():
    with Testbed(StackSpec(LinuxStack)) as bed:
        agent = bed.stack.agent()
        agent.listener("ipv4", port=7778)
        agent.process.close()  # the agent died with the check: its sockets went with it
        bed.stack.reset()
        assert "tcp listen 0.0.0.0:7778" not in bed.stack.state()["sockets"]
        assert bed.stack.agent() is not agent and bed.stack.agent().running


class ReusedLinux(LinuxStack):
    """Linux as a pooled driver, so the pool's hand-over is seen without runsc."""

    kind = "linux-reused"
    reuse = True
