import pytest
from scapy.layers.inet import ICMP, IP, TCP, UDP
from scapy.layers.inet6 import ICMPv6EchoRequest, IPv6
from scapy.layers.l2 import Ether

from labkit.packet.checksum import checksum_errors, checksums_present, finish_partial, leave_to_device

E = Ether(src="02:00:00:00:00:02", dst="02:00:00:00:00:01")


def wire(pkt):
    return Ether(bytes(pkt))


def test_correct_checksums_pass():
    for pkt in (
        E / IP(src="198.18.0.2", dst="198.18.0.1") / UDP(sport=1, dport=2) / b"x",
        E / IP(src="198.18.0.2", dst="198.18.0.1") / TCP(sport=1, dport=2) / b"x",
        E / IP(src="198.18.0.2", dst="198.18.0.1") / ICMP() / b"x",
        E / IPv6(src="2001:db8::2", dst="2001:db8::1") / UDP(sport=1, dport=2) / b"x",
        E / IPv6(src="2001:db8::2", dst="2001:db8::1") / ICMPv6EchoRequest(),
    ):
        assert checksum_errors(wire(pkt)) == []


def test_each_wrong_checksum_is_named():
    bad = wire(E / IP(src="198.18.0.2", dst="198.18.0.1", chksum=0x1234) / UDP(sport=1, dport=2, chksum=0x4321) / b"x")
    errors = checksum_errors(bad)
    assert len(errors) == 2
    assert errors[0].startswith("IP.chksum: 0x1234, should be")
    assert errors[1].startswith("UDP.chksum: 0x4321, should be")
    assert checksums_present(bad) == ["IP", "UDP"]


def test_udp_zero_checksum_is_none_on_ipv4_but_wrong_on_ipv6():
    assert checksum_errors(wire(E / IP(src="198.18.0.2", dst="198.18.0.1") / UDP(sport=1, dport=2, chksum=0) / b"x")) == []
    v6 = checksum_errors(wire(E / IPv6(src="2001:db8::2", dst="2001:db8::1") / UDP(sport=1, dport=2, chksum=0) / b"x"))
    assert len(v6) == 1 and v6[0].startswith("UDP.chksum: 0x0000")


def test_finish_partial_does_the_devices_part():
    from scapy.layers.inet import UDP

    from labkit.packet.checksum import finish_partial

    good = wire(E / IP(src="198.18.0.2", dst="198.18.0.1") / UDP(sport=1, dport=2) / b"payload")
    # A sender with tx offload leaves the pseudo-header sum (not complemented) in the field.
    src, dst = bytes([198, 18, 0, 2]), bytes([198, 18, 0, 1])
    length = len(bytes(good[UDP]))
    words = [
        int.from_bytes(src[:2], "big"),
        int.from_bytes(src[2:], "big"),
        int.from_bytes(dst[:2], "big"),
        int.from_bytes(dst[2:], "big"),
        17,
        length,
    ]
    seed = sum(words)
    while seed > 0xFFFF:
        seed = (seed & 0xFFFF) + (seed >> 16)
    partial = good.copy()
    partial[UDP].chksum = seed
    partial = wire(partial)
    assert checksum_errors(partial) != []
    assert finish_partial(partial)[UDP].chksum == good[UDP].chksum
    wrong_seed = partial.copy()
    wrong_seed[UDP].chksum = seed ^ 0x0100
    assert checksum_errors(finish_partial(wire(wrong_seed))) != []


@pytest.mark.parametrize("ip", [IP(src="198.18.0.1", dst="198.18.0.2"), IPv6(src="2001:db8::1", dst="2001:db8::2")])
def test_leave_to_device_is_what_finish_partial_completes(ip):
    frame = Ether(src="02:00:00:00:00:01", dst="02:00:00:00:00:02") / ip / TCP(sport=1, dport=2, seq=7) / (b"p" * 333)
    partial = leave_to_device(frame)
    assert checksum_errors(partial) != [], "a partial checksum must not pass as final"
    assert checksum_errors(finish_partial(partial)) == []
    assert finish_partial(partial)[TCP].chksum == Ether(bytes(frame))[TCP].chksum
