"""The perf section as the page shows it (templates/perf.html.j2, macro `perf`).

What a perf run found (results.json "perf", written by labkit.perf's campaign): per metric and
MTU a chart and per cell a row of figures. A chart is one bar per stack and variant, grouped by
driver as in the conformance matrix (linux first: it is the reference), its length the cell's
median, a whisker from its min to its max, and the kernel's median as a dashed line across: a
reader sees at once which configurations are far from Linux and which are noisy. An erratic cell
(its repetitions spread more than max/min 3 or CV 25 %, confirmed by re-measuring) and a cell
below its gate carry a mark whose title says why; erratic is a finding, a missed gate a failure.

Latency metrics are lower-is-better: their bars are still the measured value (shorter is
better) while the ratio to the kernel, as the campaign computed it, is kernel/cell, so a ratio
of 1.0 means "as good as Linux" and lower means worse for every metric alike.

Every coordinate is computed here, as numbers; the template only writes them into attributes,
autoescaped. Nothing here builds markup. The trend per cell comes from the nightly history
(reports.history.perf_trends): a sparkline of its median over the nights that measured perf.
"""

from __future__ import annotations

import math
import re
from collections import Counter
from collections.abc import Mapping
from typing import Any

from .anchors import unique_anchor
from .matrix import DRIVER_ORDER, split_stack

KERNEL = "linux"  # the stack every ratio is taken against
METRICS = {  # the campaign's metric names (the results contract) -> what the chart says it is
    "tcp_tx_1": "TCP bulk, stack → peer, 1 connection",
    "tcp_tx_4": "TCP bulk, stack → peer, 4 connections",
    "tcp_rx_1": "TCP bulk, peer → stack, 1 connection",
    "tcp_rx_4": "TCP bulk, peer → stack, 4 connections",
    "udp_tx": "UDP at a fixed offered rate, stack → peer: received",
    "tcp_rr": "TCP request/response latency with the smallest message sockperf sends (14 bytes), p50 (p99 as a tick)",
    "tcp_crr": "TCP connect + request + close rate",
}
UNITS = {"usec": "µs", "us": "µs"}  # how a unit is written on the page
EXTRA_UNITS = {"loss": "%"}  # an extra figure's unit where it is not the metric's own
PERCENTILE = re.compile(r"p\d+(?:\.\d+)?")  # p50, p99, p99.9: in the metric's own unit
MISSING = "—"
ERRORS_SHOWN, ERROR_CHARS = 3, 300  # a cell's measurement errors on the page; the log has them all
TIMES = "\u00d7"  # the multiplication sign written after a ratio

# Chart geometry, in px. A row per cell and a heading row per driver group.
LABEL_W, PLOT_W, VALUE_W = 120, 300, 130
ROW_H, BAR_H, AXIS_H = 16, 10, 16
SPARK_W, SPARK_H, SPARK_PAD = 80, 18, 2


def finite(value: Any) -> float | None:
    """A figure as a float, or None where the campaign had none (null, NaN, a string)."""
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        return None
    return float(value)


def number(value: float | None) -> str:
    """A figure with the digits a reader can use: three significant ones (two below 1), never an exponent."""
    if value is None:
        return MISSING
    size = abs(value)
    if size >= 100:
        return f"{value:.0f}"
    if size >= 10:
        return f"{value:.1f}"
    if size >= 1 or size == 0:
        return f"{value:.2f}"
    return f"{value:.{max(2, 1 - math.floor(math.log10(size)))}f}"


def times(ratio: float | None) -> str:
    """A ratio to the kernel: two decimals, or two significant digits for the small ones (0.031 times)."""
    if ratio is None:
        return MISSING
    return (f"{ratio:.2f}" if ratio >= 0.095 or ratio == 0 else f"{ratio:.2g}") + TIMES


def unit_of(unit: str) -> str:
    return UNITS.get(unit, unit)


def nice_ticks(top: float, count: int = 4) -> list[float]:
    """Axis ticks from 0 at a round step (1, 2 or 5 times a power of ten), the last >= top."""
    if top <= 0:
        return [0.0, 1.0]
    raw = top / count
    power = 10 ** math.floor(math.log10(raw))
    step = next(m * power for m in (1, 2, 5, 10) if m * power >= raw)
    n = math.ceil(top / step - 1e-9)
    return [round(i * step, 12) for i in range(n + 1)]


def order_key(stack: str) -> tuple[int, str, str, bool, str]:
    """Stacks as the matrix orders them: linux first, then the sandboxes; in a driver its
    default variant first; a build (`gvisor@nightly`) after its driver's packaged variants."""
    driver, variant, build = split_stack(stack)
    rank = DRIVER_ORDER.index(driver) if driver in DRIVER_ORDER else len(DRIVER_ORDER)
    return rank, driver, build, variant != "", variant


def group_of(stack: str) -> str:
    driver, _, build = split_stack(stack)
    return f"{driver}@{build}" if build else driver


def anchor_of(cell: Mapping[str, Any], taken: set[str]) -> str:
    """A stable id for a cell's row, so a chart's bar and the summary can link to it."""
    return unique_anchor(f"perf-{cell['stack']}-{cell['metric']}-{cell.get('mtu') or 'default'}", taken)


def _why_erratic(cell: Mapping[str, Any]) -> str:
    return f"erratic: {cell.get('erratic_why') or 'the campaign gave no reason'}"


def _gate(cell: Mapping[str, Any], ratio: float | None) -> dict[str, Any]:
    gate = cell.get("gate")
    if not isinstance(gate, Mapping) or finite(gate.get("min_ratio")) is None:
        return {"text": "", "met": None, "verdict": "", "cls": "", "why": ""}
    floor = finite(gate.get("min_ratio"))
    met = bool(gate.get("met"))
    why = f"gate: the median at least {times(floor)} the kernel's; this cell {times(ratio)}: {'met' if met else 'missed'}"
    return {
        "text": f"≥ {times(floor)}",
        "met": met,
        "verdict": "met" if met else "missed",
        "cls": "passed" if met else "failed",
        "why": why,
    }


def _extras(extra: Any, unit: str) -> list[dict[str, str]]:
    """The figures a metric has beside its median (tcp_rr's p99, udp_tx's loss), each with its unit."""
    if not isinstance(extra, Mapping):
        return []
    out = []
    for key in sorted(extra):
        value = finite(extra[key])
        if value is None:
            shown = str(extra[key])
        else:
            shown = str(int(value)) if value.is_integer() and abs(value) < 1e15 else number(value)  # counts as counts
        name = str(key)
        out.append({"name": name, "value": shown, "unit": EXTRA_UNITS.get(name, unit if PERCENTILE.fullmatch(name) else "")})
    return out


def _trend(series: list[float | None] | None, dates: list[str], unit: str) -> dict[str, Any] | None:
    """A sparkline of a cell's median over the nights: segments of consecutive measured nights
    (a night without the cell breaks the line), each point titled with its night and value."""
    if not series or sum(v is not None for v in series) < 2:
        return None
    values = [v for v in series if v is not None]
    lo, hi = min(values), max(values)
    span = hi - lo
    step = (SPARK_W - 2 * SPARK_PAD) / max(1, len(series) - 1)
    segments: list[list[dict[str, Any]]] = [[]]
    for i, v in enumerate(series):
        if v is None:
            if segments[-1]:
                segments.append([])
            continue
        y = SPARK_H / 2 if span == 0 else SPARK_H - SPARK_PAD - (v - lo) / span * (SPARK_H - 2 * SPARK_PAD)
        date = dates[i] if i < len(dates) else "?"
        segments[-1].append({"x": round(SPARK_PAD + i * step, 2), "y": round(y, 2), "title": f"{date}: {number(v)} {unit}"})
    segments = [s for s in segments if s]
    first, last = values[0], values[-1]
    moved = None if first == 0 else round((last - first) / abs(first) * 100)
    change = "" if moved is None else "±0 %" if moved == 0 else f"{moved:+d} %"
    return {
        "width": SPARK_W,
        "height": SPARK_H,
        "segments": segments,
        "nights": len(values),
        "title": f"median over {len(values)} nights: {number(first)} → {number(last)} {unit}" + (f" ({change})" if change else ""),
        "change": change,
    }


def _cell(cell: Mapping[str, Any], anchor: str, trend: dict[str, Any] | None) -> dict[str, Any]:
    unit = unit_of(str(cell.get("unit", "")))
    median, lo, hi = finite(cell.get("median")), finite(cell.get("min")), finite(cell.get("max"))
    cv, ratio, cpu = finite(cell.get("cv")), finite(cell.get("ratio")), finite(cell.get("cpu_per_gb"))
    erratic, extra = bool(cell.get("erratic")), cell.get("extra")
    values = [finite(v) for v in cell.get("values") or []]
    errors = [e for e in cell.get("errors") or [] if e] if isinstance(cell.get("errors"), list) else []
    return {
        "stack": str(cell["stack"]),
        "anchor": anchor,
        "kernel": cell["stack"] == KERNEL,
        "median": number(median),
        "min": number(lo),
        "max": number(hi),
        "unit": unit,
        "cv": MISSING if cv is None else f"{cv * 100:.1f}",
        "ratio": times(ratio),
        "cpu_per_gb": number(cpu) if cpu is not None else MISSING,
        "repetitions": ", ".join(number(v) for v in values),  # not "values": a dict method to the template
        "erratic": erratic,
        "erratic_why": _why_erratic(cell) if erratic else "",
        "gate": _gate(cell, ratio),
        "extra": _extras(extra, unit),
        "errors": [str(e)[:ERROR_CHARS] for e in errors[:ERRORS_SHOWN]],
        "errors_more": max(0, len(errors) - ERRORS_SHOWN),
        "trend": trend,
        # for the chart only
        "_median": median,
        "_min": lo,
        "_max": hi,
        "_ratio": ratio,
        "_p99": finite(extra.get("p99")) if isinstance(extra, Mapping) else None,
    }


def _x(value: float, top: float) -> float:
    return round(LABEL_W + max(0.0, value) / top * PLOT_W, 2)


def _chart(metric: str, mtu: Any, rows: list[dict[str, Any]], unit: str, better: str, several_mtus: bool) -> dict[str, Any]:
    """One chart: a heading row per driver group, a bar per cell, the kernel's median as a line."""
    kernel = next((r for r in rows if r["kernel"]), None)
    kernel_median = kernel["_median"] if kernel else None
    figures = [v for r in rows for v in (r["_median"], r["_max"], r["_p99"]) if v is not None]
    ticks = nice_ticks(max(figures, default=0.0))
    top = ticks[-1] or 1.0
    decimals = max(0, -math.floor(math.log10(ticks[1] - ticks[0]) + 1e-9))  # as many as the step has
    bars, heads = [], []
    y, group = AXIS_H, None
    for r in rows:
        g = group_of(r["stack"])
        if g != group:
            heads.append({"text": g, "y": y + ROW_H - 4})
            y += ROW_H
            group = g
        _, variant, _ = split_stack(r["stack"])
        mid = y + ROW_H / 2
        median = r["_median"]
        marks = []
        if r["gate"]["met"] is False:
            marks.append({"cls": "missed", "text": "✗", "title": r["gate"]["why"]})
        if r["erratic"]:
            marks.append({"cls": "erratic", "text": "⚠", "title": r["erratic_why"]})
        title = f"{r['stack']}: median {r['median']} {unit} (min {r['min']}, max {r['max']}, CV {r['cv']} %)"
        if not r["kernel"]:
            title += f", {r['ratio']} the kernel"
        for m in marks:
            title += f"; {m['title']}"
        for e in r["errors"]:
            title += f"; error: {e}"
        bars.append(
            {
                "stack": r["stack"],
                "href": f"#{r['anchor']}",
                "label": variant or "default",
                "label_x": LABEL_W - 6,
                "label_y": round(mid + 4, 2),
                "cls": " ".join(
                    c for c, on in (("kernel", r["kernel"]), ("erratic", r["erratic"]), ("missed", r["gate"]["met"] is False)) if on
                )
                or "cell",
                "bar": None
                if median is None
                else {"x": LABEL_W, "y": round(mid - BAR_H / 2, 2), "w": round(_x(median, top) - LABEL_W, 2), "h": BAR_H},
                "whisker": None
                if r["_min"] is None or r["_max"] is None
                else {
                    "x1": _x(r["_min"], top),
                    "x2": _x(r["_max"], top),
                    "y": round(mid, 2),
                    "y1": round(mid - 3, 2),
                    "y2": round(mid + 3, 2),
                },
                "p99": None
                if r["_p99"] is None
                else {
                    "x": _x(r["_p99"], top),
                    "y1": round(mid - BAR_H / 2, 2),
                    "y2": round(mid + BAR_H / 2, 2),
                    "title": f"p99 {number(r['_p99'])} {unit}",
                },
                "value": "no figure"
                if median is None
                else f"{r['median']}" + (" · kernel" if r["kernel"] else f" · {r['ratio']}" if r["_ratio"] is not None else ""),
                "value_x": LABEL_W + PLOT_W + 6,
                "marks": [
                    {**m, "x": LABEL_W + PLOT_W + VALUE_W - 14 * (len(marks) - i), "y": round(mid + 4, 2)}
                    for i, m in enumerate(marks)
                ],
                "title": title,
            }
        )
        y += ROW_H
    height = y + 4
    return {
        "metric": metric,
        "mtu": mtu,
        "title": metric + (f" · MTU {mtu}" if several_mtus and mtu is not None else ""),
        "what": METRICS.get(metric, metric),
        "unit": unit,
        "better": better,
        "width": LABEL_W + PLOT_W + VALUE_W,
        "height": height,
        "plot": {"x1": LABEL_W, "x2": LABEL_W + PLOT_W, "y1": AXIS_H, "y2": height - 4},
        "ticks": [{"x": _x(t, top), "text": f"{t:.{decimals}f}"} for t in ticks],
        "tick_y": AXIS_H - 4,
        "reference": None
        if kernel_median is None
        else {
            "x": _x(kernel_median, top),
            "y1": AXIS_H - 2,
            "y2": height - 2,
            "title": f"the kernel's median: {number(kernel_median)} {unit}",
        },
        "kernel": MISSING if kernel_median is None else f"{number(kernel_median)} {unit}",
        "heads": heads,
        "bars": bars,
    }


def _metric_order(metric: str) -> tuple[int, str]:
    names = list(METRICS)
    return (names.index(metric) if metric in names else len(names), metric)


def _trends(history: Mapping[str, Any] | None) -> tuple[dict[tuple[str, str, Any], list[float | None]], list[str]]:
    perf = (history or {}).get("perf") or {}
    series = {(c["stack"], c["metric"], c.get("mtu")): list(c.get("medians") or []) for c in perf.get("cells", [])}
    return series, list(perf.get("dates", []))


def shape(perf: Mapping[str, Any] | None, history: Mapping[str, Any] | None = None) -> dict[str, Any] | None:
    """The context the `perf` macro lays out; None when the run measured no perf.
    `history`: results.json's "history" (reports.history.summarize), for each cell's trend."""
    if not perf:
        return None
    cells = [c for c in perf.get("cells") or [] if isinstance(c, Mapping) and c.get("stack") and c.get("metric")]
    series, dates = _trends(history)
    taken: set[str] = set()
    by_chart: dict[tuple[str, Any], list[dict[str, Any]]] = {}
    meta: dict[tuple[str, Any], tuple[str, str]] = {}
    for c in sorted(cells, key=lambda c: (_metric_order(c["metric"]), c.get("mtu") or 0, order_key(c["stack"]))):
        key = (c["metric"], c.get("mtu"))
        unit = unit_of(str(c.get("unit", "")))
        trend = _trend(series.get((c["stack"], c["metric"], c.get("mtu"))), dates, unit)
        by_chart.setdefault(key, []).append(_cell(c, anchor_of(c, taken), trend))
        meta.setdefault(key, (unit, "lower" if c.get("better") == "lower" else "higher"))
    mtus = Counter(metric for metric, _ in by_chart)
    charts, groups = [], []
    for (metric, mtu), rows in by_chart.items():
        unit, better = meta[(metric, mtu)]
        chart = _chart(metric, mtu, rows, unit, better, mtus[metric] > 1)
        charts.append(chart)
        public = [{k: v for k, v in r.items() if not k.startswith("_")} for r in rows]
        groups.append(
            {
                "title": chart["title"],
                "what": chart["what"],
                "unit": unit,
                "better": better,
                "mtu": MISSING if mtu is None else str(mtu),
                "rows": public,
            }
        )
    flat = [r for g in groups for r in g["rows"]]
    duration = finite(perf.get("duration s"))
    return {
        "repetitions": perf.get("repetitions", MISSING),
        "seconds": number(finite(perf.get("seconds"))),
        "full": bool(perf.get("full")),
        "duration": MISSING if duration is None else f"{duration / 60:.1f} min",
        "cells": len(flat),
        "stacks": len({r["stack"] for r in flat}),
        "charts": charts,
        "groups": groups,
        "missed": [
            {"stack": r["stack"], "href": f"#{r['anchor']}", "metric": g["title"], "why": r["gate"]["why"]}
            for g in groups
            for r in g["rows"]
            if r["gate"]["met"] is False
        ],
        "erratic": [
            {"stack": r["stack"], "href": f"#{r['anchor']}", "metric": g["title"], "why": r["erratic_why"]}
            for g in groups
            for r in g["rows"]
            if r["erratic"]
        ],
        "skipped": [{"stack": str(k), "why": str(v)[:ERROR_CHARS]} for k, v in sorted((perf.get("skipped") or {}).items())],
        "udp_offered": str(perf.get("udp offered") or ""),
        "rr_bytes": str(perf.get("rr message bytes") or ""),
        "trends": sum(1 for r in flat if r["trend"]),
        "nights": len(dates),
    }
