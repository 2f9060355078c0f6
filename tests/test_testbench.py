"""The testbench against the kernel: TCP opened both ways, UDP and ICMP in both families, the
expectation log, `listen`, and the flow bookkeeping."""

from __future__ import annotations

import json

import pytest
from scapy.layers.inet import TCP

from labkit.errors import ExpectTimeout, LabInputError
from labkit.net.plan import FAMILIES, AddressPlan
from labkit.packet.testbench import IcmpEcho, NumberedFlows, TcpConnection, UdpFlow
from labkit.stacks import resolve
from labkit.testbed import Testbed


@pytest.fixture(scope="module")
def bed():
    with Testbed(resolve("linux")[0]).up() as testbed:
        yield testbed


@pytest.fixture
def fresh(bed):
    bed.reset()
    return bed


@pytest.mark.parametrize("family", FAMILIES)
def test_tcp_active_open_exchanges_data_and_closes(fresh, family):
    echo = fresh.stack.service("tcp-echo")
    conn = TcpConnection(fresh.wire, fresh.plan.endpoints(family), port=echo.port)
    syn_ack = conn.connect()
    assert syn_ack[TCP].ack == conn.iss + 1
    n = conn.negotiated
    assert (n.mss, n.window_scaling, n.sack_permitted, n.timestamps) == (1460 if family == "ipv4" else 1440, True, True, True)
    conn.send(b"labkit says hello")
    assert conn.receive(17) == b"labkit says hello"
    assert conn.snd_una == conn.snd_nxt, "the echo acknowledged every byte sent"
    conn.close()
    closed = echo.wait_for(lambda e: e["event"] == "closed", timeout=3)
    assert closed["len"] == 17


def test_tcp_without_options_negotiates_nothing(fresh):
    sink = fresh.stack.service("tcp-sink")
    conn = TcpConnection(fresh.wire, fresh.plan.endpoints("ipv4"), port=sink.port, options=("MSS",), mss=1000)
    conn.connect()
    assert (conn.negotiated.timestamps, conn.negotiated.window_scaling, conn.negotiated.sack_permitted) == (False, False, False)
    sent = conn.send(b"x" * 100)
    assert not [o for o in sent[TCP].options if o[0] == "Timestamp"]
    conn.expect(flags="A")
    conn.reset()


def test_tcp_passive_open_learns_the_stacks_port(fresh):
    conn = TcpConnection(fresh.wire, fresh.plan.endpoints("ipv6"), port=None, local_port=4711)
    attempt = fresh.stack.service("tcp-connect", to=fresh.plan.peer6, port=4711)
    syn = conn.accept()
    assert conn.port == syn[TCP].sport
    assert attempt.wait_for(lambda e: e["event"] in ("connected", "failed"), timeout=3)["event"] == "connected"
    conn.reset()


def test_a_tcp_expect_that_fails_names_the_connection_and_the_field(fresh):
    sink = fresh.stack.service("tcp-sink")
    conn = TcpConnection(fresh.wire, fresh.plan.endpoints("ipv4"), port=sink.port)
    conn.connect()
    conn.send(b"abc")
    with pytest.raises(ExpectTimeout) as err:
        conn.expect(flags="A", ack=conn.snd_nxt + 1000, timeout=0.5)
    text = str(err.value)
    assert f"TCP [{fresh.plan.peer4}]:{conn.local_port} > [{fresh.plan.stack4}]:{sink.port}" in text
    assert "TCP.ack: want" in text
    conn.reset()


def test_unknown_syn_option_is_refused(fresh):
    with pytest.raises(LabInputError, match="unknown SYN option"):
        TcpConnection(fresh.wire, fresh.plan.endpoints("ipv4"), port=9, options=("MSS", "Fast"))


@pytest.mark.parametrize("family", FAMILIES)
def test_udp_flow_and_icmp_echo_in_both_families(fresh, family):
    ends = fresh.plan.endpoints(family)
    echo = fresh.stack.service("udp-echo")
    flow = UdpFlow(fresh.wire, ends, port=echo.port)
    flow.send(b"ping")
    assert flow.expect(b"ping", timeout=2)["UDP"].dport == flow.local_port
    ping = IcmpEcho(fresh.wire, ends)
    reply = ping.ping(1, b"labkit", timeout=2)
    assert reply[ends.ip].src == ends.stack


def test_the_wire_logs_what_each_expect_looked_for_and_what_matched(fresh, tmp_path):
    ping = IcmpEcho(fresh.wire, fresh.plan.endpoints("ipv4"))
    ping.ping(1, timeout=2)
    ping.send(3)
    with pytest.raises(ExpectTimeout):
        ping.expect_reply(2, timeout=1)
    heard = fresh.wire.listen(0.2)
    log = fresh.wire.expectations
    assert [(e.kind, e.outcome) for e in log] == [("expect", "matched"), ("expect", "timeout"), ("listen", f"{len(heard)} frame(s)")]
    matched = fresh.wire.frames[log[0].frame]
    assert matched.packet.haslayer("ICMP") and matched.packet["ICMP"].type == 0
    written = json.loads(fresh.wire.write_expectations(tmp_path / "e.json").read_text())
    assert written[0]["template"].startswith("IP(src='198.18.0.2'")
    assert written[1]["closest"].startswith("ICMP.seq: want 0x2, got 0x3")
    fresh.wire.forget()
    assert fresh.wire.expectations == []


def test_numbered_flows_say_what_was_lost_and_what_came_out_of_order():
    class FakeWire:
        @staticmethod
        def ether():
            from scapy.layers.l2 import Ether

            return Ether(src="02:00:00:00:00:01", dst="02:00:00:00:00:02")

    flows = NumberedFlows(FakeWire(), AddressPlan().endpoints("ipv4"), port=9, ports=[1000, 2000], per_flow=3)  # type: ignore[arg-type]
    assert len(flows) == 6 and len(flows.frames([0])) == 2
    for port, n in [(1000, 0), (1000, 2), (1000, 1), (2000, 0)]:
        flows.arrived(port.to_bytes(2, "big") + n.to_bytes(4, "big"))
    assert flows.lost() == {2000: [1, 2]}
    assert flows.disordered() == {1000: [0, 2, 1]}


def test_tcp_sequence_numbers_wrap_and_the_stacks_window_is_scaled(fresh):
    sink = fresh.stack.service("tcp-sink")
    conn = TcpConnection(fresh.wire, fresh.plan.endpoints("ipv4"), port=sink.port, isn=2**32 - 3)
    syn_ack = conn.connect()
    shift = dict(syn_ack[TCP].options)["WScale"]
    conn.send(b"x" * 10)  # from 2**32 - 2 across the wrap
    ack = conn.expect(flags="A", timeout=2)
    assert (conn.snd_nxt, conn.snd_una, ack[TCP].ack) == (8, 8, 8)
    assert conn.their_window == ack[TCP].window << shift and shift > 0
    conn.close()
    assert sink.wait_for(lambda e: e["event"] == "closed", timeout=3)["len"] == 10


def test_a_syn_ack_offers_only_what_the_stacks_syn_offered():
    from scapy.layers.inet import IP

    ends = AddressPlan().endpoints("ipv4")
    conn = TcpConnection(None, ends, port=None, local_port=4711)  # type: ignore[arg-type]  # nothing is sent
    syn = IP(bytes(ends.from_stack() / TCP(sport=33000, dport=4711, flags="S", seq=100, options=[("MSS", 1400)])))
    conn.receive_segment(syn)
    options = [name for name, _ in conn.segment(flags="SA")[TCP].options]
    assert options == ["MSS"], f"the SYN-ACK offers {options}, the SYN only MSS"
    assert conn.segment(flags="SA")[TCP].ack == 101 and conn.port == 33000
