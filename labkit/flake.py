"""`labkit flake`: the one definition of a flaky check the lab uses.

The same code and the same stack versions, run N times in N random orders with the full look
at every pooled testbed (isolation "canary"): a check whose outcome on a stack differs between
those runs is flaky. If the manifest already says its deviation is load-dependent
(`strict = false`), that is the stack's own nondeterminism and it is listed apart; anything else
is a bug in the lab (a check that passes alone and fails after another), never "a flake".
Each run keeps its results.json and order.json, so every finding comes with the orders that
gave each outcome, ready for `--lab-replay`.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from labkit.errors import LabError, LabInputError
from labkit.manifest import Manifest

DEFAULT_ARGS = ("suites", "--stack", "all", "-n", "auto")


@dataclass
class Finding:
    check: str
    stack: str
    outcomes: dict[str, list[int]] = field(default_factory=dict)  # outcome -> runs (1-based) that gave it
    load_dependent: bool = False

    def line(self, orders: Sequence[Path]) -> str:
        parts = "; ".join(f"{outcome} in run {', '.join(map(str, runs))}" for outcome, runs in sorted(self.outcomes.items()))
        where = ", ".join(str(orders[r - 1]) for runs in self.outcomes.values() for r in runs[:1])
        return f"{self.check} on {self.stack}: {parts} (orders: {where})"


def compare(runs: Sequence[dict[str, Any]], manifest: Manifest) -> list[Finding]:
    """Every (check, stack) whose outcome differs between `runs` (results.json contents)."""
    outcomes: dict[tuple[str, str], dict[str, list[int]]] = defaultdict(lambda: defaultdict(list))
    for n, data in enumerate(runs, 1):
        for result in data["results"]:
            outcomes[(result["check"], result["stack"])][result["status"]].append(n)
    found = []
    for (check, stack), seen in sorted(outcomes.items()):
        if len(seen) > 1 or sum(map(len, seen.values())) < len(runs):
            seen = dict(seen)
            missing = [n for n in range(1, len(runs) + 1) if not any(n in r for r in seen.values())]
            if missing:
                seen["absent"] = missing
            deviation = manifest.lookup(stack, check) if stack else None
            found.append(Finding(check, stack, seen, deviation is not None and not deviation.strict))
    return found


def versions(data: dict[str, Any]) -> dict[str, str]:
    """What must not change between the runs compared: labkit's code, the kernel and each stack's version."""
    run = data["run"]
    found = {key: str(run.get(key, "")) for key in ("labkit", "commit", "kernel")}
    for stack, about in run.get("stacks", {}).items():
        found[str(stack)] = str(about.get("version", ""))
    return found


def run_all(runs: int, out: Path, pytest_args: Sequence[str], root: Path) -> list[Path]:
    """N runs of pytest, each with its own report directory; returns their results.json paths."""
    paths = []
    for n in range(1, runs + 1):
        report = out / f"run-{n}"
        argv = [sys.executable, "-m", "pytest", *pytest_args, "--lab-order", "random", "--lab-isolation", "canary", "--lab-report", str(report)]
        print(f"flake: run {n} of {runs}: {' '.join(argv[3:])}", flush=True)
        done = subprocess.run(argv, cwd=root, stdin=subprocess.DEVNULL)
        results = report / "results.json"
        if not results.is_file():
            raise LabError(f"run {n} wrote no {results} (pytest exit status {done.returncode}); see its output above")
        paths.append(results)
    return paths


def main(runs: int, out: Path, pytest_args: Sequence[str], manifest_path: Path | None, root: Path) -> int:
    if runs < 2:
        raise LabInputError(f"--runs {runs}: a flaky check needs at least two runs to differ; allowed: 2 or more")
    results = run_all(runs, out, pytest_args or DEFAULT_ARGS, root)
    data = [json.loads(p.read_text()) for p in results]
    seen_versions = [versions(d) for d in data]
    if any(v != seen_versions[0] for v in seen_versions[1:]):
        changed = sorted(k for v in seen_versions[1:] for k in v if v.get(k) != seen_versions[0].get(k))
        raise LabError(f"versions changed between the runs ({', '.join(changed)}): their outcomes are not comparable")
    manifest = Manifest.load(manifest_path) if manifest_path and manifest_path.exists() else Manifest.empty()
    findings = compare(data, manifest)
    orders = [p.parent / "order.json" for p in results]
    flaky = [f for f in findings if not f.load_dependent]
    load_dependent = [f for f in findings if f.load_dependent]
    seeds = [d["run"].get("order seed") for d in data]
    cells = len({(r["check"], r["stack"]) for d in data for r in d["results"]})
    print(f"\nflake: {runs} runs (seeds {', '.join(map(str, seeds))}), {cells} check x stack cells compared")
    print(f"flaky (a bug in the lab or a check until shown otherwise): {len(flaky)}")
    for f in flaky:
        print(f"  {f.line(orders)}")
    print(f"load-dependent (the manifest's strict = false: the stack's own nondeterminism): {len(load_dependent)}")
    for f in load_dependent:
        print(f"  {f.line(orders)}")
    summary = {
        "runs": [str(p) for p in results],
        "seeds": seeds,
        "cells": cells,
        "flaky": [f.__dict__ for f in flaky],
        "load_dependent": [f.__dict__ for f in load_dependent],
    }
    (out / "flake.json").write_text(json.dumps(summary, indent=1) + "\n")
    page = _page(out, data[-1], summary)
    print(f"flake: summary in {out / 'flake.json'}; the last run's page with the verdict: {page}")
    return 1 if flaky else 0


def _page(out: Path, last: dict[str, Any], summary: dict[str, Any]) -> Path:
    """The last run's results and page, with the flake verdict (its "Flaky checks" section), in `out`."""
    from reports.html import write_page

    data = {**last, "flake": summary}
    (out / "results.json").write_text(json.dumps(data, indent=1))
    return write_page(out, data)
