"""The report of a real small conformance run: results.json and index.html, parsed, not matched
as strings; and `labkit report --previous` saying what changed."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from html.parser import HTMLParser
from pathlib import Path

import jinja2
import pytest

from reports.findings import findings, links
from reports.html import environment, render
from reports.matrix import CARRIED_MARK

from .conftest import ROOT, run_pytest

ANSWERS = "linkdispatch/test_arp.py::test_answers_who_has_for_own_address"
IGNORES = "linkdispatch/test_arp.py::test_ignores_who_has_for_address_it_does_not_own"


BENCH = [
    {"name": "topology up+down, labkit", "value": 4.3, "unit": "ms", "goal": "", "met": None},
    {"name": "labkit / ip ratio", "value": 0.19, "unit": "ratio", "goal": "<= 0.25", "met": True},
]


class Page(HTMLParser):
    """The matrix cells (check, stack -> status, with their attributes, link and text), the detail
    anchors, every link, the tags and attributes used, and the measured / carried-over counts."""

    def __init__(self) -> None:
        super().__init__()
        self.missing_columns: list[str] = []
        self.images: list[str] = []
        self.cells: dict[tuple[str, str], str] = {}
        self.anchors: set[str] = set()
        self.findings: list[str] = []
        self.links: list[str] = []
        self.changes: dict[str, int] = {}
        self.cell_attrs: dict[tuple[str, str], dict[str, str]] = {}
        self.cell_links: dict[tuple[str, str], str] = {}
        self.cell_text: dict[tuple[str, str], str] = {}
        self.tags: set[str] = set()
        self.attr_names: set[str] = set()
        self.cell_counts: dict[str, str] = {}
        self.stack_counts: dict[str, dict[str, str]] = {}
        self._row: str | None = None
        self._stack_row: str | None = None
        self._cell: tuple[str, str] | None = None
        self._changes: str | None = None

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        self.tags.add(tag)
        self.attr_names |= set(a)
        if tag == "tr":
            self._row = a.get("data-check")
            self._stack_row = a.get("data-stack")
        if tag == "details" and "finding" in a.get("class", "").split():
            self.findings.append(a["id"])
        if tag == "td" and a.get("data-status") not in (None, "n/a") and self._row:
            self._cell = (self._row, a["data-stack"])
            self.cells[self._cell] = a["data-status"]
            self.cell_attrs[self._cell] = a
            self.cell_text[self._cell] = ""
        if tag == "a" and self._cell:
            self.cell_links[self._cell] = a["href"]
        if tag == "span" and a.get("class") == "cells":
            self.cell_counts = {"measured": a["data-measured"], "carried": a["data-carried"]}
        if tag == "td" and self._stack_row is not None:
            for key in ("data-measured", "data-carried"):
                if key in a:
                    self.stack_counts.setdefault(self._stack_row, {})[key[5:]] = a[key]
        if "id" in a:
            self.anchors.add(a["id"])
        for key in ("href", "src"):
            if key in a:
                self.links.append(a[key])
        if tag == "img":
            self.images.append(a.get("src", ""))
        if tag == "th" and "missing" in a.get("class", "").split() and "data-stack" in a:
            self.missing_columns.append(a.get("title", ""))
        if tag == "ul" and "data-kind" in a:
            self._changes = a["data-kind"]
            self.changes[self._changes] = 0
        if tag == "li" and self._changes:
            self.changes[self._changes] += 1

    def handle_data(self, data):
        if self._cell:
            self.cell_text[self._cell] += data

    def handle_endtag(self, tag):
        if tag == "ul":
            self._changes = None
        if tag == "td":
            self._cell = None


def parse(path: Path) -> Page:
    return parse_text(path.read_text())


def parse_text(text: str) -> Page:
    page = Page()
    page.feed(text)
    return page


@pytest.fixture(scope="module")
def small_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("report")
    (out / "benchmarks.json").write_text(json.dumps(BENCH))  # as `./lab bench` leaves it
    manifest = out / "deviations.toml"
    manifest.write_text(
        f'[[deviation]]\nstack = "linux-arpignore"\ncheck = "{ANSWERS}"\nreason = "arp_ignore=8 answers no ARP request"\n'
        # A deviation that does not happen: the check passes, which must show as an unexpected pass.
        f'[[deviation]]\nstack = "linux"\ncheck = "{IGNORES}"\nreason = "claimed, but it is not so"\n'
    )
    done = run_pytest(
        "suites/linkdispatch/test_arp.py",
        "-n", "2",
        "--stack", "linux,examples.arp_ignore:ArpIgnoreLinux,tests.drivers:MissingStack",
        "--deviations", str(manifest),
        "--lab-report", str(out),
        "--lab-evidence", str(out / "evidence"),
        "--junitxml", str(out / "junit.xml"),
    )  # fmt: skip
    assert done.returncode == 1, done.stdout[-2000:]  # the arp_ignore stack fails one check
    return out


def test_results_json_has_each_check_and_stack_with_its_status(small_run):
    data = json.loads((small_run / "results.json").read_text())
    status = {(r["check"], r["stack"]): r for r in data["results"]}
    assert {k: r["status"] for k, r in status.items()} == {
        (ANSWERS, "linux"): "passed",
        (IGNORES, "linux"): "unexpected pass",
        (ANSWERS, "linux-arpignore"): "known deviation",
        (IGNORES, "linux-arpignore"): "failed",
        (ANSWERS, "missing"): "skipped",
        (IGNORES, "missing"): "skipped",
    }
    assert (
        "never installed" in status[(ANSWERS, "missing")]["reason"] and "apt-get install" in status[(ANSWERS, "missing")]["reason"]
    )
    assert status[(ANSWERS, "linux-arpignore")]["reason"] == "arp_ignore=8 answers no ARP request"
    assert "ARP" in status[(IGNORES, "linux-arpignore")]["reason"]
    for key in ((ANSWERS, "linux-arpignore"), (IGNORES, "linux-arpignore")):
        pcaps = [p for p in status[key]["evidence"] if p.endswith(".pcap")]
        assert pcaps and all(Path(p).exists() for p in pcaps), status[key]
    assert "claimed, but it is not so" in status[(IGNORES, "linux")]["reason"]
    assert data["counts"] == {"passed": 1, "failed": 1, "known deviation": 1, "unexpected pass": 1, "skipped": 2, "not run": 0}
    assert data["run"]["exit status"] == 1 and data["run"]["collection errors"] == []
    assert data["run"]["kernel"] and data["run"]["date"] and set(data["run"]["stacks"]) == {"linux", "linux-arpignore", "missing"}
    assert re.fullmatch(r"[0-9a-f]{40}(-dirty)?", data["run"]["commit"]), data["run"]["commit"]
    assert isinstance(data["run"]["order seed"], int) and data["run"]["isolation"] in ("cheap", "canary")
    page = (small_run / "index.html").read_text()
    assert f"--lab-seed {data['run']['order seed']}" in page and data["run"]["commit"][:12] in page
    assert data["run"]["stacks"]["missing"] == {
        "available": False, "why": "the missing stack is never installed", "install": "apt-get install -y nothing-at-all", "version": "",
        "binary": "", "digest": "",
    }  # fmt: skip


def test_junit_xml_has_the_same_checks(small_run):
    import xml.etree.ElementTree as ET

    cases = ET.parse(small_run / "junit.xml").getroot().iter("testcase")
    data = json.loads((small_run / "results.json").read_text())
    assert sum(1 for _ in cases) == len(data["results"])


def test_html_matrix_matches_the_results_and_needs_nothing_online(small_run):
    data = json.loads((small_run / "results.json").read_text())
    page = parse(small_run / "index.html")
    assert page.cells == {(r["check"], r["stack"]): r["status"] for r in data["results"]}
    failing = [r for r in data["results"] if r["status"] in ("failed", "known deviation", "unexpected pass")]
    targets = links(findings(data["results"]))
    assert set(targets) == {r["nodeid"] for r in failing} and set(targets.values()) <= page.anchors, (
        "a non-passing cell has no finding"
    )
    assert {page.cell_links[(r["check"], r["stack"])] for r in failing} == {f"#{targets[r['nodeid']]}" for r in failing}
    assert sorted(page.findings) == sorted(set(targets.values())), "one entry per finding"
    assert not [link for link in page.links if link.startswith(("http:", "https:", "//"))], "external assets"
    dangling = [link for link in page.links if link.startswith("#") and link[1:] not in page.anchors]
    assert not dangling, f"links to no section: {dangling}"
    assert any(link.endswith(".pcap") for link in page.links), "no pcap linked"
    assert len(page.missing_columns) == 1 and "never installed" in page.missing_columns[0], page.missing_columns


def test_labkit_report_says_what_changed(small_run, tmp_path):
    data = json.loads((small_run / "results.json").read_text())
    previous = json.loads(json.dumps(data))
    for r in previous["results"]:
        if r["status"] == "failed":
            r["status"] = "passed"  # last night it passed: now a new failure
        elif r["status"] == "known deviation":
            r["status"] = "passed"  # and this deviation is new
        elif r["status"] == "unexpected pass":
            r["status"] = "failed"  # it failed last night, so it counts as fixed
        elif r["status"] == "passed":
            r["status"] = "failed"  # and so does this one
    prev_path = tmp_path / "previous.json"
    prev_path.write_text(json.dumps(previous))
    done = subprocess.run(
        [sys.executable, "-m", "labkit", "report", str(small_run / "results.json"), "--previous", str(prev_path), "--out", str(tmp_path)],
        cwd=ROOT, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert "new failures: 1" in done.stdout and "new deviations: 1" in done.stdout and "fixed: 1" in done.stdout
    page = parse(tmp_path / "index.html")
    assert page.changes == {"new failures": 1, "fixed": 1, "new deviations": 1, "unexpected passes": 1}
    dangling = [link for link in page.links if link.startswith("#") and link[1:] not in page.anchors]
    assert not dangling, f"links to no section: {dangling}"


def test_labkit_report_refuses_a_missing_file(tmp_path):
    done = subprocess.run(
        [sys.executable, "-m", "labkit", "report", str(tmp_path / "nope.json")],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2 and "not found" in done.stderr and "\n" not in done.stderr.strip()


def test_benchmarks_are_in_the_results_and_drawn_in_the_page(small_run):
    data = json.loads((small_run / "results.json").read_text())
    assert data["benchmarks"] == BENCH
    page = parse(small_run / "index.html")
    pytest.importorskip("matplotlib", reason="the charts need matplotlib (pip install 'labkit[report]')")
    assert len(page.images) == 2 and all(src.startswith("data:image/png;base64,") for src in page.images), page.images


CHECK_A = "linkdispatch/test_arp.py::test_answers"
CHECK_B = "linkdispatch/test_arp.py::test_ignores"


def record(check: str, stack: str, status: str, reason: str = "", carried_from: str | None = None, **more) -> dict:
    """A results.json record as the plugin writes it; `carried_from` only when given, as an older
    results.json has no such field at all."""
    r = {"nodeid": f"suites/{check}[{stack}]", "check": check, "suite": check.split("/")[0], "stack": stack, "status": status,
         "reason": reason, "duration": 0.1, "evidence": [], **more}  # fmt: skip
    if carried_from is not None:
        r["carried_from"] = carried_from
    return r


def synthetic(results: list[dict], stacks: dict[str, dict]) -> dict:
    statuses = ("passed", "failed", "known deviation", "unexpected pass", "skipped", "not run")
    counts = {s: sum(1 for r in results if r["status"] == s) for s in statuses}
    run = {"date": "2025-01-01T00:00:00+00:00", "kernel": "6.1.0", "labkit": "0.1.0", "python": "3.11", "notes": [], "collection errors": [],
           "exit status": 1, "stacks": stacks}  # fmt: skip
    return {"run": run, "counts": counts, "results": results}


def test_carried_over_cells_are_marked_and_link_to_the_measured_cell():
    names = ("linux", "gvisor", "gvisor-ch2", "gvisor-ch4")
    stacks = {s: {"available": True, "why": "", "install": "", "version": "release-1"} for s in names}
    results = [
        record(CHECK_A, "linux", "passed"),
        record(CHECK_A, "gvisor", "failed", "ttl: 64 != 63"),
        record(CHECK_A, "gvisor-ch2", "failed", "ttl: 64 != 63", carried_from="gvisor"),
        record(CHECK_A, "gvisor-ch4", "failed", "ttl: 64 != 63", carried_from="gvisor"),
        record(CHECK_B, "linux", "passed"),
        record(CHECK_B, "gvisor", "passed", carried_from=None),
        record(CHECK_B, "gvisor-ch2", "passed", carried_from="gvisor"),
        # The measured cell passed, but a deviation is claimed for this variant: its cell has
        # nothing to link to, so it keeps a section of its own.
        record(CHECK_B, "gvisor-ch4", "known deviation", "claimed for ch4", carried_from="gvisor"),
    ]
    data = synthetic(results, stacks)
    previous = synthetic([{**r, "status": "passed"} for r in results], stacks)
    text = render(data, previous)
    page = parse_text(text)

    assert page.cells == {(r["check"], r["stack"]): r["status"] for r in results}
    carried = {(r["check"], r["stack"]) for r in results if r.get("carried_from")}
    for key, attrs in page.cell_attrs.items():
        if key in carried:
            assert attrs["data-carried-from"] == "gvisor", attrs
            assert page.cell_text[key].startswith(CARRIED_MARK), key
            assert attrs["title"].startswith("carried over from gvisor"), attrs
        else:
            assert "data-carried-from" not in attrs, attrs
            assert CARRIED_MARK not in page.cell_text[key]
    # Same status as the measured cell, and the same finding: one entry for the three cells.
    assert page.cell_attrs[(CHECK_A, "gvisor-ch2")]["data-status"] == page.cell_attrs[(CHECK_A, "gvisor")]["data-status"]
    targets = links(findings(results))
    measured = "#" + targets[f"suites/{CHECK_A}[gvisor]"]
    assert {page.cell_links[(CHECK_A, s)] for s in ("gvisor", "gvisor-ch2", "gvisor-ch4")} == {measured}
    assert (CHECK_B, "gvisor-ch2") not in page.cell_links, "a passed cell links nowhere"
    own = targets[f"suites/{CHECK_B}[gvisor-ch4]"]
    assert page.cell_links[(CHECK_B, "gvisor-ch4")] == "#" + own
    assert sorted(page.findings) == sorted({measured[1:], own}), "carried cells got findings of their own"
    section = re.search(rf'<details class="finding [^"]*" id="{measured[1:]}"(.*?)</details>\n', text, re.S)
    assert section and "carried over to: gvisor-ch2 (from gvisor), gvisor-ch4 (from gvisor)" in section.group(1)

    assert page.cell_counts == {"measured": "4", "carried": "4"}
    assert "cells measured: 4 · carried over: 4" in text
    assert page.stack_counts["gvisor"] == {"measured": "2", "carried": "0"}
    assert page.stack_counts["gvisor-ch2"] == {"measured": "0", "carried": "2"}
    assert page.stack_counts["linux"] == {"measured": "2", "carried": "0"}

    # What changed: the carried-over new failure goes to the measured cell's detail too.
    assert page.changes == {"new failures": 3, "new deviations": 1}  # the lists that are not empty
    assert re.search(rf'<li><a href="{measured}">{re.escape(CHECK_A)}</a> on gvisor-ch2 \(carried over from gvisor\)', text)
    dangling = [link for link in page.links if link.startswith("#") and link[1:] not in page.anchors]
    assert not dangling, f"links to no section: {dangling}"


def test_script_in_a_reason_or_a_stack_name_is_shown_not_run(tmp_path):
    evil = '<script>alert("stack")</script>'
    reason = "</pre><script>alert('reason')</script>"
    stacks = {
        evil: {"available": True, "why": "", "install": "", "version": '" onmouseover="alert(1)'},
        "gone<script>": {"available": False, "why": "<script>why</script>", "install": "' onclick='alert(2)", "version": ""},
    }
    results = [
        record(CHECK_A, evil, "failed", reason, evidence=[str(tmp_path / "<script>.pcap")]),
        record(CHECK_B, evil, "known deviation", reason, carried_from="<script>x</script>"),
        record(CHECK_A, "gone<script>", "skipped", reason),
    ]
    data = synthetic(results, stacks)
    data["run"]["notes"] = ["<script>alert('note')</script>"]
    text = render(data, synthetic([], stacks), tmp_path)
    page = parse_text(text)
    assert text.lower().count("<script") == 1 and "&lt;script&gt;" in text, "a script other than the page's own"
    assert "<script>alert" not in text
    assert not {a for a in page.attr_names if a.startswith("on")}, page.attr_names
    # Escaped, not mangled: the values read back as they were.
    assert page.cells[(CHECK_A, evil)] == "failed" and page.cell_attrs[(CHECK_A, evil)]["title"] == reason
    assert page.cell_attrs[(CHECK_B, evil)]["data-carried-from"] == "<script>x</script>"
    assert page.missing_columns == ["missing: <script>why</script>; install: ' onclick='alert(2)"]


def test_the_template_refuses_a_missing_field():
    with pytest.raises(jinja2.UndefinedError):
        environment().get_template("index.html.j2").render({"run": {"date": "today"}})


def test_labkit_flakes_verdict_has_its_section_and_none_without_it():
    stacks = {"gvisor": {"available": True, "why": "", "install": "", "version": "release-1"}}
    data = synthetic([record(CHECK_A, "gvisor", "passed")], stacks)
    assert 'id="flaky"' not in render(data)
    flaky = {"check": CHECK_A, "stack": "gvisor", "outcomes": {"passed": [1, 3], "failed": [2]}, "load_dependent": False}
    load = {
        "check": CHECK_A,
        "stack": "gvisor-ch2",
        "outcomes": {"known deviation": [1], "unexpected pass": [2, 3]},
        "load_dependent": True,
    }
    data["flake"] = {"runs": ["a", "b", "c"], "seeds": [1, 2, 3], "cells": 2, "flaky": [flaky], "load_dependent": [load]}
    page = render(data)
    assert "3 runs in random orders (seeds 1, 2, 3), 2 check x stack cells compared" in page
    assert f"{CHECK_A} on gvisor: failed in run 2; passed in run 1, 3</li>" in page
    assert f"{CHECK_A} on gvisor-ch2: known deviation in run 1; unexpected pass in run 2, 3</li>" in page
