"""results.json: what a conformance run found, one record per check and stack.

Gathered from pytest's reports in the process that sees them all (the xdist controller, or the
only process), so `-n auto` needs nothing special. Each record says check, suite, stack, status
(passed / failed / known deviation / unexpected pass / skipped), why (the failure's first line,
the deviation's reason, the skip's reason), how long it took and where its evidence is. The run
itself is described too: date, kernel, labkit and stack versions, and which stacks were missing.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import platform
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import pytest

STATUSES = ("passed", "failed", "known deviation", "unexpected pass", "skipped")
RESULTS_FILE = "results.json"
BENCHMARKS_FILE = "benchmarks.json"


@dataclass
class CheckResult:
    nodeid: str
    check: str  # the manifest's id: relative to suites/, stack left out, other parameters kept
    suite: str
    stack: str  # "" for checks that do not run on a stack (the kernel's own fanout, ...)
    status: str = "passed"
    reason: str = ""
    duration: float = 0.0
    evidence: list[str] = field(default_factory=list)


def _first_line(report: pytest.TestReport, limit: int = 40) -> str:
    """The failure as the check put it: its `E` lines (the message, the nearest frames and the
    field that differed), else the last line of the traceback."""
    text = report.longreprtext or ""
    said = [
        line[1:].rstrip()[3:] if line[1:4] == "   " else line[1:].strip() for line in text.splitlines() if line.startswith("E ")
    ]
    if said:
        return "\n".join(said[:limit])
    lines = [line for line in text.splitlines() if line.strip()]
    return lines[-1].strip() if lines else ""


def _skip_reason(report: pytest.TestReport) -> str:
    longrepr = report.longrepr
    if isinstance(longrepr, tuple) and len(longrepr) == 3:
        return str(longrepr[2]).removeprefix("Skipped: ")
    return _first_line(report)


class ResultsCollector:
    """A pytest plugin object: `pytest_runtest_logreport` on every phase of every check."""

    def __init__(self, out_dir: Path, previous: Path | None = None) -> None:
        self.out_dir, self.previous = out_dir, previous
        self.records: dict[str, CheckResult] = {}

    def _record(self, report: pytest.TestReport) -> CheckResult:
        if report.nodeid not in self.records:
            props = dict(report.user_properties)
            parts = report.nodeid.split("/")
            suite = parts[1] if parts[0] == "suites" and len(parts) > 2 else parts[0].split("::")[0]
            self.records[report.nodeid] = CheckResult(
                report.nodeid, props.get("check", report.nodeid), suite, props.get("stack", "")
            )
        return self.records[report.nodeid]

    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        rec = self._record(report)
        rec.duration += report.duration
        props = report.user_properties
        rec.evidence = sorted({str(v) for k, v in props if k in ("pcap", "log")} | set(rec.evidence))
        xfail = getattr(report, "wasxfail", None)
        if report.when == "setup" and report.skipped:
            rec.status, rec.reason = ("known deviation", xfail) if xfail else ("skipped", _skip_reason(report))
        elif report.when == "call":
            if xfail is not None and report.skipped:
                rec.status, rec.reason = "known deviation", str(xfail).removeprefix("known deviation: ")
            elif xfail is not None and report.passed:
                rec.status, rec.reason = "unexpected pass", f"passed, although the manifest says: {xfail}"
            elif report.failed and "[XPASS(strict)]" in (report.longreprtext or ""):
                rec.status, rec.reason = "unexpected pass", (report.longreprtext or "").strip()
            elif report.failed:
                rec.status, rec.reason = "failed", _first_line(report)
            elif report.skipped:
                rec.status, rec.reason = "skipped", _skip_reason(report)
        elif report.failed:  # an error in setup or teardown fails the check as well
            rec.status, rec.reason = "failed", f"{report.when}: {_first_line(report)}"

    def pytest_sessionfinish(self, session: pytest.Session) -> None:
        from fixtures.plugin import SETTINGS

        settings = session.config.stash.get(SETTINGS, None)
        previous = load(self.previous) if self.previous is not None and self.previous.is_file() else None
        write_results(self.out_dir, list(self.records.values()), describe_run(settings), previous)


def describe_run(settings: Any) -> dict[str, Any]:
    from importlib.metadata import PackageNotFoundError, version

    try:
        labkit_version = version("labkit")
    except PackageNotFoundError:
        labkit_version = "source"
    stacks = {}
    for spec in getattr(settings, "specs", ()):
        available = spec.availability()
        stacks[spec.id] = {
            "available": available.ok,
            "why": "" if available.ok else available.reason,
            "install": available.install or "",
            "version": available.version or "",
        }
    return {
        "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "kernel": platform.release(),
        "python": platform.python_version(),
        "labkit": labkit_version,
        "host": os.uname().nodename,
        "stacks": stacks,
    }


def write_results(out_dir: Path, records: list[CheckResult], run: dict[str, Any], previous: dict[str, Any] | None = None) -> Path:
    out_dir.mkdir(parents=True, exist_ok=True)
    counts = {s: sum(1 for r in records if r.status == s) for s in STATUSES}
    data = {"run": run, "counts": counts, "results": [asdict(r) for r in sorted(records, key=lambda r: (r.check, r.stack))]}
    support = _support_table(out_dir)
    if support is not None:
        data["rtnetlink_support"] = support
    bench = out_dir / BENCHMARKS_FILE
    if bench.exists():  # `./lab bench` writes it (tox -e bench)
        data["benchmarks"] = json.loads(bench.read_text())
    path = out_dir / RESULTS_FILE
    path.write_text(json.dumps(data, indent=1))
    from .html import write_page

    write_page(out_dir, data, previous)
    return path


def _support_table(out_dir: Path) -> dict | None:
    for candidate in (out_dir / "evidence" / "rtnetlink-support.json", out_dir / "rtnetlink-support.json"):
        if candidate.exists():
            return json.loads(candidate.read_text())
    return None


def load(path: Path) -> dict[str, Any]:
    return json.loads(Path(path).read_text())
