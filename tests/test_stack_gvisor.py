"""The gVisor driver's own mechanics, on a real runsc: start, channels, services, reuse, cleanup.

What the sandbox's network must look like is a conformance question (suites/netsetup); these
tests check that the driver starts, observes and ends sandboxes as it claims.
"""

import os
import signal
import socket
import subprocess
import sys
import time

import pytest

from labkit.errors import LabError
from labkit.lifecycle import owner
from labkit.net import layouts
from labkit.net.netns import NetNS
from labkit.net.plan import AddressPlan
from labkit.net.topology import Topology
from labkit.stacks import GVisorStack, StackSpec
from labkit.testbed import Testbed
from labkit.testbed.pool import TestbedPool

from .conftest import ROOT, lab_namespaces_of
from .test_cleanup import alive, start_holder

available = GVisorStack.availability()
pytestmark = pytest.mark.skipif(not available.ok, reason=f"runsc unavailable: {available.reason}; install: {available.install}")


def runsc_processes(marker: str) -> list[int]:
    out = []
    for line in subprocess.run(["ps", "-eo", "pid=,args="], capture_output=True, text=True).stdout.splitlines():
        pid, _, args = line.strip().partition(" ")
        if "runsc" in args and marker in args:
            out.append(int(pid))
    return out


@pytest.fixture
def bed(request):
    variant = getattr(request, "param", "")
    testbed = Testbed(StackSpec(GVisorStack, variant)).up()
    yield testbed
    workdir = str(testbed.stack.workdir)
    testbed.down()
    assert runsc_processes(workdir) == [], "sandbox processes outlived stop()"


def test_sandbox_takes_over_the_link(bed, no_leftovers):
    stack = bed.stack
    inside = stack.run(["ip", "-o", "addr", "show", "dev", "eth0"]).stdout
    assert "198.18.0.2/24" in inside and "2001:db8::2/64" in inside, inside
    assert stack.mac in stack.run(["ip", "-o", "link", "show", "eth0"]).stdout
    assert stack.sandbox_pid in NetNS(bed.stack_end.ns.name).pids(), "the sandbox does not live in the lab namespace"


@pytest.mark.parametrize("bed", ["", "ch4"], indirect=True)
def test_channels_are_af_packet_sockets_in_one_fanout_group(bed):
    want = bed.stack.options["channels"]
    sockets = bed.stack.link_sockets()
    assert len(sockets) == want, sockets
    assert {s.ifindex for s in sockets} == {bed.stack_end.index}
    assert len({s.fanout.group for s in sockets}) == 1 and all(s.fanout.type == "hash" for s in sockets), sockets


def test_service_ends_when_closed(bed):
    svc = bed.stack.service("udp-echo", port=7)
    assert "labkit.services" in bed.stack.run(["ps", "-eo", "args"]).stdout
    svc.close()
    assert "labkit.services" not in bed.stack.run(["ps", "-eo", "args"]).stdout, "the service survived close()"


def test_pool_reuses_a_sandbox_and_tears_down_in_the_background(no_leftovers):
    spec, plan = StackSpec(GVisorStack), AddressPlan()
    with TestbedPool() as pool:
        first = pool.acquire(spec, plan)
        pid = first.stack.sandbox_pid
        first.stack.service("udp-echo")
        pool.release(first, reusable=True)
        again = pool.acquire(spec, plan)
        assert again is first and again.stack.sandbox_pid == pid and pool.reused == 1
        assert again.stack._services == [], "reset() left the previous check's service running"
        pool.release(again, reusable=False)  # a failed check: never handed out again
        t = time.monotonic()
        other = pool.acquire(spec, plan)
        assert other is not first and other.stack.sandbox_pid != pid
        assert time.monotonic() - t < 1.5, "acquire waited for the old sandbox to die"
        pool.release(other, reusable=True)
    assert pool.errors == []
    assert not alive(pid)


def test_two_default_routes_are_refused_with_runsc_error(no_leftovers):
    topo = Topology()
    sb, peer = topo.namespace("sb"), topo.namespace("peer")
    a, _ = topo.veth(sb, "eth0", peer, "p0")
    c, _ = topo.veth(sb, "eth1", peer, "p1")
    a.addr("198.18.0.2/24")
    c.addr("198.18.1.2/24")
    sb.route("default", via="198.18.0.1", dev="eth0").route("default", via="198.18.1.1", dev="eth1", metric=10)
    with topo:
        stack = GVisorStack()
        t = time.monotonic()
        with pytest.raises(LabError, match="more than one default route"):
            try:
                stack.start(topo, a)
            finally:
                stack.stop()
        assert time.monotonic() - t < 15


def test_sigkill_with_a_sandbox_then_labkit_clean_leaves_nothing():
    p, _stray, tmp = start_holder("--stack=gvisor")
    assert runsc_processes(str(tmp.parent / "labkit-")) != []
    p.kill()
    p.wait(10)
    owner_tag = owner.Owner.parse(tmp.name).tag + "-"
    assert runsc_processes(owner_tag), "the sandbox should outlive a SIGKILLed owner until cleaned"
    done = subprocess.run([sys.executable, "-m", "labkit", "clean"], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert runsc_processes(owner_tag) == [], "runsc processes survived labkit clean"
    assert lab_namespaces_of(p.pid) == []
    assert list(tmp.parent.glob(f"{owner_tag}-*")) == [], "runsc state or stack workdir left in /tmp"


@pytest.mark.parametrize("sig, args", [(signal.SIGINT, ()), (signal.SIGTERM, ("--sigterm",))], ids=["ctrl-c", "sigterm"])
def test_owner_with_a_sandbox_unwinds_on_ctrl_c_and_sigterm(sig, args):
    p, stray, tmp = start_holder("--stack=gvisor", *args)
    owner_tag = owner.Owner.parse(tmp.name).tag + "-"
    assert runsc_processes(owner_tag)
    os.kill(stray, signal.SIGKILL)  # the stray is the reaper's job
    p.send_signal(sig)
    p.wait(20)
    assert runsc_processes(owner_tag) == [], "runsc processes survived the owner's unwind"
    assert lab_namespaces_of(p.pid) == []


@pytest.mark.parametrize("family", [socket.AF_INET, socket.AF_INET6], ids=["ipv4", "ipv6"])
def test_tcp_services_run_inside_the_sandbox(family, no_leftovers):
    plan = AddressPlan()
    with Testbed(StackSpec(GVisorStack), plan, layouts.kernel_peer) as bed:
        stack, peer = bed.stack, bed.topology["peer"]
        there = plan.stack4 if family == socket.AF_INET else plan.stack6
        here = plan.peer4 if family == socket.AF_INET else plan.peer6
        echo = stack.service("tcp-echo")
        payload = bytes(range(256)) * 64
        with peer.socket(family, socket.SOCK_STREAM) as s:
            s.settimeout(5)
            s.connect((there, echo.port))
            s.sendall(payload)
            s.shutdown(socket.SHUT_WR)
            got = b""
            while chunk := s.recv(65536):
                got += chunk
        assert got == payload, f"echoed {len(got)} bytes of {len(payload)}"
        closed = echo.wait_for(lambda e: e["event"] == "closed", timeout=5)
        assert closed["len"] == len(payload) and closed["peer"][0] == here, closed

        with peer.socket(family, socket.SOCK_STREAM) as listener:
            listener.settimeout(5)
            listener.bind((here, 0))
            listener.listen(1)
            source = stack.service("tcp-source", to=here, port=listener.getsockname()[1], bytes=100_000)
            conn, _ = listener.accept()
            with conn:
                conn.settimeout(5)
                received = 0
                while chunk := conn.recv(65536):
                    received += len(chunk)
            sent = source.wait_for(lambda e: e["event"] == "sent", timeout=5)
        assert received == sent["len"] == 100_000
