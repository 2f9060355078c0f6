"""The perf section as the page lays it out (reports/perf.py, templates/perf.html.j2) and the
perf medians a night keeps (reports/history.py). The perf dict is a synthetic one of a default
run's size and shape (the results contract of issue 18): 10 stacks x 8 metrics x 5 repetitions,
with an erratic cell, a missed gate and a latency metric, so the charts, marks and trends are
checked on what a run hands the report."""

from __future__ import annotations

import json
import random
import re
import statistics
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import pytest

from labkit.errors import LabInputError
from reports import history
from reports.html import environment
from reports.perf import LABEL_W, PLOT_W, nice_ticks, number, shape

STACKS = [
    "pasta",
    "gvisor-ch4",
    "linux",
    "gvisor",
    "gvisor-ch2",
    "gvisor-nogso",
    "gvisor-swgso",
    "gvisor-txcsum",
    "gvisor-norxcsum",
    "slirp4netns",
]
ORDERED = [
    "linux",
    "gvisor",
    "gvisor-ch2",
    "gvisor-ch4",
    "gvisor-nogso",
    "gvisor-norxcsum",
    "gvisor-swgso",
    "gvisor-txcsum",
    "slirp4netns",
    "pasta",
]
# metric -> (unit, better, the kernel's figure, how far each driver is from it)
METRICS: dict[str, tuple[str, str, float]] = {
    "tcp_tx_1": ("Gbit/s", "higher", 38.0),
    "tcp_tx_4": ("Gbit/s", "higher", 61.0),
    "tcp_rx_1": ("Gbit/s", "higher", 35.0),
    "tcp_rx_4": ("Gbit/s", "higher", 58.0),
    "udp_tx": ("Mbit/s", "higher", 995.0),
    "udp_rx": ("Mbit/s", "higher", 990.0),  # not a contract name: shown after the known ones
    "tcp_rr": ("usec", "lower", 14.0),
    "tcp_crr": ("conn/s", "higher", 21000.0),
}
SHARE = {"linux": 1.0, "gvisor": 0.12, "slirp4netns": 0.08, "pasta": 0.3}
ERRATIC = ("gvisor-ch4", "tcp_tx_1")
MISSED = ("slirp4netns", "tcp_tx_4")
X = "\u00d7"  # the multiplication sign the page writes after a ratio
TEMPLATE = Path(__file__).parent.parent / "reports" / "templates" / "perf.html.j2"
WHY = "max/min 4.3 over reps 4.4, 18.8, 4.8, 18.4, 4.4 (confirmed by 3 more: 4.2, 18.1, 4.6)"


def cell(stack: str, metric: str, rng: random.Random, scale: float = 1.0, mtu: int = 1500) -> dict[str, Any]:
    unit, better, kernel = METRICS[metric]
    driver = stack.split("-")[0]
    share = SHARE[driver] * (1 + 0.1 * (sum(map(ord, stack)) % 3) if driver == "gvisor" else 1)
    centre = kernel * scale * (share if better == "higher" else 1 / share)
    values = [round(centre * rng.uniform(0.93, 1.07), 3) for _ in range(5)]
    if (stack, metric) == ERRATIC:
        values = [4.4, 18.8, 4.8, 18.4, 4.4]
    median = statistics.median(values)
    gate = {"min_ratio": 0.05, "met": True} if metric.startswith("tcp_") else None
    return {
        "stack": stack,
        "metric": metric,
        "mtu": mtu,
        "unit": unit,
        "better": better,
        "values": values,
        "median": median,
        "min": min(values),
        "max": max(values),
        "cv": statistics.pstdev(values) / statistics.fmean(values),
        "ratio": None,
        "cpu_per_gb": round(rng.uniform(0.5, 9.0), 2) if metric.startswith(("tcp_tx", "tcp_rx")) else None,
        "erratic": (stack, metric) == ERRATIC,
        "erratic_why": WHY if (stack, metric) == ERRATIC else "",
        "gate": gate,
        "extra": {"observations": 41210.0, "p99": round(median * 2.5, 1)}
        if metric == "tcp_rr"
        else {"loss": 0.4}
        if metric.startswith("udp")
        else {"errors": 0.0, "non_2xx": 0.0}
        if metric == "tcp_crr"
        else {},
        "rechecked": [4.2, 18.1, 4.6] if (stack, metric) == ERRATIC else [],
        "errors": [],
    }


def run(seed: int = 1, scale: float = 1.0, drop: tuple[str, str] | None = None) -> dict[str, Any]:
    """A perf dict as the campaign returns it: ratios to linux in the same run, gates judged on them."""
    rng = random.Random(seed)
    cells = [cell(s, m, rng, scale) for m in METRICS for s in STACKS if (s, m) != drop]
    kernel = {c["metric"]: c["median"] for c in cells if c["stack"] == "linux"}
    for c in cells:
        k = kernel[c["metric"]]
        c["ratio"] = (c["median"] / k) if c["better"] == "higher" else (k / c["median"])
        if (c["stack"], c["metric"]) == MISSED:
            c["ratio"], c["gate"] = 0.031, {"min_ratio": 0.05, "met": False}
        elif c["gate"]:
            c["gate"]["met"] = c["ratio"] >= c["gate"]["min_ratio"]
    return {
        "repetitions": 5,
        "seconds": 3,
        "full": False,
        "duration s": 611.0,
        "udp offered": "300M",
        "rr message bytes": 1,
        "skipped": {},
        "cells": cells,
    }


class Dom(HTMLParser):
    """Just enough of a tree for these tests: tag, attributes, children, text (its own and below)."""

    VOID = {"br", "img", "meta", "input", "hr"}

    def __init__(self, text: str) -> None:
        super().__init__()
        self.root: dict[str, Any] = {"tag": "", "attrs": {}, "children": [], "text": ""}
        self.open = [self.root]
        self.feed(text)

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        node = {"tag": tag, "attrs": dict(attrs), "children": [], "text": ""}
        self.open[-1]["children"].append(node)
        if tag not in self.VOID:
            self.open.append(node)

    def handle_startendtag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.open[-1]["children"].append({"tag": tag, "attrs": dict(attrs), "children": [], "text": ""})

    def handle_endtag(self, tag: str) -> None:
        while len(self.open) > 1 and self.open.pop()["tag"] != tag:
            pass

    def handle_data(self, data: str) -> None:
        for node in self.open:
            node["text"] += data


def nodes(node: dict[str, Any], tag: str, cls: str | None = None, **attrs: str) -> list[dict[str, Any]]:
    out = []
    for child in node["children"]:
        classes = (child["attrs"].get("class") or "").split()
        if (
            child["tag"] == tag
            and (cls is None or cls in classes)
            and all(child["attrs"].get(k.replace("_", "-")) == v for k, v in attrs.items())
        ):
            out.append(child)
        out += nodes(child, tag, cls, **attrs)
    return out


def render(p: dict[str, Any] | None) -> str:
    """The macro through the page's own environment (autoescape, StrictUndefined)."""
    return environment().from_string('{% from "perf.html.j2" import perf %}{{ perf(p) }}').render(p=p)


def test_a_chart_per_metric_with_a_bar_per_stack_grouped_by_driver_and_the_kernel_as_the_line():
    data = run()
    linux_p99 = next(c["extra"]["p99"] for c in data["cells"] if (c["stack"], c["metric"]) == ("linux", "tcp_rr"))
    p = shape(data)
    assert p is not None and p["cells"] == 80 and p["stacks"] == 10
    assert [c["metric"] for c in p["charts"]] == [*[m for m in METRICS if m != "udp_rx"], "udp_rx"]
    for chart in p["charts"]:
        assert [b["stack"] for b in chart["bars"]] == ORDERED
        assert [h["text"] for h in chart["heads"]] == ["linux", "gvisor", "slirp4netns", "pasta"]
        assert [b["label"] for b in chart["bars"][1:4]] == ["default", "ch2", "ch4"]
        linux = chart["bars"][0]
        assert linux["cls"] == "kernel" and chart["reference"]["x"] == pytest.approx(
            linux["bar"]["x"] + linux["bar"]["w"], abs=0.01
        )
        for b in chart["bars"]:
            end = b["bar"]["x"] + b["bar"]["w"]
            assert LABEL_W <= b["whisker"]["x1"] <= end + 0.01 <= b["whisker"]["x2"] + 0.02 <= LABEL_W + PLOT_W + 0.02
        assert chart["ticks"][0]["text"] == "0" and chart["ticks"][-1]["x"] == LABEL_W + PLOT_W
    rr = next(c for c in p["charts"] if c["metric"] == "tcp_rr")
    assert rr["unit"] == "µs" and rr["better"] == "lower" and rr["kernel"].endswith(" µs")
    slirp = next(b for b in rr["bars"] if b["stack"] == "slirp4netns")
    assert slirp["bar"]["w"] > rr["bars"][0]["bar"]["w"]  # a slower stack's latency bar is longer ...
    assert slirp["value"].endswith(f"0.084{X}")  # ... and its ratio (kernel/cell) below 1 like every worse figure
    assert slirp["p99"]["title"].startswith("p99 ") and slirp["p99"]["x"] > slirp["bar"]["x"] + slirp["bar"]["w"]
    group = next(g for g in p["groups"] if g["title"] == "tcp_rr")
    kernel = group["rows"][0]
    assert kernel["kernel"] and kernel["ratio"] == f"1.00{X}" and kernel["unit"] == "µs"
    assert [(e["name"], e["value"], e["unit"]) for e in kernel["extra"]] == [
        ("observations", "41210", ""),
        ("p99", number(linux_p99), "µs"),
    ]
    crr = next(g for g in p["groups"] if g["title"] == "tcp_crr")["rows"][0]
    assert [(e["name"], e["value"], e["unit"]) for e in crr["extra"]] == [("errors", "0", ""), ("non_2xx", "0", "")]
    udp = next(g for g in p["groups"] if g["title"] == "udp_tx")["rows"][3]
    assert (
        udp["extra"] == [{"name": "loss", "value": "0.40", "unit": "%"}] and udp["cpu_per_gb"] == "—" and udp["gate"]["text"] == ""
    )
    dom = Dom(render(p))
    assert len(nodes(dom.root, "figure", "perf-chart")) == 8 and len(nodes(dom.root, "rect", "bar")) == 80
    assert len(nodes(dom.root, "line", "reference")) == 8
    assert len(nodes(dom.root, "tbody")) == 8 and len([r for r in nodes(dom.root, "tr") if r["attrs"].get("id")]) == 80
    head = [th["text"] for th in nodes(dom.root, "th")]
    assert head[:11] == [
        "stack",
        "median",
        "min",
        "max",
        "unit",
        "CV %",
        "ratio to kernel",
        "CPU s/GB",
        "gate",
        "met",
        "erratic, errors",
    ]
    assert "trend" not in head  # no history: no column for it


def test_every_coordinate_in_the_svg_is_a_number():
    page = render(shape(run()))
    svg = "".join(re.findall(r"<svg.*?</svg>", page, re.S))
    for _name, value in re.findall(r'\b(x|y|x1|x2|y1|y2|width|height|cx|cy|r)="([^"]*)"', svg):
        float(value)  # the shaping computed it; no markup or text went in
    assert page.count("<svg") == 8


def test_an_erratic_cell_and_a_missed_gate_are_marked_and_say_why():
    p = shape(run())
    assert p is not None
    assert [(m["stack"], m["metric"]) for m in p["erratic"]] == [ERRATIC]
    assert [(m["stack"], m["metric"]) for m in p["missed"]] == [MISSED]
    assert p["erratic"][0]["why"] == f"erratic: {WHY}"
    assert p["missed"][0]["why"] == f"gate: the median at least 0.05{X} the kernel's; this cell 0.031{X}: missed"
    dom = Dom(render(p))
    erratic = nodes(dom.root, "g", "erratic", data_stack="gvisor-ch4")
    assert len(erratic) == 1  # in its own chart only
    mark = nodes(erratic[0], "text", "erratic")[0]
    assert mark["text"].startswith(f"erratic: {WHY}") and mark["text"].endswith("⚠")
    assert WHY in nodes(erratic[0], "title")[0]["text"]  # the bar's own title says it too
    missed = nodes(dom.root, "g", "missed")
    assert [g["attrs"]["data-stack"] for g in missed] == ["slirp4netns"]
    assert nodes(missed[0], "text", "missed")[0]["text"].endswith("✗")
    row = next(r for r in nodes(dom.root, "tr", data_stack="slirp4netns") if r["attrs"]["id"] == "perf-slirp4netns-tcp_tx_4-1500")
    met = nodes(row, "td", "failed")[0]
    assert met["text"] == "missed" and nodes(row, "td")[8]["text"] == f"≥ 0.05{X}"
    row = next(r for r in nodes(dom.root, "tr", data_stack="gvisor-ch4") if r["attrs"]["id"] == "perf-gvisor-ch4-tcp_tx_1-1500")
    cv = nodes(row, "td", "erratic")[0]
    assert cv["attrs"]["title"] == f"erratic: {WHY}" and float(cv["text"]) > 25
    assert nodes(row, "td")[1]["attrs"]["title"] == "repetitions: 4.40, 18.8, 4.80, 18.4, 4.40"
    # the summary lists link to the rows
    links = [
        a["attrs"]["href"]
        for ul in nodes(dom.root, "ul", "perf-missed") + nodes(dom.root, "ul", "perf-erratic")
        for a in nodes(ul, "a")
    ]
    assert links == ["#perf-slirp4netns-tcp_tx_4-1500", "#perf-gvisor-ch4-tcp_tx_1-1500"]
    assert all(len(nodes(dom.root, "tr", id=h[1:])) == 1 for h in links)
    ok = shape({**run(), "cells": [c for c in run()["cells"] if (c["stack"], c["metric"]) not in (ERRATIC, MISSED)]})
    assert (
        ok is not None
        and ok["missed"] == []
        and ok["erratic"] == []
        and 'class="mark' not in render(ok).split("</p>", 2)[-1].split("<table")[0]
    )


def test_what_a_stack_or_the_campaign_says_is_shown_never_run():
    data = run()
    evil = "<script>alert(1)</script>"
    data["cells"][0]["erratic"], data["cells"][0]["erratic_why"] = True, f'max/min 9 "{evil}"'
    data["cells"][1]["stack"] = 'gvisor-x"><img src=x onerror=alert(2)>'
    data["cells"][2]["unit"] = "<b>Gbit/s</b>"
    data["cells"][3]["extra"] = {"<i>odd</i>": "<u>x</u>"}
    page = render(shape(data))
    for raw in (evil, "<img src", "<b>Gbit/s", "<i>odd", "<u>x"):
        assert raw not in page
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page and "&lt;img src=x onerror=alert(2)&gt;" in page
    assert "&lt;b&gt;Gbit/s&lt;/b&gt;" in page and "&lt;i&gt;odd&lt;/i&gt; &lt;u&gt;x&lt;/u&gt;" in page
    assert "|safe" not in TEMPLATE.read_text()


def test_missing_figures_read_as_missing_and_no_run_as_no_section():
    assert shape(None) is None and shape({}) is None
    empty = shape({"repetitions": 5, "cells": []})
    assert empty is not None and empty["charts"] == [] and "measured no cell" in render(empty)
    data = run()
    broken = data["cells"][5]  # a cell whose measurement gave nothing
    broken.update(values=[], median=None, min=float("nan"), max=None, cv=None, ratio=None, gate=None, mtu=None)
    broken["errors"] = [f"iperf3 exited 1: <unable to connect> #{i}" for i in range(5)]
    p = shape(data)
    assert p is not None
    row = next(r for g in p["groups"] for r in g["rows"] if r["stack"] == broken["stack"] and g["title"].startswith("tcp_tx_1"))
    assert (row["median"], row["min"], row["cv"], row["ratio"]) == ("—", "—", "—", "—")
    bar = next(b for c in p["charts"] for b in c["bars"] if b["stack"] == broken["stack"] and c["mtu"] is None)
    assert (
        bar["bar"] is None and bar["whisker"] is None and bar["value"] == "no figure" and "error: iperf3 exited 1" in bar["title"]
    )
    assert len(row["errors"]) == 3 and row["errors_more"] == 2
    dom = Dom(render(p))  # StrictUndefined: every key the template reads is there
    tr = nodes(dom.root, "tr", id=row["anchor"])[0]
    assert not nodes(dom.root, "ul", "perf-skipped")
    data["skipped"] = {"pasta@mtu65520": "testbed or far-end servers failed: <timeout>"}
    dom = Dom(render(shape(data)))
    assert [li["text"] for li in nodes(nodes(dom.root, "ul", "perf-skipped")[0], "li")] == [
        "pasta@mtu65520: testbed or far-end servers failed: <timeout>"
    ]
    assert "UDP offered: 300M (iperf3 -b) · 1-byte request/response messages." in dom.root["text"]
    assert [e["text"] for e in nodes(tr, "p", "error")][-2:] == [
        "error: iperf3 exited 1: <unable to connect> #2",
        "and 2 more (the run's log has them)",
    ]


def test_each_mtu_gets_its_own_chart_and_kernel_line():
    data = run()
    rng = random.Random(7)
    data["cells"] += [cell(s, "tcp_tx_1", rng, 1.6, mtu=65520) for s in ("linux", "gvisor", "pasta")]
    p = shape(data)
    assert p is not None
    tx = [c for c in p["charts"] if c["metric"] == "tcp_tx_1"]
    assert [c["title"] for c in tx] == ["tcp_tx_1 · MTU 1500", "tcp_tx_1 · MTU 65520"]
    assert [b["stack"] for b in tx[1]["bars"]] == ["linux", "gvisor", "pasta"] and tx[1]["reference"] is not None


def test_numbers_and_ticks():
    assert [number(v) for v in (0.0, 0.0123, 0.5, 3.14159, 42.42, 21034.6, None)] == [
        "0.00",
        "0.012",
        "0.50",
        "3.14",
        "42.4",
        "21035",
        "—",
    ]
    assert (
        nice_ticks(61.7) == [0, 20, 40, 60, 80]
        and nice_ticks(0.9) == [0, 0.5, 1.0]
        and nice_ticks(22238) == [0, 10000, 20000, 30000]
    )
    assert nice_ticks(0) == [0.0, 1.0]


# -- history -----------------------------------------------------------------------------------


def results(n: int, perf: dict[str, Any] | None) -> dict[str, Any]:
    data: dict[str, Any] = {
        "run": {
            "date": f"2026-11-{n:02d}T01:00:00+00:00",
            "commit": "c1",
            "kernel": "6.1",
            "stacks": {"linux": {"version": "6.1"}},
        },
        "results": [{"check": "linkdispatch/steady", "stack": "linux", "status": "passed", "nodeid": "x"}],
    }
    if perf is not None:
        data["perf"] = perf
    return data


def test_a_night_keeps_each_cells_median_and_the_page_draws_its_trend(tmp_path):
    hist = tmp_path / "history"
    nights = [run(1, 1.0), None, run(2, 1.1, drop=("pasta", "tcp_crr")), run(3, 0.9)]  # a conformance-only night between
    for n, perf in enumerate(nights, 1):
        data = results(n, perf)
        history.attach(data, hist)
    files = history.load_names(hist)
    kept = json.loads(files[0].read_text())["perf"]
    assert len(kept) == 80 and kept[0][:3] == ["gvisor", "tcp_crr", 1500]
    assert all(v == float(f"{v:.4g}") for *_, v in kept) and any(v != round(v) for *_, v in kept)  # 4 significant digits
    assert "perf" not in json.loads(files[1].read_text())  # a night without perf is as it was
    assert max(f.stat().st_size for f in files) < 6000  # small: a line per cell
    summary = data["history"]["perf"]
    assert summary["dates"] == [f"2026-11-{n:02d}T01:00:00+00:00" for n in (1, 3, 4)]
    series = {(c["stack"], c["metric"], c["mtu"]): c["medians"] for c in summary["cells"]}
    assert len(series) == 80 and series[("pasta", "tcp_crr", 1500)][1] is None
    json.dumps(data["history"])  # results.json keeps it

    p = shape(data["perf"], data["history"])
    assert p is not None and p["trends"] == 80 and p["nights"] == 3
    row = next(r for g in p["groups"] for r in g["rows"] if r["stack"] == "pasta" and g["title"] == "tcp_crr")
    assert [len(s) for s in row["trend"]["segments"]] == [1, 1]  # the night that lacked it breaks the line
    assert row["trend"]["nights"] == 2
    linux = next(r for g in p["groups"] for r in g["rows"] if r["stack"] == "linux" and g["title"] == "tcp_tx_1")
    pts = linux["trend"]["segments"][0]
    assert len(pts) == 3 and pts[1]["y"] < pts[0]["y"] < pts[2]["y"]  # 1.1x up, 0.9x down: higher is drawn higher
    assert pts[0]["title"].startswith("2026-11-01T01:00:00+00:00: ") and pts[0]["title"].endswith(" Gbit/s")
    dom = Dom(render(p))
    assert "trend" in [th["text"] for th in nodes(dom.root, "th")]
    assert len(nodes(dom.root, "svg", "spark")) == 80 and len(nodes(dom.root, "polyline")) == 79


def test_a_night_whose_perf_is_not_medians_is_refused(tmp_path):
    hist = tmp_path / "history"
    history.record(hist, results(1, run(1)))
    path = history.load_names(hist)[0]
    night = json.loads(path.read_text())
    night["perf"] = [["linux", "tcp_tx_1", 1500, "fast"]]
    path.write_text(json.dumps(night))
    with pytest.raises(LabInputError, match=r"history night .*: perf is not a list of \[stack, metric, mtu, median\]"):
        history.load(hist)
