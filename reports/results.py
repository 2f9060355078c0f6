"""results.json: what a conformance run found, one record per check and stack.

Each record says check, suite, stack, status (passed / failed / known deviation / unexpected
pass / skipped), why (the failure's first line, the deviation's reason, the skip's reason), how
long it took and where its evidence is. The run itself is described too: date, kernel, labkit
and stack versions, and which stacks were missing. labkit's pytest plugin gathers the records
(labkit/pytest_plugin/results.py); this module only writes them, so it runs without pytest.
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

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
    carried_from: str | None = None  # the variant whose run stands for this cell (None: measured)
    manifest: str | None = None  # the manifest entry that applies (labkit.manifest.Deviation.entry)
    fuzz: dict[str, Any] | None = None  # a robustness campaign's seed, frames and finding (labkit.fuzz)


def write_results(
    out_dir: Path,
    records: list[CheckResult],
    run: dict[str, Any],
    previous: dict[str, Any] | None = None,
    *,
    support: dict[str, Any] | None = None,
    history: Path | None = None,
    keep: int = 30,
    load_dependent: Callable[[str, str], bool] | None = None,
    perf: dict[str, Any] | None = None,
) -> Path:
    """results.json and index.html. `support` is the rtnetlink support table this run gathered
    (the plugin hands it over; none when no rtnetlink check ran); benchmark figures carry the
    date `./lab bench` wrote them; `history` keeps the run as a night there (reports.history).
    A broken optional input is noted in the run, never a reason
    to lose the results."""
    out_dir.mkdir(parents=True, exist_ok=True)
    counts = {s: sum(1 for r in records if r.status == s) for s in STATUSES}
    run.setdefault("notes", [])
    data: dict[str, Any] = {
        "run": run,
        "counts": counts,
        "results": [asdict(r) for r in sorted(records, key=lambda r: (r.check, r.stack))],
    }
    if support:
        data["rtnetlink_support"] = support
    if perf:  # suites/perf's figures (labkit.perf): the page's Performance section, a night's perf trend
        data["perf"] = perf
    bench = out_dir / BENCHMARKS_FILE
    if bench.exists():  # `./lab bench` writes it (tox -e bench)
        data["benchmarks"] = _optional_json(bench, run)
        run["benchmarks date"] = dt.datetime.fromtimestamp(bench.stat().st_mtime, dt.UTC).isoformat(timespec="seconds")
    if history is not None:  # this run becomes the newest night; unless told otherwise, compare with the one before
        from .history import attach

        night_before = attach(data, history, keep, load_dependent or (lambda stack, check: False))
        previous = previous if previous is not None else night_before
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
