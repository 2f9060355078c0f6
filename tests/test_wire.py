"""The Wire against the real kernel: inject, expect, the timeout explanation, capture, pcap."""

import pytest
from scapy.layers.inet import ICMP, IP, UDP
from scapy.layers.l2 import ARP, Ether
from scapy.utils import rdpcap

from labkit.errors import ExpectTimeout, LabInputError, UnexpectedFrame
from labkit.net.plan import AddressPlan
from labkit.net.topology import Topology
from labkit.packet.wire import Wire


@pytest.fixture
def pair():
    """The standard topology with the kernel as the stack, and a Wire on the peer end."""
    plan = AddressPlan()
    topo, stack_end, peer_end = plan.build()
    with topo:
        with Wire(peer_end.ns.netns, peer_end.name, mac=peer_end.mac, far_mac=stack_end.mac) as w:
            w.own(plan.peer4)
            w.own(plan.peer6)
            yield plan, w


def ping(plan, seq=1):
    return IP(src=plan.peer4, dst=plan.stack4) / ICMP(id=9, seq=seq)


def test_expect_returns_the_matching_frame(pair):
    plan, w = pair
    reply = w.send_and_expect(ping(plan), IP(src=plan.stack4) / ICMP(type="echo-reply", seq=1), timeout=2)
    assert reply[ICMP].id == 9


def test_timeout_names_the_closest_frame_and_the_field(pair):
    plan, w = pair
    w.send_and_expect(ping(plan, seq=7), ICMP(type="echo-reply", seq=7), timeout=2)  # peer resolved
    w.send(ping(plan))
    with pytest.raises(ExpectTimeout) as err:
        w.expect(IP(src=plan.stack4) / ICMP(type="echo-reply", seq=2), timeout=1.5)
    text = str(err.value)
    assert "no frame matched IP(src='198.18.0.2') / ICMP(type='echo-reply', seq=0x2) within 1.5s" in text
    assert "ICMP.seq: want 0x2, got 0x1" in text


def test_timeout_without_any_frame_says_so():
    topo = Topology()
    # Two quiet ends: no addresses, no IPv6, so nothing is sent on its own.
    _, peer_end = topo.veth(topo.namespace("a"), "e0", topo.namespace("b"), "e1", ipv6=False)
    with topo, Wire(peer_end.ns.netns, peer_end.name, mac=peer_end.mac) as w:
        with pytest.raises(ExpectTimeout, match="no incoming frame arrived at all"):
            w.expect(UDP(dport=9), timeout=0.2)


def test_expect_none_fails_when_the_frame_comes(pair):
    plan, w = pair
    w.send_and_expect(ping(plan), ICMP(type="echo-reply"), timeout=2)  # the peer is resolved now
    w.send(ping(plan, seq=2))
    with pytest.raises(UnexpectedFrame, match="must not come"):
        w.expect_none(ICMP(type="echo-reply", seq=2), timeout=2)


def test_the_wire_answers_neighbour_solicitations_for_owned_addresses(pair):
    plan, w = pair
    w.send(ping(plan))
    w.expect(ARP(op="who-has", pdst=plan.peer4), timeout=2)
    # Without the Wire's answer there would be no reply (the peer kernel has no address).
    w.expect(ICMP(type="echo-reply"), timeout=2)
    ours = [f.packet for f in w.frames if f.outgoing and f.packet.haslayer(ARP)]
    assert ours and ours[0][ARP].op == 2 and ours[0][ARP].hwsrc == w.mac


def test_drain_consumes(pair):
    plan, w = pair
    w.send(ping(plan))
    w.expect(ICMP(type="echo-reply"), timeout=2)
    w.send(ping(plan, seq=2))
    w.send(ping(plan, seq=3))
    w.expect(ICMP(type="echo-reply", seq=2), timeout=2)
    w.expect(ICMP(type="echo-reply", seq=3), timeout=2)  # both replies are in; drain takes the rest
    taken = w.drain()
    assert all(not (f.packet.haslayer(ICMP) and f.packet[ICMP].type == 0) for f in taken), "drain returned consumed frames"
    with w.capture("icmp[icmptype] == icmp-echoreply") as cap:
        w.send(ping(plan, seq=4))
        assert cap.wait(2), "no echo reply to the fourth ping"
    assert any(f.packet.haslayer(ICMP) and f.packet[ICMP].seq == 4 for f in w.drain()), "drain missed a new frame"


def test_pcap_holds_both_directions(pair, tmp_path):
    plan, w = pair
    w.send_and_expect(ping(plan), ICMP(type="echo-reply"), timeout=2)
    frames = rdpcap(str(w.write_pcap(tmp_path / "x.pcap")))
    kinds = [(p[IP].src, p[ICMP].type) for p in frames if p.haslayer(ICMP)]
    assert (plan.peer4, 8) in kinds and (plan.stack4, 0) in kinds


def test_capture_filters_in_the_kernel_and_counts(pair):
    plan, w = pair
    with w.capture(f"icmp and src host {plan.stack4}") as cap:
        for seq in range(1, 6):
            w.send(ping(plan, seq))
        got = []
        while len(got) < 5:
            more = cap.wait(2)
            assert more, f"capture saw only {len(got)} of 5 replies"
            got += more
        assert {f.packet[ICMP].type for f in got} == {0}
        assert cap.count() == 5


def test_sending_outside_the_lab_ranges_is_refused(pair):
    plan, w = pair
    with pytest.raises(LabInputError, match="outside the lab ranges"):
        w.send(IP(src=plan.peer4, dst="8.8.8.8") / ICMP())
    with pytest.raises(LabInputError, match="must be set explicitly"):
        w.send(IP(dst=plan.stack4) / ICMP())


def test_bad_capture_filter_is_refused(pair):
    _, w = pair
    with pytest.raises(LabInputError, match="bad capture filter 'icmp and and'"):
        w.capture("icmp and and")


def test_inject_sends_prebuilt_bytes(pair):
    plan, w = pair
    frame = bytes(Ether(src=w.mac, dst=w.far_mac) / IP(src=plan.peer4, dst=plan.stack4) / UDP(sport=1, dport=9) / b"z")
    with w.capture(f"udp and dst host {plan.stack4}") as cap:
        assert w.inject([frame] * 100) == 100
        # The capture sits on the sending end, so it sees the frames leave.
        assert cap.count() == 100


def test_forget_drops_everything_recorded_even_past_one_read_batch(pair):
    plan, w = pair
    old = bytes(Ether(src=w.mac, dst=w.far_mac) / IP(src=plan.peer4, dst=plan.stack4) / UDP(sport=1, dport=9) / b"old")
    w.inject([old] * 6000)  # more than one read pass takes (READ_BATCH)
    w.forget()
    assert w.frames == []
    w.send(ping(plan, seq=7))
    w.expect(IP(src=plan.stack4) / ICMP(type="echo-reply", seq=7), timeout=2)
    stale = [f for f in w.frames if f.packet.haslayer(UDP) and f.packet[UDP].dport == 9]
    assert stale == [], f"{len(stale)} frames of before forget() are back in the record"
