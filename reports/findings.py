"""Findings: what a run found, one entry per distinct finding rather than one per cell.

A full run deviates in hundreds of cells, most of them one deviation seen on every variant of a
stack, with the same manifest entry and near-identical evidence. A stack engineer reads that as
one thing, so the page does too: a finding is a check, an outcome and why (the manifest entry
that explains a deviation or an unexpected pass, or for a failure its message with the
run-to-run noise taken out), listing the stacks and variants it holds for and opening onto each
variant's evidence. Counts elsewhere on the page stay per variant.

Each finding has a stable anchor, `finding-<slug>`: made of the check id and that reason, never
of the run (no order, no time), so the nightly summary and a bug report can link to it and the
link still works on tomorrow's page.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

REPORTED = ("failed", "unexpected pass", "known deviation")  # the outcomes that make a finding, in page order
SLUG_CHARS = 72

# What differs between two runs of the same failure: taken out of a failure's message before
# failures are grouped and named. Order matters: MACs before IPv6, addresses before bare numbers.
_NOISE = [
    (re.compile(r"\b(?:[0-9a-f]{2}:){5}[0-9a-f]{2}\b", re.I), "<mac>"),
    (re.compile(r"\b\d{1,3}(?:\.\d{1,3}){3}(?:/\d+)?\b"), "<ip>"),
    (re.compile(r"(?<![\w:])(?:[0-9a-f]{0,4}:){2,7}[0-9a-f]{0,4}(?:/\d+)?(?![\w:])", re.I), "<ip>"),
    (
        re.compile(r"\b(want|wanted|expected|got|but got|found)\b\s*[:=]?\s*('[^']*'|\"[^\"]*\"|\[[^\]]*\]|\([^)]*\)|\S+)", re.I),
        r"\1 <v>",
    ),
    (re.compile(r"\bports?\s*[:=]?\s*\d+", re.I), "port <n>"),
    (re.compile(r"[+-]?\d+(?:\.\d+)?\s*(?:ns|us|µs|ms|s)\b"), "<t>"),
    (re.compile(r"labkit-[0-9a-f]+-\d+-\d+[-\w]*"), "labkit-*"),
    (re.compile(r"0x[0-9a-f]+", re.I), "<n>"),
    (re.compile(r"\d+"), "<n>"),
]


# The field a near frame differed in, as the Wire explains a timeout (`-- TCP.flags: want ..., got ...`).
_DIFFERED = re.compile(
    r"--\s*([A-Za-z0-9_]+\.[A-Za-z0-9_]+|payload|missing layer [A-Za-z0-9_]+|layer [A-Za-z0-9_]+|no [A-Za-z0-9_]+ layer)"
)


def failure_signature(reason: str, stack: str = "") -> str:
    """A failure's message as it would read in any run and on any variant: its first line, with
    the stack's name, addresses, ports, timings, numbers and got/want values taken out, and the
    fields the nearest frames differed in (without their values): a stack that answered RST and
    one that answered with the wrong window fail the same expect differently."""
    lines = [line.strip() for line in reason.splitlines() if line.strip()]
    first = lines[0] if lines else ""
    for name in sorted({stack, stack.partition("@")[0], stack.split("-", 1)[0]} - {""}, key=len, reverse=True):
        first = first.replace(name, "<stack>")
    for pattern, replacement in _NOISE:
        first = pattern.sub(replacement, first)
    fields = sorted({m.group(1) for line in lines[1:] for m in [_DIFFERED.search(line)] if m})
    return re.sub(r"\s+", " ", first) + (f" [differs in: {', '.join(fields)}]" if fields else "")


def basis(record: dict[str, Any]) -> str:
    """What tells this cell's finding apart from another of the same check and outcome."""
    if record["status"] == "failed":
        return failure_signature(record.get("reason", ""), record.get("stack", ""))
    return record.get("manifest") or record.get("reason", "")


def slug(check: str, status: str, why: str) -> str:
    """`finding-` + the check id made readable + the outcome + a short hash of (check, outcome,
    why): readable in a URL, unique, and the same in every run that finds the same thing."""
    path, _, test = check.partition("::")
    stem = path.rsplit("/", 1)[-1].removesuffix(".py").removeprefix("test_")
    readable = re.sub(r"[^A-Za-z0-9]+", "-", f"{stem}-{test}").strip("-")[:SLUG_CHARS].rstrip("-")
    kind = {"failed": "fail", "known deviation": "dev", "unexpected pass": "xpass"}.get(status, "x")
    digest = hashlib.sha256(f"{check}\0{status}\0{why}".encode()).hexdigest()[:8]
    return f"finding-{readable}-{kind}-{digest}"


@dataclass
class Finding:
    """One thing the run found, and every cell it holds for."""

    anchor: str
    check: str
    suite: str
    status: str
    basis: str  # the manifest entry or the failure's signature
    cells: list[dict[str, Any]] = field(default_factory=list)  # the records, measured ones first

    @property
    def stacks(self) -> list[str]:
        return [c["stack"] or "-" for c in self.cells]

    @property
    def measured(self) -> list[dict[str, Any]]:
        return [c for c in self.cells if not c.get("carried_from")]

    @property
    def reason(self) -> str:
        """The message of its first measured cell (the others say the same, up to noise)."""
        first = self.measured[0] if self.measured else self.cells[0]
        return str(first.get("reason", ""))


def findings(results: Iterable[dict[str, Any]]) -> list[Finding]:
    """The run's findings: failures first, then unexpected passes, then known deviations; within
    each, by check. A carried-over cell joins the finding of the variant whose run stands for it."""
    groups: dict[tuple[str, str, str], Finding] = {}
    for r in results:
        if r["status"] not in REPORTED:
            continue
        why = basis(r)
        key = (r["check"], r["status"], why)
        if key not in groups:
            groups[key] = Finding(slug(*key), r["check"], r.get("suite", ""), r["status"], why)
        groups[key].cells.append(r)
    out = sorted(groups.values(), key=lambda f: (REPORTED.index(f.status), f.check, f.anchor))
    for f in out:
        f.cells.sort(key=lambda c: (bool(c.get("carried_from")), c["stack"]))
    return out


def links(found: Iterable[Finding]) -> dict[str, str]:
    """Each reported cell's nodeid -> the anchor of its finding."""
    return {c["nodeid"]: f.anchor for f in found for c in f.cells}
