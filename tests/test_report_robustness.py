"""The Robustness section as the page lays it out (reports/robustness.py, templates/robustness.html.j2)
and its lines in summary.md. The results are a synthetic run of suites/robustness in the shape
the campaign writes (labkit.fuzz.campaign.FuzzResult.as_dict, the results contract of issue 19):
a stack that survived, one whose memory was not judged, a crash with a one-frame reproducer, a
variant whose reproducer the evidence store kept under another stack's name, a leak, a carried
cell and a cell the campaign never ran on, beside a conformance check of another suite."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

from scapy.layers.inet import IP, UDP
from scapy.layers.l2 import Ether
from scapy.utils import wrpcap

from reports.findings import findings, links
from reports.html import environment, render
from reports.robustness import CHECK, KINDS_SHOWN, shape
from reports.summary import markdown
from tests.test_report_perf import Dom, nodes

FOLDER = "robustness.test_malformed_frames.test_survives_malformed_frames"
RUN_SEED = 42
CRASH = "echo to 198.18.0.2: no echo reply within 4s (the stack's process exited 2)"
TEMPLATE = Path(__file__).parent.parent / "reports" / "templates" / "robustness.html.j2"


def fuzz(stack: str, seed: int, frames: int = 5210, finding: dict[str, Any] | None = None, **over: Any) -> dict[str, Any]:
    record: dict[str, Any] = {
        "stack": stack,
        "seed": seed,
        "run_seed": RUN_SEED,
        "seconds_asked": 8.0,
        "seconds": 8.4,
        "frames": frames,
        "batches": 160,
        "refused": {},
        "kinds": {"arp.sizes": 40, "ipv4.options": 33, "tcp.flags": 20, "ipv6.ext-chain": 7},
        "memory": {"per_100k_mb": 3.1, "rise_mb": 0.8},
        "rss_mb": [81.2],
        "finding": finding,
    }
    record.update(over)
    return record


def crash(kinds: list[str], frames: int = 1) -> dict[str, Any]:
    return {
        "kind": "crash",
        "problems": [CRASH, "tcp to 198.18.0.2:7: connection refused"],
        "batch": 70,
        "frames_before": 2240,
        "reproducer_frames": frames,
        "reproducer_kinds": kinds,
        "history_needed": 0,
        "replays": True,
        "shrink": {
            "seconds": 31.2,
            "bisection_seconds": 1.1,
            "candidates": 40,
            "hypothesis_candidates": 39,
            "capped": False,
            "from_frames": 36,
            "to_frames": frames,
        },
    }


def cell(stack: str, status: str, record: dict[str, Any] | None, evidence: list[str] | None = None, **over: Any) -> dict[str, Any]:
    out = {
        "nodeid": f"suites/{CHECK}[{stack}]",
        "check": CHECK,
        "suite": "robustness",
        "stack": stack,
        "status": status,
        "reason": "",
        "duration": 9.0,
        "evidence": evidence or [],
        "carried_from": None,
        "manifest": None,
        "fuzz": record,
    }
    out.update(over)
    return out


def pcap(path: Path) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    wrpcap(str(path), [Ether(dst="02:00:00:00:00:02") / IP(src="198.18.0.1", dst="198.18.0.2", ihl=15) / UDP(dport=7)])
    return str(path)


def note(path: Path, text: str) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return str(path)


def run(root: Path) -> dict[str, Any]:
    """results.json of a run with robustness cells; evidence under `root`/evidence, the page in `root`."""
    folder = root / "evidence" / FOLDER
    slirp_evidence = [
        pcap(folder / "slirp4netns.reproducer.pcap"),
        note(folder / "slirp4netns.replay.txt", "labkit replay x.pcap --stack slirp4netns\npytest suites/robustness ...\n"),
        note(folder / "slirp4netns.fuzz.txt", "{}\n"),
        note(folder / "slirp4netns.log.txt", "slirp4netns exited 2\n"),
    ]
    # gvisor-ch4's reproducer is byte for byte gvisor-nogso's: the store kept it once, under the first stack's name.
    shared = pcap(folder / "gvisor-nogso.reproducer.pcap")
    ch4_evidence = [shared, note(folder / "gvisor-ch4.replay.txt", "labkit replay ... --stack gvisor-ch4\n")]
    nogso_evidence = [shared, note(folder / "gvisor-nogso.replay.txt", "labkit replay ... --stack gvisor-nogso\n")]
    gvisor = fuzz("gvisor", 111, refused={"gso.size: EINVAL": 2, "eth: EMSGSIZE": 3})
    leak = {
        "kind": "leak",
        "problems": ["memory grew 31.0 MB per 100,000 frames (over the 20 MB limit), RSS rose 12.0 MB"],
        "batch": 159,
        "frames_before": 5100,
        "reproducer_frames": 0,
        "reproducer_kinds": [],
        "history_needed": None,
        "replays": False,
        "shrink": {},
    }
    results = [
        {**cell("linux", "passed", None), "check": "transport/test_tcp.py::test_x", "suite": "transport", "fuzz": None},
        cell("pasta", "failed", fuzz("pasta", 555, memory={"per_100k_mb": 31.0, "rise_mb": 12.0}, finding=leak), reason="pasta leak under malformed frames: memory grew"),
        cell("slirp4netns", "failed", fuzz("slirp4netns", 444, finding=crash(["ipv4.options"])), slirp_evidence, reason=f"slirp4netns crash under malformed frames: {CRASH}"),
        cell("gvisor-ch4", "failed", fuzz("gvisor-ch4", 333, finding=crash(["ipv4.fragments.overlap", "ipv4.options"], 3)), ch4_evidence, reason=f"gvisor-ch4 crash under malformed frames: {CRASH}"),
        cell("gvisor-nogso", "failed", fuzz("gvisor-nogso", 666, finding=crash(["ipv4.options"])), nogso_evidence, reason=f"gvisor-nogso crash under malformed frames: {CRASH}"),
        cell("gvisor-ch2", "passed", copy.deepcopy(gvisor), carried_from="gvisor"),
        cell("gvisor", "passed", gvisor),
        cell("linux", "passed", fuzz("linux", 222, frames=310, memory=None, rss_mb=[])),
        cell("gvisor-txcsum", "failed", None, reason="testbed: gvisor-txcsum did not come up within 10s\nmore"),
    ]  # fmt: skip
    return {
        "run": {"date": "2026-11-02T01:00:00+00:00", "kernel": "6.1", "labkit": "0.9", "commit": "c1", "stacks": {}},
        "counts": {"passed": 3, "failed": 5},
        "results": results,
    }


def page(root: Path) -> tuple[dict[str, Any], Dom]:
    data = run(root)
    return data, Dom(render(data, None, root))


def row_of(dom: Dom, stack: str) -> dict[str, Any]:
    rows = nodes(nodes(dom.root, "table", "fuzz")[0], "tr", data_stack=stack)  # the stacks table has a row per stack too
    assert len(rows) == 1, f"{stack}: {len(rows)} rows"
    return rows[0]


def tds(row: dict[str, Any]) -> list[str]:
    return [" ".join(td["text"].split()) for td in nodes(row, "td")]


def identity(path: str) -> dict[str, str]:
    return {"href": path, "name": Path(path).name}


def test_no_fuzz_record_no_section(tmp_path):
    data = run(tmp_path)
    data["results"] = [r for r in data["results"] if not r["fuzz"]]  # the conformance cell and a robustness cell that never ran
    assert shape(data["results"], {}, identity) is None
    text = render(data, None, tmp_path)
    assert 'id="robustness"' not in text and 'href="#robustness"' not in text and 'table class="fuzz"' not in text


def test_a_row_per_measured_stack_in_matrix_order_with_its_figures(tmp_path):
    data = run(tmp_path)
    r = shape(data["results"], {}, identity)
    assert r is not None
    assert [row["stack"] for row in r["rows"]] == ["linux", "gvisor", "gvisor-ch4", "gvisor-nogso", "slirp4netns", "pasta"]
    assert r["stacks"] == 6 and r["frames"] == f"{5 * 5210 + 310:,}" and r["run_seeds"] == str(RUN_SEED)
    gvisor = r["rows"][1]
    assert gvisor["carried"] == ["gvisor-ch2"] and gvisor["verdict"] == "survived" and gvisor["finding"] is None
    assert (gvisor["frames"], gvisor["batches"], gvisor["seconds"], gvisor["asked"]) == ("5,210", "160", "8.4 s", "of 8.0 s asked")
    assert gvisor["refused"] == {"total": "5", "any": True, "why": "eth: EMSGSIZE 3, gso.size: EINVAL 2"}
    assert (gvisor["memory"]["text"], gvisor["memory"]["rise"], gvisor["memory"]["over"]) == ("3.1 MB", "rose 0.8 MB", False)
    assert (gvisor["run_seed"], gvisor["seed"]) == (str(RUN_SEED), "111")
    linux = r["rows"][0]
    assert linux["memory"]["text"] == "not judged" and not linux["memory"]["judged"] and linux["memory"]["rss"] == ""
    assert linux["refused"]["total"] == "0" and not linux["refused"]["any"]
    assert r["unfuzzed"] == [
        {"stack": "gvisor-txcsum", "status": "failed", "why": "testbed: gvisor-txcsum did not come up within 10s"}
    ]

    _, dom = page(tmp_path)
    assert [a["attrs"]["href"] for a in nodes(dom.root, "nav")[0]["children"]].count("#robustness") == 1
    section = nodes(dom.root, "table", "fuzz")[0]
    assert [th["text"] for th in nodes(section, "th")] == [
        "stack",
        "verdict",
        "frames",
        "batches",
        "time",
        "refused",
        "memory per 100k frames",
        "run seed",
        "stack seed",
        "finding",
    ]
    assert [tr["attrs"]["id"] for tr in nodes(section, "tr") if tr["attrs"].get("id")] == [
        f"robustness-{s}" for s in ("linux", "gvisor", "gvisor-ch4", "gvisor-nogso", "slirp4netns", "pasta")
    ]
    assert not nodes(section, "tr", data_stack="gvisor-ch2"), "a carried cell is not a second campaign"
    cells = tds(row_of(dom, "gvisor"))
    assert cells[0] == "gvisor stands for: gvisor-ch2"
    assert cells[1:5] == ["survived", "5,210", "160", "8.4 s of 8.0 s asked"]
    assert cells[5] == "5 eth: EMSGSIZE 3, gso.size: EINVAL 2"
    assert cells[6] == "3.1 MB rose 0.8 MB, RSS 81.2 MB at the end"
    assert cells[7:] == [str(RUN_SEED), "111", "none"]
    linux_cells = tds(nodes(section, "tr", data_stack="linux")[0])
    assert (
        linux_cells[6] == "not judged"
        and "unjudged" in nodes(nodes(section, "tr", data_stack="linux")[0], "td")[6]["attrs"]["class"]
    )
    unfuzzed = nodes(dom.root, "ul", "fuzz-unfuzzed")[0]
    assert [li["text"] for li in nodes(unfuzzed, "li")] == [
        "gvisor-txcsum: failed: testbed: gvisor-txcsum did not come up within 10s"
    ]


def test_a_finding_shows_its_reproducer_and_shrink_and_links_its_evidence_relative_to_the_page(tmp_path):
    data, dom = page(tmp_path)
    anchors = links(findings(data["results"]))
    row = row_of(dom, "slirp4netns")
    cells = tds(row)
    assert cells[1] == "crash" and "failed" in nodes(row, "td")[1]["attrs"]["class"]
    finding = nodes(row, "td", "finding")[0]
    assert nodes(finding, "b", "kind")[0]["text"] == "crash"
    assert nodes(finding, "span", "problem")[0]["text"] == CRASH
    assert "(and 1 more)" in finding["text"] and "after batch 70 (2,240 frames before it)" in finding["text"]
    reproducer = nodes(finding, "p", "reproducer")[0]["text"]
    assert reproducer.startswith("reproducer: 1 frame (ipv4.options); shrunk 36 → 1 frames on 40 fresh stacks in 31 s")
    assert "(bisection 1.1 s, 39 candidates from hypothesis's shrinker)" in reproducer
    hrefs = {a["text"]: a["attrs"]["href"] for a in nodes(finding, "a")}
    assert hrefs == {
        "reproducer pcap": f"evidence/{FOLDER}/slirp4netns.reproducer.pcap",
        "replay commands": f"evidence/{FOLDER}/slirp4netns.replay.txt",
        "campaign record": f"evidence/{FOLDER}/slirp4netns.fuzz.txt",
        "the finding": f"#{anchors[data['results'][2]['nodeid']]}",
    }
    for href in hrefs.values():
        if not href.startswith("#"):
            assert (tmp_path / href).is_file(), href
    assert len(nodes(dom.root, "details", id=hrefs["the finding"][1:])) == 1  # the entry under Findings is there
    # gvisor-ch4 and gvisor-nogso fail alike: one finding; ch4's reproducer is the file stored under nogso's name
    ch4 = nodes(row_of(dom, "gvisor-ch4"), "td", "finding")[0]
    assert nodes(ch4, "p", "reproducer")[0]["text"].startswith(
        "reproducer: 3 frames (ipv4.fragments.overlap, ipv4.options); shrunk 36 → 3 frames"
    )
    ch4_links = {a["text"]: a["attrs"]["href"] for a in nodes(ch4, "a")}
    assert ch4_links["reproducer pcap"] == f"evidence/{FOLDER}/gvisor-nogso.reproducer.pcap"
    assert ch4_links["replay commands"] == f"evidence/{FOLDER}/gvisor-ch4.replay.txt" and "campaign record" not in ch4_links
    found = nodes(dom.root, "ul", "fuzz-found")[0]
    assert [(a["attrs"]["href"], a["text"]) for a in nodes(found, "a")] == [
        ("#robustness-gvisor-ch4", "gvisor-ch4"),
        ("#robustness-gvisor-nogso", "gvisor-nogso"),
        ("#robustness-slirp4netns", "slirp4netns"),
        ("#robustness-pasta", "pasta"),
    ]


def test_a_leak_has_no_reproducer_and_its_memory_is_marked_over_the_limit(tmp_path):
    _, dom = page(tmp_path)
    row = row_of(dom, "pasta")
    cells = tds(row)
    assert cells[1] == "leak" and cells[6] == "31.0 MB rose 12.0 MB, RSS 81.2 MB at the end"
    memory = nodes(row, "td")[6]
    assert "over" in memory["attrs"]["class"].split() and memory["attrs"]["title"].startswith(
        "over the limit of 20 MB per 100,000 frames"
    )
    finding = nodes(row, "td", "finding")[0]
    assert (
        nodes(finding, "p", "reproducer")[0]["text"] == "reproducer: none: a leak is the whole run's; replay the run with its seed"
    )
    assert [a["text"] for a in nodes(finding, "a")] == ["the finding"]
    gvisor_memory = nodes(row_of(dom, "gvisor"), "td")[6]
    assert "over" not in gvisor_memory["attrs"]["class"].split() and gvisor_memory["attrs"]["title"].startswith("within the limit")


def test_a_reproducer_that_does_not_replay_alone_and_one_that_needs_history_say_so(tmp_path):
    data = run(tmp_path)
    slirp = next(r for r in data["results"] if r["stack"] == "slirp4netns")
    slirp["fuzz"]["finding"].update(replays=False, history_needed=2)
    slirp["fuzz"]["finding"]["shrink"]["capped"] = True
    r = shape(data["results"], {}, identity)
    assert r is not None
    f = next(row for row in r["rows"] if row["stack"] == "slirp4netns")["finding"]
    assert f["shrink"]["text"].endswith("in 31 s, budget spent (it may shrink further)")
    assert f["notes"] == [
        "it needs 2 earlier batches before it",
        "the pcap alone did not break a fresh stack again (a live connection, or timing): replay the run",
    ]
    assert f["href"] == ""  # no finding anchor given: no link to one
    slirp["fuzz"]["finding"].update(reproducer_frames=0, reproducer_kinds=[], history_needed=None, shrink={})
    r = shape(data["results"], {}, identity)
    assert r is not None
    f = next(row for row in r["rows"] if row["stack"] == "slirp4netns")["finding"]
    assert f["reproducer"] == "none: no fresh stack broke on the run's frames" and f["shrink"] == {"text": "", "detail": ""}


def test_what_was_sent_is_a_collapsed_breakdown_per_stack(tmp_path):
    data = run(tmp_path)
    gvisor = next(r for r in data["results"] if r["stack"] == "gvisor")
    gvisor["fuzz"]["kinds"] = {f"icmp.type-{n:02d}": 100 - n for n in range(20)} | {"arp.sizes": 500, "tcp.flags": 300}
    r = shape(data["results"], {}, identity)
    assert r is not None
    sent = next(row for row in r["rows"] if row["stack"] == "gvisor")["sent"]
    total = 500 + 300 + sum(100 - n for n in range(20))
    assert sent["draws"] == f"{total:,}" and sent["count"] == 22
    assert [k["kind"] for k in sent["top"][:3]] == ["arp.sizes", "tcp.flags", "icmp.type-00"] and len(sent["top"]) == KINDS_SHOWN
    assert sent["top"][0] == {"kind": "arp.sizes", "n": "500", "share": f"{500 / total * 100:.0f} %"}
    rest = sum(100 - n for n in range(KINDS_SHOWN - 2, 20))
    assert sent["rest"] == {"kinds": 22 - KINDS_SHOWN, "n": f"{rest:,}", "share": f"{rest / total * 100:.0f} %"}
    assert sent["protocols"] == f"icmp {1810 / total * 100:.0f} %, arp {500 / total * 100:.0f} %, tcp {300 / total * 100:.0f} %"
    dom = Dom(render(data, None, tmp_path))
    details = nodes(dom.root, "details", "fuzz-sent")
    assert [d["attrs"]["data-stack"] for d in details] == ["linux", "gvisor", "gvisor-ch4", "gvisor-nogso", "slirp4netns", "pasta"]
    assert all("open" not in d["attrs"] for d in details)
    mine = details[1]
    assert " ".join(nodes(mine, "summary")[0]["text"].split()).startswith(f"gvisor: {total:,} inputs of 22 kinds (icmp")
    rows = nodes(mine, "tr")
    assert len(rows) == 1 + KINDS_SHOWN + 1 and tds(rows[-1]) == [
        f"{22 - KINDS_SHOWN} other kinds",
        f"{rest:,}",
        sent["rest"]["share"],
    ]


def test_what_a_stack_or_the_oracle_says_is_shown_never_run(tmp_path):
    data = run(tmp_path)
    evil = "<script>alert(1)</script>"
    slirp = next(r for r in data["results"] if r["stack"] == "slirp4netns")
    slirp["fuzz"]["finding"]["problems"] = [f"log: {evil}"]
    slirp["fuzz"]["finding"]["kind"] = "<b>crash</b>"
    slirp["fuzz"]["finding"]["reproducer_kinds"] = ["<i>ipv4</i>"]
    slirp["fuzz"]["kinds"] = {'"><img src=x onerror=alert(2)>': 3}
    slirp["fuzz"]["refused"] = {"<u>eth</u>": 1}
    slirp["stack"] = 'slirp4netns-x"><em>'
    text = render(data, None, tmp_path)
    for raw in (evil, "<b>crash", "<i>ipv4", "<img src", "<u>eth", '"><em>'):
        assert raw not in text
    assert "log: &lt;script&gt;alert(1)&lt;/script&gt;" in text and "&lt;b&gt;crash&lt;/b&gt;" in text
    assert "&lt;i&gt;ipv4&lt;/i&gt;" in text and "&lt;img src=x onerror=alert(2)&gt;" in text and "&lt;u&gt;eth&lt;/u&gt;" in text
    assert "|safe" not in TEMPLATE.read_text()


def test_odd_records_read_as_missing_not_as_a_broken_page(tmp_path):
    data = run(tmp_path)
    gvisor = next(r for r in data["results"] if r["stack"] == "gvisor")
    gvisor["fuzz"] = {
        "stack": "gvisor",
        "frames": "many",
        "seconds": None,
        "kinds": [],
        "refused": None,
        "memory": {"per_100k_mb": None},
    }
    r = shape(data["results"], {}, identity)
    assert r is not None
    row = next(row for row in r["rows"] if row["stack"] == "gvisor")
    assert (row["frames"], row["seconds"], row["asked"], row["seed"], row["run_seed"]) == ("—", "—", "", "—", "—")
    assert row["memory"]["text"] == "not judged" and row["sent"]["count"] == 0 and row["refused"]["total"] == "0"
    environment().from_string('{% from "robustness.html.j2" import robustness %}{{ robustness(r) }}').render(r=r)  # StrictUndefined


def test_summary_lists_each_robustness_finding_once_linked_to_its_finding(tmp_path):
    data = run(tmp_path)
    anchors = links(findings(data["results"]))
    text = markdown(data, None, lambda stack, check: False, "https://lab.example/night")
    section = text.split("## Robustness findings: 4\n", 1)[1].split("\n\n", 1)[0].splitlines()
    assert len(section) == 4
    slirp = next(r for r in data["results"] if r["stack"] == "slirp4netns")
    assert section[2] == (
        f"- [`{CHECK}` on slirp4netns](https://lab.example/night/index.html#{anchors[slirp['nodeid']]}): crash, {CRASH}; "
        f"reproducer 1 frame (ipv4.options) (seed {RUN_SEED})"
    )
    assert section[3].startswith(f"- [`{CHECK}` on pasta](") and ": leak, memory grew 31.0 MB" in section[3]
    assert "gvisor-ch2" not in "\n".join(section)
    quiet = {**data, "results": [r for r in data["results"] if not (r["fuzz"] or {}).get("finding")]}
    assert "Robustness" not in markdown(quiet, None, lambda stack, check: False)
