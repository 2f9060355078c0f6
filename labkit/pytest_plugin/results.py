"""The plugin side of the report: pytest's reports of every check, gathered where they all arrive.

That is the process that sees every phase of every check (the xdist controller, or the only
process), so `-n auto` needs nothing special. The records are handed to the report builder
(`reports.results.write_results`), which knows nothing of pytest.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import platform
import subprocess
import textwrap
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from labkit.perf import PERF_STASH
from labkit.pytest_plugin import order
from labkit.pytest_plugin.hooks import EVIDENCE_KINDS, stands_for, suite_of
from labkit.testbed.evidence import totals as evidence_totals
from reports.history import DEFAULT_KEEP
from reports.results import CheckResult, load, write_results
from reports.versions import installed_packages


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
        self.stands_for: dict[str, list[tuple[str, str]]] = {}  # nodeid -> (node id, stack) of the cells it fills
        self.collection_errors: list[str] = []
        self.began = time.monotonic()

    def _record(self, report: pytest.TestReport) -> CheckResult:
        if report.nodeid not in self.records:
            props = dict(report.user_properties)
            check, stack = str(props.get("check", report.nodeid)), str(props.get("stack", ""))
            entry = props.get("manifest entry")
            self.records[report.nodeid] = CheckResult(
                report.nodeid, check, suite_of(report.nodeid), stack, manifest=str(entry) if entry else None
            )
        return self.records[report.nodeid]

    def pytest_collectreport(self, report: pytest.CollectReport) -> None:
        if report.failed:
            last = (report.longreprtext or "").strip().splitlines()[-1:]
            self.collection_errors.append(f"{report.nodeid}: {last[0] if last else 'collection failed'}")

    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        rec = self._record(report)
        if others := stands_for(report):
            self.stands_for[report.nodeid] = others
        rec.duration += report.duration
        for key, value in report.user_properties:
            if key == "fuzz" and isinstance(value, str):
                rec.fuzz = json.loads(value)
        # The evidence is added to user_properties after the call report was made, so it
        # arrives with the teardown report: keep the union over the phases.
        rec.evidence = sorted({str(v) for k, v in report.user_properties if k in EVIDENCE_KINDS} | set(rec.evidence))
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
        from labkit.pytest_plugin.hooks import SETTINGS
        from labkit.pytest_plugin.rtnetlink import SUPPORT

        settings = session.config.stash.get(SETTINGS, None)
        run = describe_run(settings)
        run["exit status"] = int(exitstatus)
        run["collection errors"] = self.collection_errors
        previous = load(self.previous) if self.previous is not None else None
        support = session.config.stash.get(SUPPORT, None)  # the rtnetlink plugin's, stored before this runs
        perf = session.config.stash.get(PERF_STASH, None)  # suites/perf's campaign, when it ran
        run["full matrix"] = bool(getattr(settings, "full_matrix", False))
        run["order seed"] = order.seed_of(session.config)
        run["isolation"] = getattr(settings, "isolation", "")
        run.update(evidence_totals(p for rec in self.records.values() for p in rec.evidence))  # the report's benchmark section
        run["duration s"] = round(time.monotonic() - self.began, 1)
        run["report dir"] = str(self.out_dir)
        evidence = getattr(settings, "evidence", None)
        run["evidence dir"] = str(evidence) if evidence else ""
        shard = getattr(settings, "shard", None)
        if shard is not None:
            run["shard"] = f"{shard.label} {shard.name}"
        history = session.config.getoption("lab_history", None)
        write_results(
            self.out_dir,
            [*self.records.values(), *self.carried()],
            run,
            previous,
            support=support,
            history=Path(history) if history else None,
            keep=int(session.config.getoption("lab_keep", DEFAULT_KEEP) or DEFAULT_KEEP),
            load_dependent=_load_dependent(settings),
            perf=perf,
        )

    def carried(self) -> list[CheckResult]:
        """The cells of variants that did not run a check because another stood for them: the
        measured cell's verdict, marked as carried over from it (see labkit.pytest_plugin.matrix).
        A failure or error is not carried: it may be the measured variant's own trouble (a
        sandbox that would not start), so those cells say they were not measured."""
        out = []
        for nodeid, cells in self.stands_for.items():
            rec = self.records[nodeid]
            for cell_nodeid, stack in cells:
                if rec.status in ("failed", "not run"):
                    status, reason = (
                        "not run",
                        f"not measured: {rec.stack}, which stands for it, {rec.status}; --full-matrix runs it",
                    )
                else:
                    status, reason = rec.status, rec.reason
                out.append(
                    replace(
                        rec,
                        nodeid=cell_nodeid,
                        stack=stack,
                        status=status,
                        reason=reason,
                        duration=0.0,
                        evidence=[],
                        carried_from=rec.stack,
                    )
                )
        return out


def _load_dependent(settings: Any) -> Callable[[str, str], bool]:
    manifest = getattr(settings, "manifest", None)
    return manifest.load_dependent if manifest is not None else (lambda stack, check: False)


def source_commit() -> str:
    """The commit of the checkout labkit runs from, `-dirty` if tracked files differ from it; ""
    outside a git checkout. Runs compared as "the same code" (labkit flake) must agree on it."""
    root = Path(__file__).resolve().parents[2]
    try:
        head = subprocess.run(["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=10)
        if head.returncode != 0:
            return ""
        clean = subprocess.run(["git", "-C", str(root), "diff", "--quiet", "HEAD", "--"], capture_output=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return ""
    return head.stdout.strip() + ("" if clean.returncode == 0 else "-dirty")


def describe_run(settings: Any) -> dict[str, Any]:
    from importlib.metadata import PackageNotFoundError, version

    try:
        labkit_version = version("labkit")
    except PackageNotFoundError:
        labkit_version = "source"
    stacks = {}
    for spec in getattr(settings, "specs", ()):
        # A build (gvisor@nightly) is a column of its own: the file it ran and a digest of it
        # tell two builds apart where their versions agree (labkit.stacks.programs).
        available = spec.availability()
        stacks[spec.id] = {
            "available": available.ok,
            "why": "" if available.ok else available.reason,
            "install": available.install or "",
            "version": available.version or "",
            "binary": available.binary or "",
            "digest": available.digest or "",
        }
    return {
        "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "kernel": platform.release(),
        "python": platform.python_version(),
        "packages": installed_packages(),
        "labkit": labkit_version,
        "commit": source_commit(),
        "host": os.uname().nodename,
        "stacks": stacks,
    }
