"""labkit.rtnetlink.probe and .differ: encoding, decoding, normalising and diffing rtnetlink answers,
and the probe run for real in a kernel namespace."""

from __future__ import annotations

import errno
import json
import struct
import subprocess

import pytest

from labkit.errors import LabError, LabInputError
from labkit.net.nlmsg import split
from labkit.net.plan import AddressPlan
from labkit.rtnetlink import clients, differ, probe
from labkit.rtnetlink.differential import LINKS
from labkit.rtnetlink.support import merge
from labkit.stacks import resolve
from labkit.testbed import Testbed


def test_encode_uses_pyroute2_and_resolves_nothing_without_ifindex_of():
    data = probe.encode({"type": "RTM_GETLINK", "flags": ["REQUEST", "DUMP"], "fields": {"family": 0}}, seq=9)
    length, type_, flags, seq, pid = probe.NLMSG_HDR.unpack_from(data)
    assert (length, type_, flags, seq, pid) == (len(data), 18, 0x301, 9, 0)
    assert len(data) == 32  # header + ifinfomsg


def test_encode_without_family_byte_is_a_bare_header():
    data = probe.encode({"type": "RTM_GETLINK", "flags": ["REQUEST", "DUMP"], "family_byte": False}, seq=3)
    assert len(data) == 16 and struct.unpack_from("=I", data)[0] == 16


def test_raw_message_may_lie_about_its_length():
    raw = bytes.fromhex(probe.raw_message(18, 1, 5, b"\x00" * 4, length=200))
    assert len(raw) == 20 and struct.unpack_from("=I", raw)[0] == 200


def test_encode_refuses_what_it_cannot_encode_naming_what_is_allowed():
    with pytest.raises(LabInputError, match=r"request type 'RTM_NEWQDISC'; allowed: RTM_NEWLINK, .*RTM_GETNEIGH, .*RTM_GETNSID"):
        probe.encode({"type": "RTM_NEWQDISC"}, seq=1)
    with pytest.raises(LabInputError, match=r"request flag 'DUMPS'; allowed: REQUEST, "):
        probe.encode({"type": "RTM_GETLINK", "flags": ["DUMPS"]}, seq=1)


class _Broken:
    """A stack whose `run` fails as a program does that cannot start inside it."""

    id = "broken"

    def run(self, argv, timeout):
        return subprocess.CompletedProcess(argv, 1, "", "Traceback ...\nModuleNotFoundError: pyroute2")


def test_a_probe_or_client_run_that_fails_is_a_lab_error_with_its_stderr():
    with pytest.raises(LabError, match=r"(?s)labkit.rtnetlink.probe in broken exited 1: .*ModuleNotFoundError: pyroute2"):
        probe.ask(_Broken(), {"links": LINKS})
    with pytest.raises(LabError, match=r"(?s)labkit.rtnetlink.clients in broken exited 1: .*ModuleNotFoundError"):
        clients.ask(_Broken(), [])


def _error(err: int, quoted: bytes) -> bytes:
    body = struct.pack("=i", -err) + quoted
    return probe.NLMSG_HDR.pack(16 + len(body), 2, 0, 7, 1234) + body


def test_decode_reads_an_error_and_the_header_it_quotes():
    request = bytes.fromhex(probe.raw_message(18, 1, 7, b"\x00" * 16))
    (msg,) = probe.decode(_error(errno.ENODEV, request))
    assert msg.type == "NLMSG_ERROR" and msg.error == errno.ENODEV
    assert msg.echoed == {"length": 32, "type": 18, "flags": 1, "seq": 7, "pid": 0}


def test_decode_keeps_the_bytes_of_a_message_whose_length_overruns():
    data = probe.NLMSG_HDR.pack(400, 16, 0, 1, 0) + b"\x00" * 16
    (msg,) = probe.decode(data)
    assert msg.type == "MALFORMED" and msg.decode_error == "bad nlmsg_len" and msg.raw == data.hex()


def test_answer_errno_and_ack():
    ack = probe.Answer("a", messages=[probe.Message("NLMSG_ERROR", 0, 1, 0, 36, error=0)])
    refused = probe.Answer("b", messages=[probe.Message("NLMSG_ERROR", 0, 1, 0, 36, error=errno.EPERM)])
    assert ack.acked and ack.errno is None
    assert not refused.acked and refused.errno == errno.EPERM
    assert probe.Answer("c", send_errno=errno.EACCES).errno == errno.EACCES


def _link(index: int, name: str, mtu: int) -> probe.Message:
    return probe.Message(
        "RTM_NEWLINK", 2, 1, 0, 0, fields={"family": 0, "index": index, "ifi_type": 1, "flags": 0x1043},
        attrs=[["IFLA_IFNAME", name], ["IFLA_MTU", mtu]],
    )  # fmt: skip


def _route(oif: int) -> probe.Message:
    fields = {"family": 2, "dst_len": 24, "src_len": 0, "tos": 0, "table": 254, "proto": 2, "scope": 253, "type": 1}
    return probe.Message("RTM_NEWROUTE", 2, 1, 0, 0, fields=fields, attrs=[["RTA_DST", "198.18.0.0"], ["RTA_OIF", oif]])


def test_normaliser_names_interfaces_so_different_indexes_compare_equal():
    kernel = differ.Normaliser(probe.Answer("l", messages=[_link(100, "eth0", 1500)]))
    stack = differ.Normaliser(probe.Answer("l", messages=[_link(2, "eth0", 1500)]))
    a, b = kernel.record(_route(100)), stack.record(_route(2))
    assert a.key == b.key == ("table 254", "198.18.0.0/24", "eth0", 1)
    assert differ.diff_records([a], [b]) == []


def test_differ_names_the_attribute_and_both_values():
    norm = differ.Normaliser()
    (d,) = differ.diff_records([norm.record(_link(1, "eth0", 1500))], [norm.record(_link(1, "eth0", 1400))])
    assert (d.where, d.what, d.kernel, d.stack) == ("link eth0", "IFLA_MTU", 1500, 1400)
    assert "IFLA_MTU kernel 1500, stack 1400" in str(d)


def test_differ_only_and_ignore():
    norm = differ.Normaliser()
    a, b = norm.record(_link(1, "eth0", 1500)), norm.record(_link(1, "eth0", 1400))
    assert differ.diff_records([a], [b], only=()) == []
    assert differ.diff_records([a], [b], ignore=("IFLA_MTU",)) == []
    missing = differ.diff_records([a], [])
    assert [(d.what, d.kernel, d.stack) for d in missing] == [("record", "present", "absent")]


def test_support_table_merges_rows_worst_status_first():
    rows = [
        {"check": f"c-{status}", "message": "RTM_GETNEIGH", "stack": "s", "status": status, "differences": [f"d-{status}"],
         "attrs": {"RTM_NEWNEIGH": ["NDA_DST"]}, "kernel_attrs": {"RTM_NEWNEIGH": ["NDA_DST", "NDA_LLADDR"]}}
        for status in ("supported", "unsupported", "differs")
    ]  # fmt: skip
    merged = merge(rows)
    assert set(merged["messages"]["RTM_GETNEIGH"]) == {"s"}
    cell = merged["messages"]["RTM_GETNEIGH"]["s"]
    assert cell["status"] == "unsupported"
    assert cell["checks"] == {"c-supported": "supported", "c-unsupported": "unsupported", "c-differs": "differs"}
    assert cell["attrs"] == ["NDA_DST"] and cell["differences"] == ["d-supported", "d-unsupported", "d-differs"]
    assert merged["kernel_attrs"]["RTM_GETNEIGH"] == ["NDA_DST", "NDA_LLADDR"]
    assert json.loads(json.dumps(merged)) == merged  # as results.json carries it


def test_one_splitter_for_the_probe_and_the_topology_builder():
    ack = _error(0, b"")
    odd = probe.NLMSG_HDR.pack(21, 2, 0, 7, 1) + b"\x00" * 5  # a length not a multiple of 4
    assert [len(chunk) for _, chunk in split(odd + b"\x00" * 3 + ack)] == [21, 20]  # the padding skipped
    overrun = probe.NLMSG_HDR.pack(400, 16, 0, 1, 0) + b"\x00" * 16
    (_, first), (header, rest) = split(ack + overrun)
    assert first == ack and header.length == 400 and rest == overrun  # the rest, for the caller to judge
    assert [chunk for _, chunk in split(ack + b"\x00" * 8)] == [ack]  # a tail shorter than a header: dropped


@pytest.fixture(scope="module")
def kernel():
    with Testbed(resolve("linux")[0], AddressPlan()).up() as bed:
        yield bed


def test_probe_in_a_kernel_namespace(kernel):
    answers = probe.ask(
        kernel.stack,
        {
            "links": {"type": "RTM_GETLINK", "flags": ["REQUEST", "DUMP"], "fields": {"family": 0}},
            "eth0": {"type": "RTM_GETLINK", "flags": ["REQUEST"], "fields": {"family": 0, "index": {"ifindex_of": "eth0"}}},
            "missing": {"type": "RTM_GETLINK", "flags": ["REQUEST"], "fields": {"family": 0, "index": 0x7FFF0000}},
            "short": {"raw": probe.raw_message(18, 0x301, 5)},
        },
    )
    assert {m.attr("IFLA_IFNAME") for m in answers["links"].payload()} == {"lo", "eth0"}
    assert answers["links"].messages[-1].type == "NLMSG_DONE"
    assert [m.attr("IFLA_IFNAME") for m in answers["eth0"].payload()] == ["eth0"]
    assert answers["missing"].errno == errno.ENODEV
    assert answers["short"].silent


def test_probe_without_cap_net_admin_gets_eperm_on_a_change(kernel):
    change = {
        "type": "RTM_SETLINK",
        "flags": ["REQUEST", "ACK"],
        "fields": {"family": 0, "index": 0x7FFF0000},
        "attrs": [["IFLA_MTU", 1300]],
    }
    assert probe.ask(kernel.stack, {"c": change}, unprivileged=True)["c"].errno == errno.EPERM
    assert probe.ask(kernel.stack, {"c": change})["c"].errno == errno.ENODEV


def test_probe_asks_the_other_message_types_in_a_kernel_namespace(kernel):
    """RTM_GETRULE, RTM_GETNETCONF, RTM_GETSTATS, RTM_GETNSID: encoded, answered, decoded."""
    answers = probe.ask(
        kernel.stack,
        {
            "rules": {"type": "RTM_GETRULE", "flags": ["REQUEST", "DUMP"], "fields": {"family": 2}},
            "netconf": {
                "type": "RTM_GETNETCONF",
                "fields": {"family": 2},
                "attrs": [["NETCONFA_IFINDEX", {"ifindex_of": "eth0"}]],
            },
            "stats": {"type": "RTM_GETSTATS", "fields": {"ifindex": {"ifindex_of": "eth0"}, "filter_mask": 1}},
            "own-nsid": {"type": "RTM_GETNSID", "attrs": [["NETNSA_FD", {"own": "netns_fd"}]]},
        },
    )
    assert sorted(m.attr("FRA_PRIORITY", 0) for m in answers["rules"].payload()) == [0, 32766, 32767]
    ((netconf,),) = [answers["netconf"].payload()]
    assert netconf.type == "RTM_NEWNETCONF" and netconf.attr("NETCONFA_FORWARDING") == 0
    ((stats,),) = [answers["stats"].payload()]
    assert stats.type == "RTM_NEWSTATS" and [name for name, _ in stats.attrs] == ["IFLA_STATS_LINK_64"]
    ((nsid,),) = [answers["own-nsid"].payload()]
    assert nsid.attr("NETNSA_NSID") == 0xFFFFFFFF  # NETNSA_NSID_NOT_ASSIGNED (-1): its own namespace
