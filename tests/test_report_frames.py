"""The report's inline frames: real pcaps and expectations, decoded one frame per line, marked,
bounded, rendered autoescaped; and the Wire recording which frame came closest."""

from __future__ import annotations

import gzip
import json
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
from scapy.layers.inet import ICMP, IP, TCP
from scapy.layers.l2 import ARP, Ether
from scapy.packet import Packet
from scapy.utils import wrpcap

from reports import frames as fr
from reports.frames import FROM_STACK, TO_STACK, UNSURE, frame_views

WIRE, STACK = "02:00:00:00:00:01", "02:00:00:00:00:02"
T0 = 1796165268.5
PAYLOAD = b"<script>alert(1)</script>"


def stamped(pkts: list[Packet], start: float = T0, step: float = 0.001) -> list[Packet]:
    for n, p in enumerate(pkts):
        p.time = start + n * step
    return pkts


def conversation() -> list[Packet]:
    """The Wire resolves nothing, sends a SYN; the stack answers is-at, then RST with a payload."""
    ip_in = IP(src="198.18.0.1", dst="198.18.0.2")
    ip_out = IP(src="198.18.0.2", dst="198.18.0.1")
    return stamped(
        [
            Ether(src=WIRE, dst="ff:ff:ff:ff:ff:ff") / ARP(op=1, psrc="198.18.0.1", pdst="198.18.0.2", hwsrc=WIRE),
            Ether(src=STACK, dst=WIRE) / ARP(op=2, psrc="198.18.0.2", pdst="198.18.0.1", hwsrc=STACK, hwdst=WIRE),
            Ether(src=WIRE, dst=STACK) / ip_in / TCP(sport=40000, dport=80, flags="S", seq=1),
            Ether(src=STACK, dst=WIRE) / ip_out / TCP(sport=80, dport=40000, flags="R", seq=0, ack=2) / PAYLOAD,
        ]
    )


def expects(closest_frame: int | None = 3) -> list[dict[str, object]]:
    entries: list[dict[str, object]] = [
        {
            "kind": "expect",
            "template": "ARP(op='is-at')",
            "timeout": 1,
            "started": T0,
            "outcome": "matched",
            "frame": 1,
            "closest": None,
        },
        {
            "kind": "expect",
            "template": "IP(src='198.18.0.2') / TCP(flags='SA')",
            "timeout": 1,
            "started": T0 + 0.002,
            "outcome": "timeout",
            "frame": None,
            "closest": "TCP.flags: want 'SA', got 'R'",
        },
    ]
    if closest_frame is not None:
        for e in entries:
            e["closest_frame"] = closest_frame if e["outcome"] == "timeout" else None
    return entries


def cell(folder: Path, stack: str = "gvisor", pkts: list[Packet] | None = None, exp: object = None) -> list[str]:
    folder.mkdir(parents=True, exist_ok=True)
    wrpcap(str(folder / f"{stack}.pcap"), conversation() if pkts is None else pkts)
    (folder / f"{stack}.expects.json").write_text(json.dumps(expects() if exp is None else exp))
    (folder / f"{stack}.commands.txt").write_text("ip link\n")
    return [str(folder / f"{stack}.{what}") for what in ("pcap", "expects.json", "commands.txt")]


def render(views: list[dict[str, object]]) -> str:
    from reports.html import environment

    return environment().from_string('{% import "frames.html.j2" as f %}{{ f.frames(v) }}').render(v=views)


def tree(html: str) -> ET.Element:
    """The rendered fragment as a tree (it is well-formed: every element closed, text escaped)."""
    return ET.fromstring(f"<root>{html}</root>")


def test_one_line_per_frame_with_time_direction_summary_and_marks(tmp_path):
    (view,) = frame_views(cell(tmp_path / "c"))
    assert (view["source"], view["file"], view["total"], view["left_out"]) == ("wire", "gvisor.pcap", 4, 0)
    lines = view["frames"]
    assert [f["index"] for f in lines] == [0, 1, 2, 3]
    assert [f["time"] for f in lines] == ["+0.000000", "+0.001000", "+0.002000", "+0.003000"]
    assert [f["direction"] for f in lines] == [TO_STACK, FROM_STACK, TO_STACK, FROM_STACK]
    assert lines[2]["summary"] == "Ether / IP / TCP 198.18.0.1:40000 > 198.18.0.2:http S"
    assert [f["marks"] for f in lines] == [[], ["matched"], [], ["closest"]]
    (note,) = lines[3]["notes"]
    assert note["template"] == "IP(src='198.18.0.2') / TCP(flags='SA')" and note["differs"] == "TCP.flags: want 'SA', got 'R'"
    assert not note["guessed"]
    marked = [c["text"] for c in lines[3]["decode"] if c["differs"]]
    assert marked == ["        flags     = R"]
    whole = "".join(c["text"] for c in lines[3]["decode"])
    assert whole.startswith("###[ Ethernet ]###\n") and "###[ TCP ]###" in whole and "\n        flags     = R\n" in whole
    assert view["stack_mac"] == STACK and view["note"] is None
    assert [(e["outcome"], e["frame"], e["closest_frame"]) for e in view["expectations"]] == [
        ("matched", 1, None),
        ("timeout", None, 3),
    ]


def test_the_page_shows_frames_as_the_dom_contract_says_and_escapes_payloads(tmp_path):
    html = render(frame_views(cell(tmp_path / "c")))
    root = tree(html)
    (div,) = root.findall("div[@class='frames']")
    assert div.get("data-source") == "wire"
    details = div.findall("details")
    assert [d.get("class") for d in details] == ["frame", "frame matched", "frame", "frame closest"]
    summary = details[3].find("summary")
    assert summary is not None
    text = "".join(summary.itertext())
    assert text.startswith(f"#3 +0.003000 {FROM_STACK} Ether / IP / TCP 198.18.0.2:http > 198.18.0.1:40000 R / Raw")
    assert "TCP.flags: want 'SA', got 'R'" in text
    pre = details[3].find("pre[@class='decode']")
    assert pre is not None
    (mark,) = pre.findall("mark[@class='differs']")
    assert mark.text == "        flags     = R"
    assert "load      = b'<script>alert(1)</script>'" in "".join(pre.itertext())
    assert "<script>" not in html and "&lt;script&gt;" in html
    assert details[0].find("pre/mark") is None


def test_every_capture_of_the_cell_gzipped_or_not_and_raw_ip(tmp_path):
    folder = tmp_path / "c"
    paths = cell(folder)
    wrpcap(str(folder / "gvisor.sandbox.pcap"), conversation()[:2])  # the stack's end saw fewer
    raw_ip = stamped([IP(bytes(p[IP])) for p in conversation()[2:]])  # the stack's own capture: no Ethernet header
    wrpcap(str(folder / "gvisor.netstack.pcap"), raw_ip, linktype=101)
    plain = folder / "scratch.pcap"
    outside = stamped([Ether(src="02:aa:00:00:00:01", dst="02:aa:00:00:00:02") / IP(src="198.19.1.1", dst="198.19.1.2") / ICMP()])
    wrpcap(str(plain), outside)
    (folder / "gvisor.uplink.pcap.gz").write_bytes(gzip.compress(plain.read_bytes()))
    plain.unlink()
    (folder / "gvisor.sandbox.drops.txt").write_text("The kernel dropped 2 frame(s) at the lab's capture\n")
    names = ("uplink.pcap.gz", "netstack.pcap", "sandbox.pcap", "sandbox.drops.txt", "runsc-boot.log.gz")
    paths += [str(folder / f"gvisor.{n}") for n in names]
    views = frame_views(paths)
    assert [(v["source"], v["file"], v["total"]) for v in views] == [
        ("wire", "gvisor.pcap", 4),
        ("sandbox", "gvisor.sandbox.pcap", 2),
        ("netstack", "gvisor.netstack.pcap", 2),
        ("uplink", "gvisor.uplink.pcap.gz", 1),
    ]
    sandbox, netstack, uplink = views[1:]
    assert sandbox["note"] == "The kernel dropped 2 frame(s) at the lab's capture" and views[0]["note"] is None
    assert [f["direction"] for f in sandbox["frames"]] == [TO_STACK, FROM_STACK]
    assert sandbox["frames"][1]["marks"] == []  # the expectations number the Wire's frames only
    assert [f["direction"] for f in netstack["frames"]] == [TO_STACK, FROM_STACK]  # by the stack's addresses
    assert netstack["frames"][1]["summary"] == "IP / TCP 198.18.0.2:http > 198.18.0.1:40000 R / Raw"
    # Where the stack's side has the Wire's frames: the sandbox lost the SYN and the RST.
    assert [f["twins"] for f in sandbox["frames"]] == [["wire #0"], ["wire #1"]]
    assert [f["twins"] for f in netstack["frames"]] == [["wire #2"], ["wire #3"]]
    assert [f["absent"] for f in sandbox["frames"] + netstack["frames"]] == [[], [], [], []]
    assert [(f["twins"], f["absent"]) for f in views[0]["frames"]] == [
        (["sandbox #0"], []),  # ARP: nothing a capture from the IP header on could hold
        (["sandbox #1"], []),
        (["netstack #0"], ["not in sandbox"]),
        (["netstack #1"], ["not in sandbox"]),
    ]
    assert views[0]["overlap"] == ["2 of 4 in sandbox", "2 of 2 in netstack"]
    assert sandbox["overlap"] == ["2 of 2 on the wire"] and uplink["overlap"] == []
    assert uplink["frames"][0]["direction"] == UNSURE  # neither side's MAC is on the uplink
    assert "198.19.1.1 > 198.19.1.2" in uplink["frames"][0]["summary"]
    root = tree(render(views))
    assert [d.get("data-source") for d in root.findall("div")] == ["wire", "sandbox", "netstack", "uplink"]
    wire_div = root.find("div[@data-source='wire']")
    assert wire_div is not None
    absent = wire_div.findall("details[@data-index='2']/summary/span[@class='absent']")
    assert [a.text for a in absent] == ["not in sandbox"]
    assert wire_div.findall("details[@data-index='0']/summary/span[@class='absent']") == []
    head = wire_div.find("p[@class='frames-head']")
    assert head is not None and "2 of 4 in sandbox" in "".join(head.itertext())


def test_a_long_capture_keeps_the_marked_frames_their_neighbours_and_says_how_many_are_left_out(tmp_path):
    ip = IP(src="198.18.0.2", dst="198.18.0.1")
    pkts = stamped([Ether(src=STACK, dst=WIRE) / ip / TCP(sport=80, dport=1000, seq=n, flags="A") for n in range(500)])
    exp = [
        {
            "kind": "expect",
            "template": "TCP(seq=300)",
            "timeout": 1,
            "started": T0,
            "outcome": "matched",
            "frame": 300,
            "closest": None,
        },
        {
            "kind": "expect",
            "template": "TCP(flags='F')",
            "timeout": 1,
            "started": T0,
            "outcome": "timeout",
            "frame": None,
            "closest": "TCP.flags: want 'F', got 'A'",
            "closest_frame": 420,
        },
    ]
    (view,) = frame_views(cell(tmp_path / "c", pkts=pkts, exp=exp))
    shown = [f["index"] for f in view["frames"]]
    assert len(shown) == fr.LIMIT and view["left_out"] == 500 - fr.LIMIT and view["total"] == 500
    assert {298, 299, 300, 301, 302, 418, 419, 420, 421, 422, 497, 498, 499} <= set(shown)
    assert shown[:5] == [0, 1, 2, 3, 4]
    assert sum(f["gap"] for f in view["frames"]) + view["tail_gap"] == view["left_out"]
    gap_at_300 = next(f["gap"] for f in view["frames"] if f["index"] == 298)
    assert gap_at_300 == 298 - shown[shown.index(298) - 1] - 1 > 0
    assert all(f["decode"] for f in view["frames"])
    html = render([view])
    assert html.count('<details class="frame') == fr.LIMIT
    assert f"{500 - fr.LIMIT} left out" in html and f"… {gap_at_300} frames left out …" in html


def test_missing_corrupt_and_undecodable_evidence_is_shown_not_raised(tmp_path):
    folder = tmp_path / "c"
    paths = cell(folder)
    data = (folder / "gvisor.pcap").read_bytes()
    (folder / "gvisor.pcap").write_bytes(data[:-10])  # the last frame cut short
    (folder / "gvisor.expects.json").write_text("[{not json")
    (folder / "gvisor.sandbox.pcap").write_bytes(b"this is no pcap")
    views = frame_views([*paths, str(folder / "gvisor.sandbox.pcap"), str(folder / "gvisor.netstack.pcap")])
    wire, sandbox, netstack = views
    assert wire["total"] == 3 and "ends inside frame 3" in wire["note"] and "cannot read gvisor.expects.json" in wire["note"]
    assert sandbox["total"] == 0 and sandbox["note"] == "gvisor.sandbox.pcap is not a pcap file"
    assert netstack["total"] == 0 and netstack["note"].startswith("cannot read gvisor.netstack.pcap")
    html = render(views)
    assert "is not a pcap file" in html and html.count('<div class="frames"') == 3

    other = tmp_path / "d"
    other.mkdir()
    wrpcap(str(other / "gvisor.pcap"), stamped([Ether(src=STACK, dst=WIRE, type=0x0800) / b"\x45\x00"]))
    (view,) = frame_views([str(other / "gvisor.pcap")])
    assert view["total"] == 1 and view["frames"][0]["summary"]  # a broken IP header still gives a line


def test_a_file_many_cells_name_is_read_once(tmp_path, monkeypatch):
    first = cell(tmp_path / "c", stack="gvisor")
    reads: list[str] = []
    real_read = fr._read
    monkeypatch.setattr(fr, "_read", lambda path: reads.append(path) or real_read(path))
    fr._captures.clear()
    second_expects = tmp_path / "c" / "gvisor-ch4.expects.json"
    second_expects.write_text(json.dumps(expects()[:1]))
    a = frame_views(first)
    b = frame_views([first[0], str(second_expects)])  # another variant, the same stored pcap
    assert len(reads) == 1
    assert a[0]["frames"][3]["marks"] == ["closest"] and b[0]["frames"][3]["marks"] == []


def test_the_sides_come_from_the_expectations_when_the_macs_are_random(tmp_path):
    a, b = "5e:11:22:33:44:55", "7a:66:77:88:99:00"  # neither is the default plan's
    pkts = stamped(
        [
            Ether(src=a, dst=b) / IP(src="10.0.0.1", dst="10.0.0.2") / ICMP(),
            Ether(src=b, dst=a) / IP(src="10.0.0.2", dst="10.0.0.1") / ICMP(type=0),
        ]
    )
    matched = [{"kind": "expect", "template": "ICMP(type=0)", "timeout": 1, "started": T0, "outcome": "matched", "frame": 1}]
    (view,) = frame_views(cell(tmp_path / "c", pkts=pkts, exp=matched))
    assert view["stack_mac"] == b and [f["direction"] for f in view["frames"]] == [TO_STACK, FROM_STACK]
    (view,) = frame_views(cell(tmp_path / "d", pkts=pkts, exp=[]))
    assert [f["direction"] for f in view["frames"]] == [UNSURE, UNSURE] and "not clear" in view["note"]


def test_an_expectation_written_before_closest_frame_existed_is_marked_by_the_fields_value(tmp_path):
    (view,) = frame_views(cell(tmp_path / "c", exp=expects(closest_frame=None)))
    assert view["frames"][3]["marks"] == ["closest"] and view["frames"][3]["notes"][0]["guessed"]
    assert "by the field" in render([view])


def test_a_real_wire_timeout_records_the_closest_frame(tmp_path):
    from labkit.errors import ExpectTimeout
    from labkit.net.plan import AddressPlan
    from labkit.packet.wire import Wire

    plan = AddressPlan()
    topo, stack_end, peer_end = plan.build()
    with topo, Wire(peer_end.ns.netns, peer_end.name, mac=peer_end.mac, far_mac=stack_end.mac) as w:
        w.own(plan.peer4)
        ping = IP(src=plan.peer4, dst=plan.stack4) / ICMP(id=9, seq=1)
        w.send_and_expect(ping, ICMP(type="echo-reply", seq=1), timeout=2)  # the peer is resolved now
        w.send(IP(src=plan.peer4, dst=plan.stack4) / ICMP(id=9, seq=5))
        with pytest.raises(ExpectTimeout):
            w.expect(IP(src=plan.stack4) / ICMP(type="echo-reply", seq=6), timeout=1)
        missed = w.expectations[-1]
        assert missed.outcome == "timeout" and missed.frame is None and missed.closest == "ICMP.seq: want 0x6, got 0x5"
        assert missed.closest_frame is not None
        near = w.frames[missed.closest_frame]
        assert not near.outgoing and near.packet[ICMP].type == 0 and near.packet[ICMP].seq == 5
        assert w.expectations[0].closest_frame is None  # matched: `frame` says it
        folder = tmp_path / "evidence" / "check"
        folder.mkdir(parents=True)
        w.write_pcap(folder / "linux.pcap")
        w.write_expectations(folder / "linux.expects.json")
    written = json.loads((folder / "linux.expects.json").read_text())
    assert written[-1]["closest_frame"] == missed.closest_frame and written[0]["closest_frame"] is None
    (view,) = frame_views([str(folder / "linux.pcap"), str(folder / "linux.expects.json")])
    line = next(f for f in view["frames"] if f["index"] == missed.closest_frame)
    assert line["marks"] == ["closest"] and line["direction"] == FROM_STACK and not line["notes"][0]["guessed"]
    assert [c["text"].split("=")[0].strip() for c in line["decode"] if c["differs"]] == ["seq"]
