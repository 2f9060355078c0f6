"""labkit.rtnetlink.attributes: every attribute walked from the bytes, named, normalised and diffed;
and the probe's encoding and the normaliser's keys for RTM_GETRULE / GETNETCONF / GETSTATS /
GETNSID. Hand-made messages only: no stack."""

from __future__ import annotations

import os
import socket
import struct

import pytest

from labkit.rtnetlink import attributes, differ, probe

RTM_NEWLINK, RTM_NEWADDR, RTM_NEWROUTE = 16, 20, 24
RTM_NEWRULE, RTM_NEWNETCONF, RTM_NEWNSID, RTM_NEWSTATS = 32, 80, 88, 92


def nla(type_: int, payload: bytes) -> bytes:
    data = struct.pack("=HH", 4 + len(payload), type_) + payload
    return data + b"\x00" * (-len(data) % 4)


def u32(value: int) -> bytes:
    return struct.pack("=I", value)


def message(type_: int, body: bytes, *attrs: bytes) -> probe.Message:
    data = body + b"".join(attrs)
    (msg,) = probe.decode(probe.NLMSG_HDR.pack(16 + len(data), type_, 2, 1, 0) + data)
    return msg


def link(index: int, name: str, *attrs: bytes) -> probe.Message:
    body = struct.pack("=BxHiII", 0, 1, index, 0x1043, 0)
    return message(RTM_NEWLINK, body, nla(3, name.encode() + b"\x00"), *attrs)


def af_spec(inet6_flags: int, conf: list[int]) -> bytes:
    inet6 = nla(1, u32(inet6_flags)) + nla(2, b"".join(struct.pack("=i", v) for v in conf))
    return nla(26, nla(socket.AF_INET6, inet6))


def test_walk_names_nested_attributes_splits_devconf_and_numbers_the_unknown():
    m = link(2, "eth0", nla(4, u32(1500)), af_spec(0x80000000, [0, -1]), nla(254, b"{"))
    walked = attributes.walk(m)
    assert walked["IFLA_IFNAME"] == b"eth0\x00" and walked["IFLA_MTU"] == u32(1500)
    assert walked["IFLA_AF_SPEC"] == walked["IFLA_AF_SPEC/AF_INET6"] == attributes.CONTAINER
    assert walked["IFLA_AF_SPEC/AF_INET6/IFLA_INET6_FLAGS"] == u32(0x80000000)
    assert walked["IFLA_AF_SPEC/AF_INET6/IFLA_INET6_CONF[1]"] == struct.pack("=i", -1)
    assert walked["type 254"] == b"{"
    assert attributes.top_level_names(m) == ["IFLA_AF_SPEC", "IFLA_IFNAME", "IFLA_MTU", "type 254"]


def test_walk_counts_repeated_types_and_keeps_what_does_not_parse():
    m = link(2, "eth0", nla(52, nla(53, b"a\x00") + nla(53, b"b\x00")))
    assert {p for p in attributes.walk(m) if "ALT" in p} == {"IFLA_PROP_LIST/IFLA_ALT_IFNAME", "IFLA_PROP_LIST/IFLA_ALT_IFNAME#2"}
    broken = link(2, "eth0", struct.pack("=HH", 200, 4) + u32(1500))  # a length past the end
    assert attributes.walk(broken)[attributes.MALFORMED] == struct.pack("=HH", 200, 4) + u32(1500)


def test_the_fixed_part_of_each_message_is_skipped():
    assert {t: size for t, (size, _) in attributes.SCHEMAS.items()} == {
        "RTM_NEWLINK": 16,
        "RTM_NEWADDR": 8,
        "RTM_NEWROUTE": 12,
        "RTM_NEWNEIGH": 12,
        "RTM_NEWRULE": 12,
        "RTM_NEWNETCONF": 4,
        "RTM_NEWSTATS": 12,
        "RTM_NEWNSID": 4,
    }


def _answer(*messages: probe.Message) -> probe.Answer:
    return probe.Answer("dump", messages=list(messages))


def _differences(kernel: list[probe.Message], stack: list[probe.Message], **kwargs) -> list[differ.Difference]:
    links = [m for m in kernel if m.type == "RTM_NEWLINK"], [m for m in stack if m.type == "RTM_NEWLINK"]
    norms = differ.Normaliser(_answer(*links[0])), differ.Normaliser(_answer(*links[1]))
    return attributes.differences(_answer(*kernel), _answer(*stack), *norms, **kwargs)


def test_an_attribute_only_one_side_sends_is_a_difference_with_its_value():
    kernel = [link(2, "eth0", nla(4, u32(1500)), nla(13, u32(1000)))]
    stack = [link(2, "eth0", nla(4, u32(1400)), nla(254, b"{"))]
    found = {(d.where, d.what, d.kernel, d.stack) for d in _differences(kernel, stack)}
    assert found == {
        ("link eth0", "IFLA_MTU", 1500, 1400),
        ("link eth0", "IFLA_TXQLEN", 1000, "absent"),
        ("link eth0", "type 254", "absent", 123),
    }


def test_a_missing_container_is_one_difference_saying_what_it_holds():
    kernel = [link(2, "eth0", af_spec(0, [1, 2, 3]))]
    (d,) = _differences(kernel, [link(2, "eth0")])
    assert (d.what, d.stack) == ("IFLA_AF_SPEC", "absent")
    assert d.kernel == "present, holding 1: AF_INET6"


def test_counters_timestamps_and_other_namespaces_indexes_compare_by_presence():
    stats = nla(23, bytes(range(200)))
    kernel = [link(2, "eth0", stats, nla(35, u32(2)), nla(5, u32(7)), nla(37, u32(0)))]
    stack = [link(9, "eth0", nla(23, bytes(200)), nla(35, u32(5)), nla(5, u32(3)), nla(37, u32(4)))]
    assert _differences(kernel, stack) == []
    assert [d.what for d in _differences(kernel, [link(9, "eth0")])] == [
        "IFLA_CARRIER_CHANGES",
        "IFLA_LINK",
        "IFLA_LINK_NETNSID",
        "IFLA_STATS64",
    ]


def _address(lifetimes: bytes, stamps: bytes) -> probe.Message:
    body = struct.pack("=BBBBI", socket.AF_INET, 24, 0x80, 0, 2)
    return message(RTM_NEWADDR, body, nla(1, socket.inet_aton("198.18.0.2")), nla(6, lifetimes + stamps))


def test_address_cacheinfo_compares_lifetimes_not_timestamps():
    forever, finite = b"\xff" * 8, u32(300) + u32(600)
    kernel = [link(2, "eth0"), _address(forever, u32(100) * 2)]
    assert _differences(kernel, [link(2, "eth0"), _address(forever, u32(999) * 2)]) == []
    (d,) = _differences(kernel, [link(2, "eth0"), _address(finite, u32(100) * 2)])
    assert d.what == "IFA_CACHEINFO" and d.kernel == "ffffffffffffffff"


def _route(oif: int, *attrs: bytes) -> probe.Message:
    body = struct.pack("=BBBBBBBBI", socket.AF_INET, 24, 0, 0, 254, 2, 253, 1, 0)
    return message(RTM_NEWROUTE, body, nla(1, socket.inet_aton("198.18.0.0")), nla(4, u32(oif)), *attrs)


def test_an_interface_index_compares_as_the_link_it_names():
    kernel = [link(100, "eth0"), link(1, "lo"), _route(100)]
    assert _differences(kernel, [link(2, "eth0"), link(1, "lo"), _route(2)]) == []
    # RTA_OIF keys the route, so a route on another link is another record: none left to compare
    routes = {"keep": lambda record: record.label.startswith("route")}
    (d,) = _differences(kernel, [link(2, "eth0"), link(1, "lo"), _route(1)], **routes)
    assert d.what == "records to compare attributes on" and "route table 254 198.18.0.0/24 lo 1" in d.stack
    assert _differences(kernel, [link(2, "eth0"), link(1, "lo"), _route(1)], **routes, none_in_common=False) == []


def test_values_are_shown_as_addresses_strings_and_numbers():
    assert attributes.show("RTA_GATEWAY", socket.inet_aton("198.18.0.1")) == "198.18.0.1"
    assert attributes.show("IFLA_QDISC", b"noqueue\x00") == "noqueue"
    assert attributes.show("IFLA_AF_SPEC/AF_INET/IFLA_INET_CONF[3]", struct.pack("=i", -1)) == -1
    assert attributes.show("IFLA_MAP", bytes(32)) == "00" * 32


def test_probe_encodes_the_other_message_types():
    rule = probe.encode({"type": "RTM_GETRULE", "flags": ["REQUEST", "DUMP"], "fields": {"family": 10}}, seq=4)
    assert probe.NLMSG_HDR.unpack_from(rule)[:3] == (28, 34, 0x301) and rule[16] == 10
    netconf = probe.encode(
        {"type": "RTM_GETNETCONF", "fields": {"family": 2}, "attrs": [["NETCONFA_IFINDEX", {"ifindex_of": "lo"}]]}, seq=5
    )
    assert netconf[16:] == bytes([2, 0, 0, 0]) + nla(1, u32(socket.if_nametoindex("lo")))
    stats = probe.encode({"type": "RTM_GETSTATS", "flags": ["REQUEST", "DUMP"], "fields": {"filter_mask": 1}}, seq=6)
    assert probe.NLMSG_HDR.unpack_from(stats)[1] == 94 and struct.unpack_from("=BxHII", stats, 16) == (0, 0, 0, 1)
    nsid = probe.encode({"type": "RTM_GETNSID", "attrs": [["NETNSA_PID", {"own": "pid"}]]}, seq=7)
    assert probe.NLMSG_HDR.unpack_from(nsid)[1] == 90 and nsid[20:] == nla(2, u32(os.getpid()))


def test_probe_opens_its_own_netns_for_netnsa_fd_and_closes_it():
    data = probe.encode({"type": "RTM_GETNSID", "attrs": [["NETNSA_FD", {"own": "netns_fd"}]]}, seq=8)
    (fd,) = struct.unpack_from("=I", data, 24)
    assert os.readlink(f"/proc/self/fd/{fd}").startswith("net:[")
    p = probe.Probe()
    p.close()
    with pytest.raises(OSError):
        os.fstat(fd)


def test_normaliser_keys_rules_netconf_stats_and_nsids():
    norm = differ.Normaliser(_answer(link(2, "eth0")))
    rule = message(RTM_NEWRULE, struct.pack("=BBBBBBBBI", 2, 0, 0, 0, 254, 0, 0, 1, 0), nla(15, u32(254)), nla(6, u32(32766)))
    assert norm.record(rule).key == ("family 2", "priority 32766", "table 254")
    assert norm.record(rule).values["FRA_PRIORITY"] == 32766
    netconf = [message(RTM_NEWNETCONF, bytes([10, 0, 0, 0]), nla(1, struct.pack("=i", i))) for i in (2, -1, -2)]
    assert [norm.record(m).key for m in netconf] == [("family 10", "eth0"), ("family 10", "all"), ("family 10", "default")]
    stats = message(RTM_NEWSTATS, struct.pack("=BxHII", 0, 0, 2, 1), nla(1, bytes(200)))
    assert norm.record(stats).label() == "stats family 0 eth0" and norm.record(stats).values["filter_mask"] == 1
    own, peer = (message(RTM_NEWNSID, bytes(4), nla(1, struct.pack("=i", v))) for v in (-1, 0))
    assert norm.record(own).key == norm.record(peer).key == ("nsid",)
    compare = attributes.comparable
    assert compare("NETNSA_NSID", struct.pack("=i", -1), norm) == "not assigned"
    assert compare("NETNSA_NSID", u32(3), norm) == compare("NETNSA_NSID", u32(0), norm) == "assigned"


def test_support_table_names_every_attribute_the_answer_carried():
    answer = _answer(link(2, "eth0", nla(4, u32(1500)), nla(254, b"{")))
    assert differ.attribute_names(answer) == {"RTM_NEWLINK": ["IFLA_IFNAME", "IFLA_MTU", "type 254"]}


def test_route_and_inet6_cache_info_compare_what_is_stable():
    """RTA_CACHEINFO keeps whether a route expires and its error, not its use; the IPv6 link cache
    info keeps max_reasm_len and retrans_time, not the timestamp or the random reachable_time."""
    names, comparable = differ.Normaliser(), attributes.comparable
    permanent = struct.pack("=IIiIIIII", 1, 500, 0, 0, 9, 0, 0, 0)
    used_more = struct.pack("=IIiIIIII", 3, 900, 0, 0, 40, 0, 0, 0)
    expiring = struct.pack("=IIiIIIII", 1, 500, 6000, 0, 9, 0, 0, 0)
    assert comparable("RTA_CACHEINFO", permanent, names) == comparable("RTA_CACHEINFO", used_more, names)
    assert comparable("RTA_CACHEINFO", permanent, names) != comparable("RTA_CACHEINFO", expiring, names)
    path = "IFLA_AF_SPEC/AF_INET6/IFLA_INET6_CACHEINFO"
    one, other = struct.pack("=IIII", 65535, 100, 30000, 1000), struct.pack("=IIII", 65535, 900, 21000, 1000)
    assert comparable(path, one, names) == comparable(path, other, names)
    assert comparable(path, one, names) != comparable(path, struct.pack("=IIII", 65535, 100, 30000, 2000), names)
