"""The linux driver and the lab's services, on the real kernel."""

import hashlib
import socket

import pytest

from labkit.errors import LabInputError
from labkit.stacks import LinuxStack, StackSpec
from labkit.testbed import Testbed


@pytest.fixture
def bed():
    with Testbed(StackSpec(LinuxStack)) as b:
        yield b


def test_stack_reports_its_mac_and_addresses(bed):
    s = bed.stack
    assert s.id == "linux"
    assert s.mac == bed.plan.stack_mac
    assert s.ipv4 == [bed.plan.stack4] and s.ipv6 == [bed.plan.stack6]


def test_run_executes_inside_the_namespace(bed):
    out = bed.stack.run(["ip", "-br", "addr", "show", "dev", "eth0"])
    assert out.returncode == 0 and bed.plan.stack4 in out.stdout


def test_tcp_services_echo_sink_and_source(bed):
    peer_ns = bed.peer_end.ns
    # Give the peer namespace an address of its own for this test, so a kernel socket can talk.
    with peer_ns.iproute() as ipr:
        ipr.addr("add", index=bed.peer_end.index, address=bed.plan.peer4, prefixlen=24)
    echo = bed.stack.service("tcp-echo", port=7)
    with peer_ns.socket(socket.AF_INET, socket.SOCK_STREAM) as c:
        c.settimeout(5)
        c.connect((bed.plan.stack4, echo.port))
        c.sendall(b"ping over tcp")
        assert c.recv(100) == b"ping over tcp"
    closed = echo.wait_for(lambda e: e["event"] == "closed", timeout=5)
    assert closed["len"] == len(b"ping over tcp")

    with peer_ns.socket(socket.AF_INET, socket.SOCK_STREAM) as srv:
        srv.bind((bed.plan.peer4, 0))
        srv.listen(1)
        srv.settimeout(5)
        source = bed.stack.service("tcp-source", port=srv.getsockname()[1], to=bed.plan.peer4, bytes=200000)
        conn, _ = srv.accept()
        with conn:
            conn.settimeout(5)
            data = bytearray()
            while chunk := conn.recv(65536):
                data += chunk
        sent = source.wait_for(lambda e: e["event"] == "sent", timeout=5)
        assert sent["len"] == len(data) == 200000
        assert sent["sha256"] == hashlib.sha256(data).hexdigest()


def test_unknown_service_and_variant_are_refused(bed):
    with pytest.raises(LabInputError, match="unknown service 'smtp'"):
        bed.stack.service("smtp")
    with pytest.raises(LabInputError, match="unknown variant 'turbo' of stack 'linux'; allowed: linux, linux-txcsum"):
        LinuxStack("turbo")


def test_services_end_with_the_stack():
    with Testbed(StackSpec(LinuxStack)) as b:
        svc = b.stack.service("udp-echo")
        pid = svc.process.pid
    with pytest.raises(ProcessLookupError):
        import os

        os.kill(pid, 0)


def test_txcsum_variant_leaves_checksums_to_the_device():
    from scapy.layers.inet import IP, UDP

    with Testbed(StackSpec(LinuxStack, "txcsum")) as b:
        echo = b.stack.service("udp-echo", family="4")
        b.wire.send(IP(src=b.plan.peer4, dst=b.plan.stack4) / UDP(sport=5, dport=echo.port) / b"x")
        frame = b.wire.expect_frame(UDP(sport=echo.port), timeout=2)
        assert frame.checksum_partial, "with tx offload on, veth should hand over a CHECKSUM_PARTIAL frame"
