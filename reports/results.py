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
import textwrap
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import pytest

STATUSES = ("passed", "failed", "known deviation", "unexpected pass", "skipped", "not run")
RESULTS_FILE = "results.json"
BENCHMARKS_FILE = "benchmarks.json"


@dataclass
class CheckResult:
    nodeid: str
    check: str  # the manifest's id: relative to suites/, stack left out, other parameters kept
    suite: str
    stack: str  # "" for checks that do not run on a stack (the kernel's own fanout, ...)
    status: str = "not run"  # until a report says otherwise (an aborted run leaves some so)
    reason: str = ""
    duration: float = 0.0
    evidence: list[str] = field(default_factory=list)


def failure_text(report: pytest.TestReport, limit: int = 40) -> str:
    """The failure as the check put it: its `E` lines (the message, the nearest frames and the
    field that differed, up to `limit` lines), else the last line of the traceback."""
    text = report.longreprtext or ""
    said = [line[1:] for line in text.splitlines() if line.startswith("E ")]
    if said:
        return textwrap.dedent("\n".join(said[:limit])).strip()
    lines = [line for line in text.splitlines() if line.strip()]
    return lines[-1].strip() if lines else ""


def _skip_reason(report: pytest.TestReport) -> str:
    longrepr = report.longrepr
    if isinstance(longrepr, tuple) and len(longrepr) == 3:
        return str(longrepr[2]).removeprefix("Skipped: ")
    return failure_text(report)


class ResultsCollector:
    """A pytest plugin object: `pytest_runtest_logreport` on every phase of every check."""

    def __init__(self, out_dir: Path, previous: Path | None = None) -> None:
        self.out_dir, self.previous = out_dir, previous
        self.records: dict[str, CheckResult] = {}
        self.collection_errors: list[str] = []
        self.started = time.time()

    def _record(self, report: pytest.TestReport) -> CheckResult:
        if report.nodeid not in self.records:
            props = dict(report.user_properties)
            parts = report.nodeid.split("/")
            suite = parts[1] if parts[0] == "suites" and len(parts) > 2 else parts[0].split("::")[0]
            self.records[report.nodeid] = CheckResult(
                report.nodeid, props.get("check", report.nodeid), suite, props.get("stack", "")
            )
        return self.records[report.nodeid]

    def pytest_collectreport(self, report: pytest.CollectReport) -> None:
        if report.failed:
            self.collection_errors.append(f"{report.nodeid}: {(report.longreprtext or '').strip().splitlines()[-1:]}")

    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        rec = self._record(report)
        rec.duration += report.duration
        # The evidence is added to user_properties after the call report was made, so it
        # arrives with the teardown report: keep the union over the phases.
        rec.evidence = sorted({str(v) for k, v in report.user_properties if k in ("pcap", "log")} | set(rec.evidence))
        xfail = getattr(report, "wasxfail", None)
        deviation = str(xfail or "").removeprefix("known deviation: ")
        if report.when == "setup" and report.skipped:
            if xfail is not None and report.longreprtext and "Skipped" not in report.longreprtext:
                rec.status, rec.reason = "known deviation", f"{deviation}\n(but setup failed: {failure_text(report)})"
            else:
                rec.status, rec.reason = ("known deviation", deviation) if xfail else ("skipped", _skip_reason(report))
        elif report.when == "call":
            if xfail is not None and report.skipped:
                rec.status, rec.reason = "known deviation", deviation
            elif xfail is not None and report.passed:
                rec.status, rec.reason = "unexpected pass", f"passed, although the manifest says: {deviation}"
            elif report.failed and "[XPASS(strict)]" in (report.longreprtext or ""):
                rec.status = "unexpected pass"
                rec.reason = (
                    "passed, although the manifest says: " + (report.longreprtext or "").replace("[XPASS(strict)]", "").strip()
                )
            elif report.failed:
                rec.status, rec.reason = "failed", failure_text(report)
            elif report.skipped:
                rec.status, rec.reason = "skipped", _skip_reason(report)
            else:
                rec.status = "passed"
        elif report.failed:  # an error in setup or teardown fails the check as well; keep what came before
            before = f"{rec.reason}\n" if rec.reason else ""
            rec.status, rec.reason = "failed", f"{before}{report.when} error: {failure_text(report)}"

    def pytest_sessionfinish(self, session: pytest.Session, exitstatus: int) -> None:
        from fixtures.plugin import SETTINGS

        settings = session.config.stash.get(SETTINGS, None)
        run = describe_run(settings)
        run["exit status"] = int(exitstatus)
        run["collection errors"] = self.collection_errors
        previous = load(self.previous) if self.previous is not None else None
        evidence = getattr(settings, "evidence", None)
        write_results(self.out_dir, list(self.records.values()), run, previous, evidence=evidence, since=self.started)


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


def write_results(
    out_dir: Path,
    records: list[CheckResult],
    run: dict[str, Any],
    previous: dict[str, Any] | None = None,
    *,
    evidence: Path | None = None,
    since: float = 0.0,
) -> Path:
    """results.json and index.html. The rtnetlink support table is taken only if this run wrote
    it (newer than `since`); benchmark figures carry the date `./lab bench` wrote them. A broken
    optional input is noted in the run, never a reason to lose the results."""
    out_dir.mkdir(parents=True, exist_ok=True)
    counts = {s: sum(1 for r in records if r.status == s) for s in STATUSES}
    run.setdefault("notes", [])
    data: dict[str, Any] = {
        "run": run,
        "counts": counts,
        "results": [asdict(r) for r in sorted(records, key=lambda r: (r.check, r.stack))],
    }
    for directory in [d for d in (evidence, out_dir / "evidence", out_dir) if d is not None]:
        support = directory / "rtnetlink-support.json"
        if support.exists() and support.stat().st_mtime >= since:
            data["rtnetlink_support"] = _optional_json(support, run)
            break
    bench = out_dir / BENCHMARKS_FILE
    if bench.exists():  # `./lab bench` writes it (tox -e bench)
        data["benchmarks"] = _optional_json(bench, run)
        run["benchmarks date"] = dt.datetime.fromtimestamp(bench.stat().st_mtime, dt.UTC).isoformat(timespec="seconds")
    path = out_dir / RESULTS_FILE
    path.write_text(json.dumps(data, indent=1))
    from .html import write_page

    write_page(out_dir, data, previous)
    return path


def _optional_json(path: Path, run: dict[str, Any]) -> Any:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        run["notes"].append(f"{path} left out: {exc}")
        return None


def load(path: Path) -> dict[str, Any]:
    return json.loads(Path(path).read_text())
