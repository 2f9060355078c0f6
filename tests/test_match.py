"""Templates: unset fields are don't-care, set fields must match, the first difference is named."""

from scapy.layers.inet import ICMP, IP, UDP
from scapy.layers.l2 import ARP, Ether

from labkit.packet.match import compare, describe

FRAME = Ether(
    bytes(
        Ether(src="02:00:00:00:00:02", dst="02:00:00:00:00:01")
        / IP(src="198.18.0.2", dst="198.18.0.1")
        / ICMP(type=0, id=7)
        / b"hello"
    )
)


def test_unset_fields_are_dont_care():
    assert compare(IP() / ICMP(), FRAME).matched
    assert compare(Ether() / IP(src="198.18.0.2") / ICMP(type="echo-reply"), FRAME).matched


def test_template_may_start_below_ethernet():
    assert compare(ICMP(id=7), FRAME).matched


def test_differing_field_is_named_with_both_values():
    v = compare(IP(src="198.18.0.2") / ICMP(type="echo-request"), FRAME)
    assert not v.matched
    assert v.diff == "ICMP.type: want 'echo-request', got 'echo-reply'"


def test_payload_is_compared_exactly():
    assert compare(ICMP() / b"hello", FRAME).matched
    v = compare(ICMP() / b"hellO", FRAME)
    assert v.diff is not None and v.diff.startswith("payload:")


def test_missing_layer_and_wrong_layer():
    assert compare(ARP(), FRAME).diff == "no ARP layer"
    v = compare(IP() / UDP(), FRAME)
    assert v.diff == "layer UDP: frame has ICMP there"


def test_score_orders_near_misses():
    near = compare(IP(src="198.18.0.2", dst="198.18.0.1") / ICMP(type=8), FRAME)
    far = compare(IP(src="198.18.0.9") / ICMP(type=8), FRAME)
    assert near.score > far.score


def test_ip_options_default_is_not_a_constraint():
    assert "options" not in describe(IP(src="198.18.0.2"))
