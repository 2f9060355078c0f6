"""index.html: the conformance matrix of a results.json, one self-contained page.

Rows are checks, grouped by suite and by file (a feature); columns are the stacks and variants
that ran; a cell is the status, coloured, linking to its detail (the failure's message with the
field that differed, the deviation's reason, the pcap and logs). A missing stack's column says
why and how to install it. Given the previous run's results, a section lists what changed.
No external assets: it opens offline.
"""

from __future__ import annotations

import hashlib
import html
import json
import re
from collections import defaultdict
from pathlib import Path
from typing import Any
from urllib.parse import quote

DETAILED = ("failed", "known deviation", "unexpected pass")  # cells with a detail section to link to
SHORT = {
    "passed": "pass",
    "failed": "FAIL",
    "known deviation": "dev",
    "unexpected pass": "XPASS",
    "skipped": "skip",
    "not run": "—",
}
CSS = """
body{font:14px/1.4 system-ui,sans-serif;margin:1.5em;color:#222}
h1{font-size:1.4em}h2{font-size:1.15em;margin-top:1.6em}
table{border-collapse:collapse;margin:.5em 0}
th,td{border:1px solid #ccc;padding:2px 6px;text-align:left;vertical-align:top}
th{background:#f3f3f3;position:sticky;top:0}
td.c{text-align:center;white-space:nowrap}
.passed{background:#d9f2d9}.failed{background:#f7c6c6;font-weight:bold}
.known-deviation{background:#fbe9b7}.unexpected-pass{background:#c9d7f7;font-weight:bold}
.skipped{background:#eee;color:#777}.missing{background:#eee;color:#777;font-style:italic}
.suite td{background:#e8e8f4;font-weight:bold}.feature td{background:#f6f6fb}
a{color:inherit}pre{white-space:pre-wrap;margin:.2em 0}.small{color:#666;font-size:.9em}
"""


def _cls(status: str) -> str:
    return status.replace(" ", "-")


def anchor(nodeid: str) -> str:
    """A readable id, made unique by a short hash (`t[a.b]` and `t[a-b]` read alike)."""
    return "d-" + re.sub(r"[^A-Za-z0-9]+", "-", nodeid).strip("-")[-80:] + "-" + hashlib.sha1(nodeid.encode()).hexdigest()[:8]


def _check_name(check: str) -> str:
    return check.split("::", 1)[1] if "::" in check else check


def _feature(check: str) -> str:
    return check.split("::", 1)[0].split("/")[-1]


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


def _link(path: str, out_dir: Path | None) -> str:
    target = Path(path)
    if out_dir is not None:
        try:
            target = target.resolve().relative_to(out_dir.resolve())
            return f'<a href="{html.escape(quote(str(target)))}">{html.escape(target.name)}</a>'
        except ValueError:
            pass
    return f'<a href="{html.escape(Path(path).resolve().as_uri())}">{html.escape(Path(path).name)}</a>'


def render(data: dict[str, Any], previous: dict[str, Any] | None = None, out_dir: Path | None = None) -> str:
    run, results = data.get("run", {}), data.get("results", [])
    stacks = sorted({r["stack"] for r in results if r["stack"]} | set(run.get("stacks", {})))
    rows: dict[str, dict[str, dict[str, dict[str, Any]]]] = defaultdict(lambda: defaultdict(dict))
    for r in results:
        rows[r["suite"]][r["check"]][r["stack"]] = r
    esc = html.escape
    out = [f"<!doctype html><html><head><meta charset='utf-8'><title>labkit conformance</title><style>{CSS}</style></head><body>"]
    out.append("<h1>labkit conformance report</h1>")
    out.append(
        f"<p class='small'>{esc(run.get('date', ''))} · kernel {esc(run.get('kernel', ''))} · labkit {esc(str(run.get('labkit', '')))}"
        f" · python {esc(run.get('python', ''))}</p>"
    )
    for note in run.get("notes", []) + [f"collection error: {e}" for e in run.get("collection errors", [])]:
        out.append(f"<p class='failed'>{esc(note)}</p>")
    if run.get("exit status") not in (None, 0, 1):
        out.append(f"<p class='failed'>the run ended with exit status {esc(str(run['exit status']))}: it may be incomplete</p>")
    counts = data.get("counts", {})
    out.append("<p>" + " · ".join(f"<span class='{_cls(s)}'>&nbsp;{esc(s)}: {n}&nbsp;</span>" for s, n in counts.items()) + "</p>")

    out.append(
        "<h2 id='stacks'>Stacks</h2><table><tr><th>stack</th><th>state</th><th>version</th>"
        + "".join(f"<th>{esc(s)}</th>" for s in SHORT)
        + "</tr>"
    )
    for stack in stacks:
        info = run.get("stacks", {}).get(stack, {"available": True})
        mine = [r for r in results if r["stack"] == stack]
        state = (
            "installed"
            if info.get("available", True)
            else f"missing: {esc(info.get('why', ''))} — install: <code>{esc(info.get('install', ''))}</code>"
        )
        out.append(
            f"<tr><td>{esc(stack)}</td><td{'' if info.get('available', True) else ' class=missing'}>{state}</td><td>{esc(info.get('version', ''))}</td>"
            + "".join(f"<td class='c {_cls(s)}'>{sum(1 for r in mine if r['status'] == s)}</td>" for s in SHORT)
            + "</tr>"
        )
    out.append("</table>")

    if previous is not None:
        out.append("<h2 id='changes'>Changed since the previous run</h2>")
        out.append(f"<p class='small'>previous run: {esc(previous.get('run', {}).get('date', '?'))}</p>")
        for title, items in changes(data, previous).items():
            out.append(f"<h3>{esc(title)} ({len(items)})</h3>")
            if items:
                out.append("<ul class='changes' data-kind='" + esc(title) + "'>")
                for i in items:
                    name = esc(i["check"])
                    if i["status"] in DETAILED:  # only those have a detail section to go to
                        name = f"<a href='#{anchor(i['nodeid'])}'>{name}</a>"
                    was = "new check" if i["was"] is None else f"was {esc(i['was'])}"
                    out.append(f"<li>{name} on {esc(i['stack'] or '-')} ({was}): {esc(i['reason'][:200])}</li>")
                out.append("</ul>")

    out.append("<h2 id='matrix'>Conformance matrix</h2><table class='matrix'><tr><th>check</th><th>—</th>")
    for s in stacks:
        info = run.get("stacks", {}).get(s, {})
        missing = not info.get("available", True)
        hint = f"; install: {info['install']}" if info.get("install") else ""
        title = f" title='{esc(info.get('why', '') + hint)}'" if missing else ""
        out.append(f"<th{title}{' class=missing' if missing else ''}>{esc(s)}{'<br>(missing)' if missing else ''}</th>")
    out.append("</tr>")
    for suite in sorted(rows):
        out.append(f"<tr class='suite'><td colspan='{len(stacks) + 2}'>{esc(suite)}</td></tr>")
        feature = None
        for check in sorted(rows[suite]):
            if _feature(check) != feature:
                feature = _feature(check)
                out.append(f"<tr class='feature'><td colspan='{len(stacks) + 2}'>{esc(feature)}</td></tr>")
            cells = rows[suite][check]
            out.append(f"<tr data-check='{esc(check)}'><td>{esc(_check_name(check))}</td>")
            for stack in ["", *stacks]:
                r = cells.get(stack)
                if r is None:
                    missing = stack and not run.get("stacks", {}).get(stack, {}).get("available", True)
                    out.append(f"<td class='c{' missing' if missing else ''}'>{'n/a' if missing else ''}</td>")
                    continue
                label = (
                    f"<a href='#{anchor(r['nodeid'])}'>{SHORT[r['status']]}</a>" if r["status"] in DETAILED else SHORT[r["status"]]
                )
                out.append(
                    f"<td class='c {_cls(r['status'])}' data-stack='{esc(stack)}' data-status='{esc(r['status'])}' title='{esc(r['reason'][:300])}'>"
                    f"{label}</td>"
                )
            out.append("</tr>")
    out.append("</table>")

    details = [r for r in results if r["status"] in DETAILED]
    out.append(f"<h2 id='details'>Details ({len(details)})</h2>")
    for r in details:
        evidence = " ".join(_link(p, out_dir) for p in r.get("evidence", []))
        out.append(
            f"<div id='{anchor(r['nodeid'])}' class='detail'><h3 class='{_cls(r['status'])}'>{esc(r['check'])} · {esc(r['stack'] or '-')} · {esc(r['status'])}</h3>"
            f"<pre>{esc(r['reason'])}</pre><p class='small'>{esc(r['nodeid'])} · {r['duration']:.2f} s {('· evidence: ' + evidence) if evidence else ''}</p></div>"
        )

    support = data.get("rtnetlink_support")
    if support:
        table_stacks = sorted({s for cells in support["messages"].values() for s in cells})
        out.append("<h2 id='rtnetlink'>rtnetlink support</h2><table class='support'><tr><th>message</th>")
        out += [f"<th>{esc(s)}</th>" for s in table_stacks]
        out.append("<th>kernel's attributes</th></tr>")
        css = {"supported": "passed", "differs": "known-deviation", "unsupported": "failed"}
        for msg, cells in support["messages"].items():
            out.append(f"<tr><td>{esc(msg)}</td>")
            for s in table_stacks:
                cell = cells.get(s)
                if cell is None:
                    out.append("<td></td>")
                    continue
                tip = "; ".join(cell.get("differences", [])[:5])
                out.append(
                    f"<td class='c {css.get(cell['status'], '')}' title='{esc(tip)}'>{esc(cell['status'])}"
                    f"<br><span class='small'>{len(cell.get('attrs', []))} attrs</span></td>"
                )
            out.append(f"<td class='small'>{esc(', '.join(support.get('kernel_attrs', {}).get(msg, [])))}</td></tr>")
        out.append("</table>")
    if data.get("benchmarks"):
        out.append(benchmarks_section(data["benchmarks"]))
        out.append(f"<p class='small'>figures written {esc(run.get('benchmarks date', '?'))} by ./lab bench</p>")
    out.append("</body></html>")
    return "\n".join(out)


def benchmarks_section(figures: list[dict[str, Any]]) -> str:
    """The figures as a table, and as bar charts per unit (PNG, embedded) when matplotlib is there."""
    esc = html.escape
    rows = "".join(
        f"<tr><td>{esc(f['name'])}</td><td class='c'>{f['value']:.3f}</td><td>{esc(f['unit'])}</td><td>{esc(f.get('goal', ''))}</td>"
        f"<td class='c {'passed' if f.get('met') else 'failed' if f.get('met') is False else ''}'>"
        f"{'met' if f.get('met') else 'missed' if f.get('met') is False else ''}</td></tr>"
        for f in figures
    )
    parts = [
        f"<h2 id='benchmarks'>Benchmarks</h2><table class='bench'><tr><th>figure</th><th>value</th><th>unit</th><th>goal</th><th></th></tr>{rows}</table>"
    ]
    try:
        charts = plot_figures(figures)
    except ImportError:
        charts = []
        parts.append("<p class='small'>(install matplotlib for the charts: pip install 'labkit[report]')</p>")
    parts += [f"<img class='chart' alt='{esc(unit)}' src='data:image/png;base64,{png}'>" for unit, png in charts]
    return "\n".join(parts)


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
