"""index.html: what a results.json says, as one self-contained page a stack engineer reads.

From the top: the stacks with their versions; what changed since the previous run (outcomes and
versions); the conformance matrix (reports.matrix: stacks and their variants across, checks
down by suite and feature, filters and a search); the findings (reports.findings: one entry per
distinct finding, opening onto each variant's evidence with its frames decoded, reports.frames);
the rtnetlink support table (reports.support); what malformed frames did to each stack
(reports.robustness); flakiness, history and benchmarks. A cell links to its finding's stable
anchor. No external assets and no request: it opens offline.

This module puts the parts together; templates/index.html.j2 lays them out, autoescaped, so no
reason, check or stack name can turn into markup.
"""

from __future__ import annotations

import json
import re
from collections import Counter, defaultdict
from functools import cache
from pathlib import Path
from typing import Any
from urllib.parse import quote

import jinja2

from .findings import Finding, findings
from .findings import links as finding_links
from .frames import frame_views
from .matrix import SHORT, changed_cells, matrix
from .perf import shape as perf_shape
from .robustness import shape as robustness_shape
from .support import support_table
from .versions import version_changes

TEMPLATES = Path(__file__).parent / "templates"
FRAMES_PER_FINDING = 2  # distinct captures of one finding decoded on the page; the rest are linked
FRAMES_SHOWN = 40  # frames per capture on the page (the marked ones and their neighbours first); the pcap has them all


@cache
def environment() -> jinja2.Environment:
    """Autoescaping, so that what a stack or a check says is shown, never run; StrictUndefined,
    so that a field the template expects and the shaping forgot fails the build instead of
    leaving a blank cell that reads as "nothing to report"."""
    return jinja2.Environment(
        loader=jinja2.FileSystemLoader(TEMPLATES),
        autoescape=jinja2.select_autoescape(["html", "j2"]),
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=True,
    )


def _cls(status: str) -> str:
    return status.replace(" ", "-")


def changes(current: dict[str, Any], previous: dict[str, Any]) -> dict[str, list[dict[str, Any]]]:
    """What moved between two runs, keyed by (check, stack)."""
    before = {(r["check"], r["stack"]): r for r in previous.get("results", [])}
    out: dict[str, list[dict[str, Any]]] = {"new failures": [], "fixed": [], "new deviations": [], "unexpected passes": []}
    for r in current.get("results", []):
        old = before.get((r["check"], r["stack"]))
        was = old["status"] if old else None
        if r["status"] == "failed" and was != "failed":
            out["new failures"].append({**r, "was": was})
        elif was == "failed" and r["status"] == "passed":
            out["fixed"].append({**r, "was": was})
        if r["status"] == "known deviation" and was != "known deviation":
            out["new deviations"].append({**r, "was": was})
        if r["status"] == "unexpected pass" and was != "unexpected pass":
            out["unexpected passes"].append({**r, "was": was})
    return out


def _link(path: str, out_dir: Path | None) -> dict[str, str]:
    target = Path(path)
    if out_dir is not None:
        try:
            target = target.resolve().relative_to(out_dir.resolve())
            return {"href": quote(str(target)), "name": target.name}
        except ValueError:
            pass
    return {"href": Path(path).resolve().as_uri(), "name": Path(path).name}


def _stacks(results: list[dict[str, Any]], stacks: list[str], run: dict[str, Any]) -> list[dict[str, Any]]:
    rows = []
    for stack in stacks:
        info = run.get("stacks", {}).get(stack, {"available": True})
        mine = [r for r in results if r["stack"] == stack]
        carried = sum(1 for r in mine if r.get("carried_from"))
        rows.append(
            {
                "name": stack,
                "available": info.get("available", True),
                "why": info.get("why", ""),
                "install": info.get("install", ""),
                "version": info.get("version", ""),
                "binary": info.get("binary", ""),
                "digest": info.get("digest", ""),
                "counts": [{"cls": _cls(s), "n": sum(1 for r in mine if r["status"] == s)} for s in SHORT],
                "measured": len(mine) - carried,
                "carried": carried,
            }
        )
    return rows


def _changes(data: dict[str, Any], previous: dict[str, Any], targets: dict[str, str]) -> dict[str, Any]:
    groups = []
    moved = version_changes(data.get("run", {}), previous.get("run", {}))
    for title, items in changes(data, previous).items():
        shaped = [
            {
                "check": i["check"],
                "href": f"#{targets[i['nodeid']]}" if i["nodeid"] in targets else "",  # only findings have an entry
                "stack": i["stack"] or "-",
                "carried_from": i.get("carried_from") or "",
                "was": "new check" if i["was"] is None else f"was {i['was']}",
                "reason": i.get("reason", "")[:200],
            }
            for i in items
        ]
        groups.append({"title": title, "entries": shaped})
    return {"previous_date": previous.get("run", {}).get("date", "?"), "groups": groups, "versions": moved}


def _findings(found: list[Finding], out_dir: Path | None) -> list[dict[str, Any]]:
    """Each finding with its cells, and its evidence grouped: variants whose captures show the
    same frames (up to addresses, ids and timings, which differ between any two sandboxes) share
    one decoded view, so nine gvisor variants that deviate alike read as one capture."""
    shaped = []
    for f in found:
        groups: dict[tuple[Any, ...], dict[str, Any]] = {}
        for c in f.measured:
            captures = [p for p in c.get("evidence", []) if _is_capture(p)]
            views = frame_views(captures, limit=FRAMES_SHOWN) if captures else []
            key = _frames_signature(views)  # cells with no capture share one section of links
            group = groups.setdefault(key, {"stacks": [], "cells": [], "frames": views})
            group["stacks"].append(c["stack"] or "-")
            group["cells"].append(
                {
                    "stack": c["stack"] or "-",
                    "nodeid": c["nodeid"],
                    "duration": f"{c.get('duration', 0.0):.2f}",
                    "evidence": [_link(p, out_dir) for p in c.get("evidence", [])],
                    # the finding shows its first cell's message; another cell's, where it reads otherwise
                    "reason": c.get("reason", "") if c.get("reason", "") != f.reason else "",
                }
            )
        evidence = [
            {"stacks": g["stacks"], "cells": g["cells"], "frames": g["frames"] if n < FRAMES_PER_FINDING else []}
            for n, g in enumerate(groups.values())
        ]
        carried = [{"stack": c["stack"], "from": c["carried_from"]} for c in f.cells if c.get("carried_from") and f.measured]
        shaped.append(
            {
                "anchor": f.anchor,
                "cls": _cls(f.status),
                "check": f.check,
                "suite": f.suite,
                "status": f.status,
                "reason": f.reason,
                "manifest": f.cells[0].get("manifest") or "",
                "stacks": [c["stack"] or "-" for c in (f.measured or f.cells)],
                "carried": carried,
                "cells": len(f.cells),
                "evidence": evidence,
                "frames_left_out": max(0, len(groups) - FRAMES_PER_FINDING),
            }
        )
    return shaped


_VOLATILE = re.compile(r"(?:[0-9a-f]{2}:){5}[0-9a-f]{2}|0x[0-9a-f]+|\d+", re.I)


def _frames_signature(views: list[dict[str, Any]]) -> tuple[Any, ...]:
    """What two cells' captures are compared by: per capture, each frame's direction and summary
    with MACs, ids, sequence numbers and lengths blanked, and how each expectation came out."""
    return tuple(
        (
            v.get("source"),
            tuple((fr.get("direction"), _VOLATILE.sub("#", str(fr.get("summary", "")))) for fr in v.get("frames", [])),
            tuple((e.get("outcome"), _VOLATILE.sub("#", str(e.get("differs") or ""))) for e in v.get("expectations", [])),
        )
        for v in views
    )


def _is_capture(path: str) -> bool:
    name = Path(path).name
    return name.endswith((".pcap", ".pcap.gz", ".expects.json"))


def _benchmarks(figures: list[dict[str, Any]] | None, date: str) -> dict[str, Any] | None:
    """The figures as a table, and as bar charts per unit when matplotlib is there."""
    if not figures:
        return None
    rows = [
        {
            "name": f["name"],
            "value": f"{f['value']:.3f}",
            "unit": f["unit"],
            "goal": f.get("goal", ""),
            "cls": "passed" if f.get("met") else "failed" if f.get("met") is False else "",
            "verdict": "met" if f.get("met") else "missed" if f.get("met") is False else "",
        }
        for f in figures
    ]
    try:
        charts, matplotlib = plot_figures(figures), True
    except ImportError:
        charts, matplotlib = [], False
    return {"rows": rows, "charts": [{"unit": u, "png": png} for u, png in charts], "matplotlib": matplotlib, "date": date}


def context(data: dict[str, Any], previous: dict[str, Any] | None = None, out_dir: Path | None = None) -> dict[str, Any]:
    """Everything the template shows, already decided: the template has no logic to get wrong."""
    run, results = data.get("run", {}), data.get("results", [])
    stacks = sorted({r["stack"] for r in results if r["stack"]} | set(run.get("stacks", {})))
    found = findings(results)
    targets = finding_links(found)
    carried = sum(1 for r in results if r.get("carried_from"))
    exit_status = run.get("exit status")
    changed = changed_cells(data, previous)
    return {
        "run": {
            k.replace(" ", "_"): str(run.get(k) or "")
            for k in ("date", "kernel", "labkit", "commit", "python", "order seed", "isolation")
        },
        "packages": [{"name": k, "version": v} for k, v in sorted((run.get("packages") or {}).items())],
        "notes": run.get("notes", []) + [f"collection error: {e}" for e in run.get("collection errors", [])],
        "exit_status": None if exit_status in (None, 0, 1) else exit_status,
        "counts": [{"status": s, "cls": _cls(s), "n": n} for s, n in data.get("counts", {}).items()],
        "cells": {"measured": len(results) - carried, "carried": carried},
        "statuses": list(SHORT),
        "stacks": _stacks(results, stacks, run),
        "changes": None if previous is None else _changes(data, previous, targets),
        "matrix": matrix(results, stacks, run, {n: f"#{a}" for n, a in targets.items()}, changed),
        "findings": _findings(found, out_dir),
        "robustness": robustness_shape(results, targets, lambda path: _link(path, out_dir)),
        "support": support_table(data.get("rtnetlink_support"), carried_in_suite(results, "rtnetlink")),
        "benchmarks": _benchmarks(data.get("benchmarks"), str(run.get("benchmarks date", "?"))),
        "flake": _flake(data.get("flake")),
        "history": _history(data.get("history"), targets_by_cell(results, targets)),
        "perf": perf_shape(data.get("perf"), data.get("history")),
        "run_figures": _run_figures(run),
    }


def carried_in_suite(results: list[dict[str, Any]], suite: str) -> dict[str, str]:
    """Stack -> the variant most of its checks in `suite` were carried over from."""
    sources: dict[str, Counter[str]] = defaultdict(Counter)
    for r in results:
        if r.get("suite") == suite and r.get("carried_from"):
            sources[r["stack"]][r["carried_from"]] += 1
    return {stack: counts.most_common(1)[0][0] for stack, counts in sources.items()}


def targets_by_cell(results: list[dict[str, Any]], targets: dict[str, str]) -> dict[tuple[str, str], str]:
    return {(r["check"], r["stack"]): targets[r["nodeid"]] for r in results if r["nodeid"] in targets}


HISTORY_CSS = {
    "P": "passed",
    "F": "failed",
    "D": "known-deviation",
    "X": "unexpected-pass",
    "S": "skipped",
    "N": "skipped",
    "-": "none",
}
CHART_HEIGHT, BAR_WIDTH = 60, 10


def _history(summary: dict[str, Any] | None, links: dict[tuple[str, str], str]) -> dict[str, Any] | None:
    """The nights as the page draws them (reports.history.summarize made the data): a stacked bar
    per night for each stack, a strip per check, and the cells that changed, sorted out."""
    if not summary or not summary.get("dates"):
        return None
    from .history import STATUS, TRENDS

    dates = summary["dates"]
    charts = []
    for trend in summary["trends"]:
        top = max((sum(n.values()) for n in trend["nights"]), default=0) or 1
        bars = []
        for i, night in enumerate(trend["nights"]):
            y = float(CHART_HEIGHT)
            for status in TRENDS:
                h = night.get(status, 0) * CHART_HEIGHT / top
                if h:
                    y -= h
                    bars.append({"x": i * (BAR_WIDTH + 2), "y": round(y, 2), "h": round(h, 2), "cls": _cls(status),
                                 "title": f"{dates[i]}: {night.get(status, 0)} {status}"})  # fmt: skip
        last = trend["nights"][-1]
        charts.append({"stack": trend["stack"], "bars": bars, "width": len(dates) * (BAR_WIDTH + 2), "height": CHART_HEIGHT,
                       "last": ", ".join(f"{last.get(s, 0)} {s}" for s in TRENDS)})  # fmt: skip

    def strip(letters: str) -> list[dict[str, str]]:
        return [
            {"cls": HISTORY_CSS.get(c, "none"), "title": f"{dates[i]}: {STATUS.get(c, 'absent')}"} for i, c in enumerate(letters)
        ]

    changed = [(c, s) for c, s in summary["strips"].items() if len(set(s) - {"-"}) > 1]
    steady = [(c, s) for c, s in summary["strips"].items() if len(set(s) - {"-"}) <= 1]

    def cells(entries: list[dict[str, Any]]) -> list[dict[str, Any]]:
        return [
            {
                "change": "",
                "night": "",
                **e,
                "strip": strip(e["strip"]),
                "href": f"#{links[(e['check'], e['stack'])]}" if (e["check"], e["stack"]) in links else "",
            }
            for e in entries
        ]

    return {
        "nights": len(dates),
        "first": dates[0],
        "last": dates[-1],
        "charts": charts,
        "changed": [{"check": c, "strip": strip(s)} for c, s in changed],
        "steady": [{"check": c, "strip": strip(s)} for c, s in steady],
        "flaky": cells(summary.get("flaky", [])),
        "builds": cells(summary.get("builds", [])),
        "lab": cells(summary.get("lab", [])),
        "load_dependent": cells(summary.get("load_dependent", [])),
    }


EVIDENCE_BUDGET_MB = 150.0  # a full run's evidence, kept every night (the nightly's budget)
RUN_BUDGET_MIN = 10.0  # `tox -e conformance` on 2 cores, unsharded


def _run_figures(run: dict[str, Any]) -> list[dict[str, str]]:
    """What the run itself cost, against the nightly's budgets: its wall time and the evidence it left."""

    def figure(name: str, value: float, unit: str, goal: float | None) -> dict[str, str]:
        met = None if goal is None else value <= goal
        return {
            "name": name,
            "value": f"{value:.1f}",
            "unit": unit,
            "goal": "" if goal is None else f"<= {goal:g} {unit}",
            "cls": "" if met is None else "passed" if met else "failed",
            "verdict": "" if met is None else "met" if met else "missed",
        }

    out = []
    shards = run.get("shards") or []
    if run.get("duration s") is not None:
        minutes = float(run["duration s"]) / 60
        if shards:
            out.append(figure(f"slowest of {len(shards)} shards (machines side by side), wall time", minutes, "min", None))
        else:
            out.append(figure("conformance run, wall time", minutes, "min", RUN_BUDGET_MIN if not run.get("full matrix") else None))
    if run.get("evidence bytes") is not None:
        files = f" in {run['evidence files']} files" if run.get("evidence files") is not None else ""
        out.append(figure(f"evidence kept{files}", int(run["evidence bytes"]) / 1e6, "MB", EVIDENCE_BUDGET_MB))
    for shard in shards:
        if shard.get("duration s") is not None:
            out.append(
                figure(f"shard {shard.get('shard') or shard['results']}, wall time", float(shard["duration s"]) / 60, "min", None)
            )
    return out


def _flake(summary: dict[str, Any] | None) -> dict[str, Any] | None:
    """`labkit flake`'s verdict: the cells whose outcome differed between its runs (labkit.flake)."""
    if not summary:
        return None

    def entries(flaky: list[dict[str, Any]]) -> list[dict[str, str]]:
        return [
            {
                "check": f["check"],
                "stack": f["stack"] or "-",
                "outcomes": "; ".join(f"{o} in run {', '.join(map(str, runs))}" for o, runs in sorted(f["outcomes"].items())),
            }
            for f in flaky
        ]

    return {
        "runs": len(summary.get("runs", [])),
        "seeds": ", ".join(str(s) for s in summary.get("seeds", [])),
        "cells": summary.get("cells", 0),
        "flaky": entries(summary.get("flaky", [])),
        "load_dependent": entries(summary.get("load_dependent", [])),
    }


def render(data: dict[str, Any], previous: dict[str, Any] | None = None, out_dir: Path | None = None) -> str:
    """The page as one string; `out_dir` is where it will be written, so evidence links are relative."""
    return environment().get_template("index.html.j2").render(context(data, previous, out_dir))


def plot_figures(figures: list[dict[str, Any]]) -> list[tuple[str, str]]:
    """One horizontal bar chart per unit, as base64 PNG (so the page needs no file beside it)."""
    import base64
    import io

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    by_unit: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for f in figures:
        by_unit[f["unit"]].append(f)
    charts = []
    for unit, group in by_unit.items():
        fig, ax = plt.subplots(figsize=(7, 0.4 * len(group) + 0.8))
        colours = ["#5a9" if f.get("met") else "#d55" if f.get("met") is False else "#88a" for f in group]
        ax.barh([f["name"] for f in group], [f["value"] for f in group], color=colours)
        ax.set_xlabel(unit)
        ax.invert_yaxis()
        fig.tight_layout()
        buf = io.BytesIO()
        fig.savefig(buf, format="png", dpi=80)
        plt.close(fig)
        charts.append((unit, base64.b64encode(buf.getvalue()).decode()))
    return charts


def write_page(out_dir: Path, data: dict[str, Any], previous: dict[str, Any] | None = None) -> Path:
    path = out_dir / "index.html"
    path.write_text(render(data, previous, out_dir))
    return path


def load(path: Path) -> dict[str, Any]:
    return json.loads(Path(path).read_text())
