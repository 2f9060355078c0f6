"""The report of a real small conformance run: results.json and index.html, parsed, not matched
as strings; and `labkit report --previous` saying what changed."""

from __future__ import annotations

import json
import subprocess
import sys
from html.parser import HTMLParser
from pathlib import Path

import pytest

from reports.html import anchor

from .conftest import ROOT, run_pytest

ANSWERS = "linkdispatch/test_arp.py::test_answers_who_has_for_own_address"
IGNORES = "linkdispatch/test_arp.py::test_ignores_who_has_for_address_it_does_not_own"


BENCH = [
    {"name": "topology up+down, labkit", "value": 4.3, "unit": "ms", "goal": "", "met": None},
    {"name": "labkit / ip ratio", "value": 0.19, "unit": "ratio", "goal": "<= 0.25", "met": True},
]


class Page(HTMLParser):
    """The matrix cells (check, stack -> status), the detail anchors, and every link."""

    def __init__(self) -> None:
        super().__init__()
        self.missing_columns: list[str] = []
        self.images: list[str] = []
        self.cells: dict[tuple[str, str], str] = {}
        self.anchors: set[str] = set()
        self.links: list[str] = []
        self.changes: dict[str, int] = {}
        self._row: str | None = None
        self._changes: str | None = None

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag == "tr":
            self._row = a.get("data-check")
        if tag == "td" and "data-status" in a and self._row:
            self.cells[(self._row, a["data-stack"])] = a["data-status"]
        if "id" in a:
            self.anchors.add(a["id"])
        for key in ("href", "src"):
            if key in a:
                self.links.append(a[key])
        if tag == "img":
            self.images.append(a.get("src", ""))
        if tag == "th" and a.get("class") == "missing":
            self.missing_columns.append(a.get("title", ""))
        if tag == "ul" and "data-kind" in a:
            self._changes = a["data-kind"]
            self.changes[self._changes] = 0
        if tag == "li" and self._changes:
            self.changes[self._changes] += 1

    def handle_endtag(self, tag):
        if tag == "ul":
            self._changes = None


def parse(path: Path) -> Page:
    page = Page()
    page.feed(path.read_text())
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
    assert data["run"]["stacks"]["missing"] == {
        "available": False, "why": "the missing stack is never installed", "install": "apt-get install -y nothing-at-all", "version": "",
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
    assert {anchor(r["nodeid"]) for r in failing} <= page.anchors, "a non-passing cell has no detail section"
    details = [a for a in page.anchors if a.startswith("d-")]
    assert len(details) == len(failing), f"{len(details)} detail sections for {len(failing)} non-passing cells"
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
