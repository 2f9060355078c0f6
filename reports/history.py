"""The last N nights: one small JSON file per run, kept in a folder the next night finds.

A night keeps what the trends need and nothing else: the run's versions (labkit's commit, the
kernel, each stack's version and binary digest) and each cell's outcome, one letter per cell.
From the nights the page draws, per stack, passed / known deviation / failed over the nights,
and per check its last N outcomes as a strip. A cell whose outcome changed between two nights
with the same labkit commit, kernel and stack version is flaky (the definition `labkit flake`
uses, across nights instead of across orders); one that changed with a new build of its stack
is that build's change, and one that changed with new labkit code or a new kernel the lab's,
each listed apart; a deviation the manifest marks `strict = false` is the
stack's own nondeterminism, listed apart too.

A night of a perf run (results.json with "perf") also keeps each perf cell's median, as
[stack, metric, mtu, median] rounded to PERF_DIGITS significant digits: a trend is read by eye,
and the figures themselves stay in that night's results.json. The page draws each cell's median
over the nights that measured perf (reports.perf), skipping the nights that did not.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import math
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from labkit.errors import LabInputError

LETTER = {"passed": "P", "failed": "F", "known deviation": "D", "unexpected pass": "X", "skipped": "S", "not run": "N"}
STATUS = {v: k for k, v in LETTER.items()}
WORST = "FXDNPS"  # a check's strip shows its worst outcome over the stacks that night
DEFAULT_KEEP = 30
NO_VERDICT = {"S", "N"}
VERSION_PARTS = ("labkit", "kernel", "version", "digest")  # Night.version's order
TRENDS = ("passed", "known deviation", "failed", "unexpected pass")
PERF_DIGITS = 4  # significant digits of a perf median kept per night


@dataclass
class Night:
    name: str
    data: dict[str, Any]

    @property
    def date(self) -> str:
        return str(self.data["run"].get("date", ""))

    @property
    def cells(self) -> dict[str, dict[str, str]]:
        """stack -> check -> letter."""
        return self.data["cells"]

    @property
    def perf(self) -> dict[tuple[str, str, int | None], float | None] | None:
        """(stack, metric, mtu) -> median, or None when this night measured no perf."""
        rows = self.data.get("perf")
        if rows is None:
            return None
        return {(r[0], r[1], r[2]): r[3] for r in rows}

    def version(self, stack: str) -> tuple[str, ...]:
        """What must be the same for a change of outcome to be called flaky."""
        run = self.data["run"]
        about = run.get("stacks", {}).get(stack, {})
        return (run.get("commit", ""), run.get("kernel", ""), about.get("version", ""), about.get("digest", ""))


def night_of(data: dict[str, Any]) -> dict[str, Any]:
    """The part of a results.json a night keeps."""
    run = data.get("run", {})
    cells: dict[str, dict[str, str]] = defaultdict(dict)
    for r in data.get("results", []):
        cells[r["stack"]][r["check"]] = LETTER.get(r["status"], "N")
    stacks = {s: {k: a.get(k, "") for k in ("version", "digest", "available")} for s, a in run.get("stacks", {}).items()}
    night: dict[str, Any] = {
        "run": {
            **{k: run.get(k, "") for k in ("date", "labkit", "commit", "kernel", "host", "duration s", "evidence bytes")},
            "stacks": stacks,
        },
        "cells": {s: dict(sorted(c.items())) for s, c in sorted(cells.items())},
    }
    perf = perf_medians(data.get("perf"))
    if perf is not None:  # a night without perf stays as it was (and hashes as it did)
        night["perf"] = perf
    return night


def _kept(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        return None
    return float(f"{value:.{PERF_DIGITS}g}")


def perf_medians(perf: dict[str, Any] | None) -> list[list[Any]] | None:
    """A perf run's cells as a night keeps them: [stack, metric, mtu, median], sorted; None when
    the run measured no perf. A median that is not a finite number is kept as null."""
    if not perf or not perf.get("cells"):
        return None
    rows = {(c["stack"], c["metric"], c.get("mtu")): _kept(c.get("median")) for c in perf["cells"]}
    return [[s, m, mtu, v] for (s, m, mtu), v in sorted(rows.items(), key=lambda kv: (kv[0][0], kv[0][1], kv[0][2] or 0))]


def _perf_rows_ok(rows: Any) -> bool:
    return isinstance(rows, list) and all(
        isinstance(r, list)
        and len(r) == 4
        and isinstance(r[0], str)
        and isinstance(r[1], str)
        and (r[2] is None or isinstance(r[2], int))
        and (r[3] is None or isinstance(r[3], int | float))
        for r in rows
    )


def check_keep(keep: int, option: str = "--keep") -> int:
    """How many nights to keep: at least the one being recorded."""
    if keep < 1:
        raise LabInputError(f"{option} {keep}: allowed: 1 or more nights")
    return keep


def record(directory: Path, data: dict[str, Any], keep: int = DEFAULT_KEEP) -> Path:
    """Add this run as a night and drop all but the last `keep`; the night's file is named by its
    date and content, so recording the same run twice keeps one."""
    check_keep(keep)
    directory.mkdir(parents=True, exist_ok=True)
    night = night_of(data)
    text = json.dumps(night, separators=(",", ":"), sort_keys=True)
    stamp = night["run"]["date"].replace(":", "").replace("-", "")[:15] or "undated"
    path = directory / f"night-{stamp}-{hashlib.sha256(text.encode()).hexdigest()[:8]}.json"
    path.write_text(text + "\n")
    for old in load_names(directory)[:-keep]:
        old.unlink()
    return path


def load_names(directory: Path) -> list[Path]:
    return sorted(directory.glob("night-*.json"))


def load(directory: Path) -> list[Night]:
    """The nights in `directory`, oldest first; a file that is not a night is refused by name."""
    if not directory.is_dir():
        return []
    nights = []
    for path in load_names(directory):
        try:
            data = json.loads(path.read_text())
            if not isinstance(data.get("cells"), dict) or not isinstance(data.get("run"), dict):
                raise ValueError("no run and cells")
            if "perf" in data and not _perf_rows_ok(data["perf"]):
                raise ValueError("perf is not a list of [stack, metric, mtu, median]")
        except (OSError, ValueError, AttributeError) as exc:
            raise LabInputError(f"history night {path}: {exc}; allowed: night-*.json files written by labkit") from None
        nights.append(Night(path.name, data))
    return sorted(nights, key=lambda n: (n.date, n.name))


def as_results(night: Night) -> dict[str, Any]:
    """A night in results.json's shape, enough to say what changed since it."""
    results = [
        {"check": check, "stack": stack, "status": STATUS.get(letter, "not run"), "nodeid": "", "reason": ""}
        for stack, checks in night.cells.items()
        for check, letter in checks.items()
    ]
    return {"run": night.data["run"], "results": results}


def summarize(nights: list[Night], load_dependent: Callable[[str, str], bool] = lambda stack, check: False) -> dict[str, Any]:
    """What the page draws from the nights: per stack the counts each night, per check its strip,
    and the cells that changed: flaky, changed with a build, load-dependent."""
    dates = [n.date for n in nights]
    stacks = sorted({s for n in nights for s in n.cells if s})
    trends = []
    for stack in stacks:
        series = []
        for n in nights:
            letters = list(n.cells.get(stack, {}).values())
            series.append({status: letters.count(LETTER[status]) for status in TRENDS})
        trends.append({"stack": stack, "nights": series})
    checks = sorted({c for n in nights for cells in n.cells.values() for c in cells})
    strips = {}
    for check in checks:
        strip = ""
        for n in nights:
            seen = [cells[check] for cells in n.cells.values() if check in cells]
            strip += min(seen, key=WORST.index) if seen else "-"
        strips[check] = strip
    flaky: list[dict[str, Any]] = []
    builds: list[dict[str, Any]] = []
    lab: list[dict[str, Any]] = []
    load: list[dict[str, Any]] = []
    for stack in sorted({s for n in nights for s in n.cells}):
        for check in sorted({c for n in nights for c in n.cells.get(stack, {})}):
            outcomes = [(n, n.cells.get(stack, {}).get(check)) for n in nights]
            # A skip (a stack missing that night) or a cell not run (the variant that stands for
            # it failed) says nothing of the check's own outcome: only verdicts are compared.
            verdicts = [(n, o) for n, o in outcomes if o is not None and o not in NO_VERDICT]
            strip = "".join(o or "-" for _, o in outcomes)
            flips = [(a, b) for (a, oa), (b, ob) in itertools.pairwise(verdicts) if oa != ob]
            if not flips:
                continue
            entry = {"check": check, "stack": stack, "strip": strip}
            same = [(a, b) for a, b in flips if a.version(stack) == b.version(stack)]
            if same and load_dependent(stack, check):
                load.append(entry)
            elif same:
                flaky.append({**entry, "nights": [b.date for _, b in same]})
            for a, b in flips:
                was, now = a.version(stack), b.version(stack)
                if was == now:
                    continue
                what = "; ".join(f"{k} {x or '?'} -> {y or '?'}" for k, x, y in zip(VERSION_PARTS, was, now, strict=True) if x != y)
                # A new build of the stack is the build's change; otherwise the lab or the kernel moved.
                (builds if was[2:] != now[2:] else lab).append({**entry, "change": what, "night": b.date})
                break
    return {
        "dates": dates,
        "trends": trends,
        "strips": strips,
        "flaky": flaky,
        "builds": builds,
        "lab": lab,
        "load_dependent": load,
        "perf": perf_trends(nights),
    }


def perf_trends(nights: list[Night]) -> dict[str, Any]:
    """Each perf cell's median over the nights that measured perf (a conformance-only night is no
    gap in a perf trend): {"dates": [...], "cells": [{"stack", "metric", "mtu", "medians": [...]}]},
    a median null where that night did not measure the cell."""
    measured = [(n, perf) for n in nights if (perf := n.perf) is not None]
    keys = sorted({k for _, perf in measured for k in perf}, key=lambda k: (k[0], k[1], k[2] or 0))
    return {
        "dates": [n.date for n, _ in measured],
        "cells": [
            {"stack": s, "metric": m, "mtu": mtu, "medians": [perf.get((s, m, mtu)) for _, perf in measured]} for s, m, mtu in keys
        ],
    }


def attach(
    data: dict[str, Any],
    directory: Path,
    keep: int = DEFAULT_KEEP,
    load_dependent: Callable[[str, str], bool] = lambda stack, check: False,
) -> dict[str, Any] | None:
    """Keep this run as the newest night and put the nights' summary into `data["history"]`.
    Returns the night before it in results.json's shape (what changed is said against it), or
    None on the first night."""
    before = load(directory)
    path = record(directory, data, keep)
    # The same run recorded again (a merge re-run) must not be compared with itself.
    before = [n for n in before if n.name != path.name and n.date != night_of(data)["run"]["date"]]
    data["history"] = summarize(load(directory), load_dependent)
    return as_results(before[-1]) if before else None
