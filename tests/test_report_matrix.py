"""The conformance matrix's shaping (reports.matrix) and its partial (templates/matrix.html.j2):
column groups, row groups, the four kinds of cell, changed cells, links to findings; the
rendered table parsed with html.parser and held to the DOM contract page.js and the browser
test rely on; page.js and matrix.css included as they are."""

from __future__ import annotations

from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import pytest

from reports.html import environment
from reports.matrix import CARRIED_MARK, TITLE_CHARS, changed_cells, columns, matrix, split_stack

TEMPLATES = Path(__file__).resolve().parents[1] / "reports" / "templates"
ARP = "linkdispatch/test_arp.py::test_answers_who_has_for_own_address"
ARP_V6 = "linkdispatch/test_arp.py::test_ndp[ipv6]"
TCP = "transport/test_tcp.py::test_rst_on_closed_port"
FANOUT = "linkdispatch/test_fanout.py::test_kernel_fanout"
STACKS = ["gvisor", "gvisor-ch4", "gvisor-ch4@nightly", "gvisor@nightly", "linux", "linux-txcsum", "pasta", "slirp4netns"]
LONG = "x" * 500


def rec(check: str, stack: str, status: str = "passed", reason: str = "", carried_from: str | None = None) -> dict[str, Any]:
    suite = check.split("/", 1)[0]
    return {
        "nodeid": f"suites/{check}[{stack}]",
        "check": check,
        "suite": suite,
        "stack": stack,
        "status": status,
        "reason": reason,
        "duration": 0.1,
        "evidence": [],
        "carried_from": carried_from,
    }


RUN = {
    "stacks": {
        **{s: {"available": True, "why": "", "install": "", "version": "1.0"} for s in STACKS},
        "pasta": {"available": False, "why": "pasta is not installed", "install": "apt-get install -y passt", "version": ""},
    }
}
RESULTS = [
    rec(ARP, "linux"),
    rec(ARP, "linux-txcsum", carried_from="linux"),
    rec(ARP, "gvisor", "known deviation", 'gVisor answers <late> & "twice"'),
    rec(ARP, "gvisor-ch4", "known deviation", "gVisor answers late", carried_from="gvisor"),
    rec(ARP, "gvisor@nightly", "unexpected pass", LONG),
    rec(ARP, "slirp4netns", "skipped", "slirp4netns makes its own link (a tap); the check's topology (two_links) does not apply"),
    rec(ARP, "pasta", "skipped", "pasta unavailable: pasta is not installed; install: apt-get install -y passt"),
    rec(ARP_V6, "linux"),
    rec(ARP_V6, "slirp4netns", "skipped", "slirp4netns lacks capabilities: ipv6"),
    rec(TCP, "linux", "failed", "no frame matched"),
    rec(TCP, "gvisor", "not run", "not measured: linux, which stands for it, failed", carried_from="linux"),
    rec(FANOUT, ""),
]
LINKS = {
    f"suites/{ARP}[gvisor]": "#finding-arp-late",
    f"suites/{ARP}[gvisor-ch4]": "#finding-arp-late",
    f"suites/{TCP}[linux]": "#finding-tcp-rst",
}


@pytest.fixture
def shaped() -> dict[str, Any]:
    return matrix(RESULTS, STACKS, RUN, LINKS, {(TCP, "linux"), (ARP, "gvisor-ch4")})


def cells(m: dict[str, Any]) -> dict[tuple[str, str], dict[str, Any]]:
    return {(row["check"], c["stack"]): c for s in m["suites"] for f in s["features"] for row in f["rows"] for c in row["cells"]}


def rows(m: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {row["check"]: row for s in m["suites"] for f in s["features"] for row in f["rows"]}


def test_stack_ids_split_into_driver_variant_and_build():
    assert split_stack("gvisor-ch4@nightly") == ("gvisor", "ch4", "nightly")
    assert split_stack("linux") == ("linux", "", "")
    assert split_stack("slirp4netns-mtu65520") == ("slirp4netns", "mtu65520", "")
    assert split_stack("my-net-fast", {"driver": "my-net"}) == ("my-net", "fast", "")


def test_columns_group_variants_under_their_driver_and_builds_apart():
    heads, cols = columns(STACKS, RUN)
    assert [(h["name"], h["span"]) for h in heads] == [
        ("linux", 2),
        ("gvisor", 2),
        ("gvisor@nightly", 2),
        ("slirp4netns", 1),
        ("pasta", 1),
    ]
    assert [(c["stack"], c["label"]) for c in cols] == [
        ("linux", "default"),
        ("linux-txcsum", "txcsum"),
        ("gvisor", "default"),
        ("gvisor-ch4", "ch4"),
        ("gvisor@nightly", "default"),
        ("gvisor-ch4@nightly", "ch4"),
        ("slirp4netns", "default"),
        ("pasta", "default"),
    ]
    pasta = heads[-1]
    assert pasta["missing"] and "apt-get install -y passt" in pasta["title"] and "not installed" in pasta["title"]
    assert [c["missing"] for c in cols] == [False] * 7 + [True]
    assert [c["stack"] for c in cols if c["edge"]] == ["linux-txcsum", "gvisor-ch4", "gvisor-ch4@nightly", "slirp4netns", "pasta"]
    assert sum(h["span"] for h in heads) == len(cols)
    assert [h["version"] for h in heads] == ["1.0", "1.0", "1.0", "1.0", ""], "every installed group says its version"


def test_rows_are_grouped_by_suite_then_feature(shaped):
    assert [s["name"] for s in shaped["suites"]] == ["linkdispatch", "transport"]
    link = shaped["suites"][0]
    assert [(f["name"], [r["name"] for r in f["rows"]]) for f in link["features"]] == [
        ("test_arp.py", ["test_answers_who_has_for_own_address", "test_ndp[ipv6]"]),
        ("test_fanout.py", ["test_kernel_fanout"]),
    ]
    assert link["checks"] == 3 and shaped["total"] == 4
    # the no-stack column comes first, then the grouped stacks
    assert shaped["no_stack"] and shaped["width"] == len(STACKS) + 2
    assert [c["stack"] for c in next(iter(rows(shaped).values()))["cells"]][:3] == ["", "linux", "linux-txcsum"]


def test_cells_tell_na_from_skip_from_carried(shaped):
    c = cells(shaped)
    # no record at all: n/a
    assert c[(FANOUT, "linux")]["status"] == "n/a" and c[(FANOUT, "linux")]["kind"] == "n/a"
    assert c[(ARP, "")]["status"] == "n/a"
    # a skip saying the topology does not apply: n/a, the reason kept in the title
    tap = c[(ARP, "slirp4netns")]
    assert (tap["kind"], tap["status"], tap["short"]) == ("n/a", "n/a", "n/a") and "does not apply" in tap["title"]
    # a missing capability or program: a skip, saying why
    v6 = c[(ARP_V6, "slirp4netns")]
    assert (v6["kind"], v6["status"], v6["short"]) == ("skip", "skipped", "skip")
    assert v6["title"] == "slirp4netns lacks capabilities: ipv6"
    assert c[(ARP, "pasta")]["kind"] == "skip" and "apt-get install" in c[(ARP, "pasta")]["title"]
    # carried over: the verdict, marked with the variant it came from
    ch4 = c[(ARP, "gvisor-ch4")]
    assert (ch4["kind"], ch4["status"], ch4["carried_from"]) == ("carried", "known deviation", "gvisor")
    assert ch4["title"] == "carried over from gvisor: gVisor answers late"
    assert c[(ARP, "linux-txcsum")]["title"] == "carried over from linux"
    assert c[(TCP, "gvisor")]["kind"] == "carried" and c[(TCP, "gvisor")]["short"] == "—"
    # a measured status
    assert (c[(ARP, "linux")]["kind"], c[(ARP, "linux")]["short"], c[(ARP, "linux")]["carried_from"]) == ("status", "pass", "")
    assert c[(TCP, "linux")]["short"] == "FAIL" and c[(ARP, "gvisor@nightly")]["short"] == "XPASS"
    assert len(c[(ARP, "gvisor@nightly")]["title"]) == TITLE_CHARS


def test_links_and_changed_cells(shaped):
    c, r = cells(shaped), rows(shaped)
    assert c[(ARP, "gvisor")]["href"] == "#finding-arp-late" and c[(ARP, "gvisor-ch4")]["href"] == "#finding-arp-late"
    assert c[(TCP, "linux")]["href"] == "#finding-tcp-rst"
    assert c[(ARP, "linux")]["href"] == "" and c[(ARP, "gvisor@nightly")]["href"] == ""  # no finding: no link
    assert c[(TCP, "linux")]["changed"] and c[(ARP, "gvisor-ch4")]["changed"] and not c[(ARP, "gvisor")]["changed"]
    assert r[TCP]["changed"] and r[ARP]["changed"] and not r[ARP_V6]["changed"]
    assert shaped["changed"] == 2
    assert r[ARP]["statuses"].split() == ["n/a", "passed", "known-deviation", "unexpected-pass", "skipped"]
    assert "failed" in r[TCP]["statuses"].split() and "not-run" in r[TCP]["statuses"].split()


def test_changed_cells_are_new_outcomes_new_checks_and_new_builds():
    def run(version: str) -> dict[str, Any]:
        return {"stacks": {"linux": {"version": "6.1.0"}, "gvisor": {"version": version}, "pasta": {}}}

    previous = {
        "run": run("20240101"),
        "results": [rec(ARP, "linux"), rec(ARP, "gvisor"), rec(ARP, "pasta"), rec(TCP, "linux", "failed")],
    }
    same = {**previous, "run": run("20240101")}
    assert changed_cells(same, previous) == set() and changed_cells(same, None) == set()
    current = {
        "run": {**run("20240202"), "stacks": {**run("20240202")["stacks"], "pasta": {"version": "2023_12_30"}}},
        "results": [rec(ARP, "linux"), rec(ARP, "gvisor"), rec(ARP, "pasta"), rec(TCP, "linux"), rec(ARP_V6, "linux")],
    }
    # TCP fixed, ARP_V6 new, every gvisor cell (new build); pasta named no version before: no change
    assert changed_cells(current, previous) == {(TCP, "linux"), (ARP_V6, "linux"), (ARP, "gvisor")}


class Table(HTMLParser):
    """What the contract names, as parsed: rows, cells, header rows, controls, and the text."""

    def __init__(self) -> None:
        super().__init__()
        self.rows: list[dict[str, str | None]] = []
        self.cells: dict[tuple[str, str], dict[str, str | None]] = {}
        self.cell_text: dict[tuple[str, str], str] = {}
        self.cell_links: dict[tuple[str, str], str] = {}
        self.head_rows: list[list[dict[str, str | None]]] = []
        self.group_rows: list[str] = []
        self.buttons: list[dict[str, str | None]] = []
        self.inputs: list[dict[str, str | None]] = []
        self.shown = ""
        self.tags: list[str] = []
        self._in_thead = False
        self._check: str | None = None
        self._cell: tuple[str, str] | None = None
        self._shown = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = dict(attrs)
        self.tags.append(tag)
        if tag == "thead":
            self._in_thead = True
        elif tag == "tr" and self._in_thead:
            self.head_rows.append([])
        elif tag == "th" and self._in_thead:
            self.head_rows[-1].append(a)
        elif tag == "tr":
            classes = (a.get("class") or "").split()
            self._check = a.get("data-check") if "check" in classes else None
            if self._check is not None:
                self.rows.append(a)
            elif classes:
                self.group_rows.append(classes[0])
        elif tag == "td" and self._check is not None and "c" in (a.get("class") or "").split():
            self._cell = (self._check, a["data-stack"] or "")
            self.cells[self._cell] = a
            self.cell_text[self._cell] = ""
        elif tag == "a" and self._cell:
            self.cell_links[self._cell] = a["href"] or ""
        elif tag == "button" and "filter" in (a.get("class") or ""):
            self.buttons.append(a)
        elif tag == "input":
            self.inputs.append(a)
        elif tag == "span" and a.get("id") == "matrix-shown":
            self._shown = True

    def handle_endtag(self, tag: str) -> None:
        if tag == "thead":
            self._in_thead = False
        elif tag == "td":
            self._cell = None
        elif tag == "span":
            self._shown = False

    def handle_data(self, data: str) -> None:
        if self._cell:
            self.cell_text[self._cell] += data
        if self._shown:
            self.shown += data


def render(m: dict[str, Any]) -> str:
    return environment().from_string('{% import "matrix.html.j2" as mx %}{{ mx.matrix(m) }}').render(m=m)


def parse(html: str) -> Table:
    table = Table()
    table.feed(html)
    table.close()
    return table


def test_rendered_matrix_keeps_the_dom_contract(shaped):
    html = render(shaped)
    t = parse(html)
    assert html.count('<table class="matrix">') == 1 and html.count("<tbody") == 2  # one tbody per suite (it folds)
    assert [r["data-check"] for r in t.rows] == [ARP, ARP_V6, FANOUT, TCP]
    arp = t.rows[0]
    assert arp["class"] == "check" and arp["data-changed"] == "1" and "known-deviation" in (arp["data-statuses"] or "").split()
    assert "data-changed" not in t.rows[1]
    assert t.group_rows == ["suite", "feature", "feature", "suite", "feature"]
    # two header rows: drivers spanning their variants, then the variants
    drivers, variants = t.head_rows
    assert [(h.get("colspan"), h.get("rowspan")) for h in drivers[:2]] == [(None, "2"), (None, "2")]  # check, no stack
    assert sum(int(h["colspan"] or 0) for h in drivers[2:]) == len(variants) == len(STACKS)
    assert [v["data-stack"] for v in variants][:3] == ["linux", "linux-txcsum", "gvisor"]
    pasta = variants[-1]
    assert pasta["class"] == "edge missing" and "apt-get install -y passt" in (pasta["title"] or "")
    # cells: every check x column, with the contract's attributes
    assert len(t.cells) == 4 * (len(STACKS) + 1)
    assert t.cells[(ARP, "gvisor-ch4")]["data-carried-from"] == "gvisor"
    assert t.cell_text[(ARP, "gvisor-ch4")] == f"{CARRIED_MARK}dev"
    assert t.cells[(ARP, "gvisor-ch4")]["data-changed"] == "1"
    assert t.cells[(ARP, "slirp4netns")]["data-status"] == "n/a" and t.cell_text[(ARP, "slirp4netns")] == "n/a"
    assert t.cells[(ARP_V6, "slirp4netns")]["data-status"] == "skipped"
    assert t.cells[(ARP_V6, "slirp4netns")]["title"] == "slirp4netns lacks capabilities: ipv6"
    assert t.cells[(TCP, "linux")]["data-status"] == "failed" and t.cell_links[(TCP, "linux")] == "#finding-tcp-rst"
    assert (ARP, "linux") not in t.cell_links
    assert t.cells[(FANOUT, "")]["data-status"] == "passed"
    # a reason is text, never markup
    assert t.cells[(ARP, "gvisor")]["title"] == 'gVisor answers <late> & "twice"'
    assert "<late>" not in html
    # the controls
    assert [(b["data-filter"], b["aria-pressed"]) for b in t.buttons] == [
        ("all", "true"),
        ("failures", "false"),
        ("deviations", "false"),
        ("unexpected", "false"),
        ("changed", "false"),
    ]
    assert any(i.get("id") == "matrix-search" and i.get("type") == "search" for i in t.inputs)
    assert t.shown == "4 of 4 checks"


def test_a_run_without_stackless_checks_has_no_empty_column():
    m = matrix([r for r in RESULTS if r["stack"]], STACKS, RUN, {}, set())
    t = parse(render(m))
    assert not m["no_stack"] and m["width"] == len(STACKS) + 1
    assert all(stack for _, stack in t.cells) and len(t.head_rows[0]) == 1 + 5
    assert m["changed"] == 0 and "changed since the previous run" not in render(m)


@pytest.mark.parametrize("name", ["page.js", "matrix.css"])
def test_included_assets_pass_through_jinja_unchanged(name):
    """Both go inline through `{% include %}`: Jinja must not read anything in them as its own
    syntax, and the script must not close its <script> element early."""
    text = (TEMPLATES / name).read_text()
    assert environment().from_string(f'{{% include "{name}" %}}').render() == text
    for marker in ("{{", "{%", "{#", "</script", "</style"):
        assert marker not in text.lower()
