"""The nightly's verdict and its short markdown summary (the CI job summary).

The nightly fails on what is new only: a failure that was not one the night before, or a
deviation that stopped happening (an unexpected pass of a strict manifest entry). An old
failure is on the page and in the summary, but does not turn every night red until fixed; a
`strict = false` entry that passed is the stack's own nondeterminism, as in `labkit flake`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from .findings import findings, links
from .html import changes
from .robustness import summary_lines as robustness_lines
from .versions import version_changes

LIMIT = 25  # entries per list in the summary; the page has them all
COUNTED = ("passed", "known deviation", "failed", "unexpected pass", "skipped")


def verdict(
    data: dict[str, Any], previous: dict[str, Any] | None, load_dependent: Callable[[str, str], bool]
) -> dict[str, list[dict[str, Any]]]:
    """The cells that fail the nightly: new failures, and unexpected passes of strict entries."""
    moved = changes(data, previous or {"results": []})
    return {
        "new failures": moved["new failures"],
        "unexpected passes": [
            r for r in data.get("results", []) if r["status"] == "unexpected pass" and not load_dependent(r["stack"], r["check"])
        ],
    }


def markdown(
    data: dict[str, Any],
    previous: dict[str, Any] | None,
    load_dependent: Callable[[str, str], bool],
    page_url: str = "",
) -> str:
    """A few lines a person reads in the job summary, each finding linked to its place on the page."""
    run = data.get("run", {})
    results = data.get("results", [])
    page = page_url.rstrip("/") + "/index.html" if page_url else "index.html"

    targets = links(findings(results))  # each cell's finding, whose anchor stays the same from night to night

    def link(r: dict[str, Any]) -> str:
        name = f"`{r['check']}` on {r['stack'] or 'no stack'}"
        return f"[{name}]({page}#{targets[r['nodeid']]})" if r.get("nodeid") in targets else name

    lines = [f"# labkit nightly, {run.get('date', '?')}", ""]
    lines.append(
        f"labkit {run.get('labkit', '?')} ({str(run.get('commit', ''))[:12]}), kernel {run.get('kernel', '?')}; [the report]({page})"
    )
    lines += ["", "| stack | version | " + " | ".join(COUNTED) + " |", "|---|---|" + "---|" * len(COUNTED)]
    stacks = sorted({r["stack"] for r in results if r["stack"]} | set(run.get("stacks", {})))
    for stack in stacks:
        about = run.get("stacks", {}).get(stack, {})
        version = about.get("version", "") if about.get("available", True) else "missing"
        counts = [sum(1 for r in results if r["stack"] == stack and r["status"] == s) for s in COUNTED]
        lines.append(f"| {stack} | {version} | " + " | ".join(map(str, counts)) + " |")
    bad = verdict(data, previous, load_dependent)
    moved = changes(data, previous) if previous is not None else None
    sections = [
        ("New failures", bad["new failures"]),
        ("Unexpected passes (a deviation stopped happening: update the manifest)", bad["unexpected passes"]),
    ]
    if moved is not None:
        sections += [("Fixed", moved["fixed"]), ("New deviations", moved["new deviations"])]
    history = data.get("history") or {}
    if previous is not None and (versions := version_changes(run, previous.get("run", {}))):
        lines += ["", f"## Versions changed: {len(versions)}"]
        lines += [f"- {v['name']}: {v['was']} -> {v['now']}" for v in versions]
    for title, items in sections:
        lines += ["", f"## {title}: {len(items)}"]
        lines += [f"- {link(r)}" for r in items[:LIMIT]]
        if len(items) > LIMIT:
            lines.append(f"- and {len(items) - LIMIT} more on the page")
    if fuzzed := robustness_lines(results, link):  # suites/robustness: what broke a stack, and its reproducer
        lines += ["", f"## Robustness findings: {len(fuzzed)}", *fuzzed[:LIMIT]]
        if len(fuzzed) > LIMIT:
            lines.append(f"- and {len(fuzzed) - LIMIT} more on the page")
    for title, key in (
        ("Flaky over the nights", "flaky"),
        ("Changed with a new build", "builds"),
        ("Changed with labkit or the kernel", "lab"),
    ):
        items = history.get(key, [])
        if items:
            lines += ["", f"## {title}: {len(items)}"]
            lines += [
                f"- `{e['check']}` on {e['stack']}: `{e['strip']}`" + (f" ({e['change']})" if e.get("change") else "")
                for e in items[:LIMIT]
            ]
    if previous is None:
        lines += ["", "(no previous night: every failure counts as new)"]
    verdict_line = (
        "FAILED: " + ", ".join(f"{len(v)} {k}" for k, v in bad.items() if v) if any(bad.values()) else "passed: nothing new failed"
    )
    lines += ["", f"**{verdict_line}**", ""]
    return "\n".join(lines)
