"""Shards into one run: several results.json, each from a machine that ran part of the matrix.

A cell (check, stack) must come from exactly one shard: two shards that report the same cell
(the same shard merged twice, or a shard definition whose pieces overlap) are refused, naming
the cell and both files, since keeping either would hide the other's verdict. Each shard's
evidence is copied under the merged report (`evidence/<shard>/...`), so the page, published as
one folder, links what every machine kept.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

from labkit.errors import LabInputError

from .results import STATUSES, load

NOTHING_SELECTED = 5  # pytest's "no tests ran": a shard whose pieces a narrowed run left empty
RECORD_KEYS = {"nodeid", "check", "suite", "stack", "status"}
RUN_FIELDS = ("date", "kernel", "python", "packages", "labkit", "commit", "host", "order seed", "isolation", "exit status")


def read_shards(paths: list[Path]) -> list[tuple[Path, dict[str, Any]]]:
    """Each results.json, checked before anything is written: present, JSON, a run's records,
    named once, and no cell in two of them."""
    seen: dict[Path, Path] = {}
    shards = []
    allowed = "allowed: a results.json written by a conformance run"
    for path in paths:
        real = path.resolve()
        if real in seen:
            raise LabInputError(
                f"results file {path} is given twice (also as {seen[real]}); allowed: each shard's results.json once"
            )
        seen[real] = path
        if not path.is_file():
            raise LabInputError(f"results file {path}: not found; {allowed}")
        try:
            data = load(path)
        except ValueError as exc:
            raise LabInputError(f"results file {path}: not JSON ({exc}); {allowed}") from None
        if not isinstance(data, dict) or not isinstance(data.get("results"), list) or not isinstance(data.get("run"), dict):
            raise LabInputError(f"results file {path}: no run and results in it; {allowed}")
        for n, record in enumerate(data["results"], 1):
            if not isinstance(record, dict) or not RECORD_KEYS <= set(record):
                have = ", ".join(sorted(record)) if isinstance(record, dict) else type(record).__name__
                raise LabInputError(
                    f"results file {path}, result {n}: has {have or 'nothing'}; {allowed}, records with {', '.join(sorted(RECORD_KEYS))}"
                )
        shards.append((path, data))
    refuse_twice(shards)
    return shards


def refuse_twice(shards: list[tuple[Path, dict[str, Any]]]) -> None:
    """A cell (check, stack) that two shards report: the same shard merged twice (a copy of it),
    or overlapping pieces. Keeping either verdict would hide the other's."""
    owner: dict[tuple[str, str], Path] = {}
    for path, data in shards:
        for record in data["results"]:
            cell = (record["check"], record["stack"])
            if cell in owner:
                raise LabInputError(
                    f"{record['check']} on {record['stack'] or 'no stack'} is reported by both {owner[cell]} and {path}; "
                    "allowed: shards that each report a cell once (a shard merged twice, or overlapping pieces in the shard definition)"
                )
            owner[cell] = path


def merge(shards: list[tuple[Path, dict[str, Any]]], out_dir: Path) -> dict[str, Any]:
    """One results.json's data from the shards' (as read_shards checked them); evidence files
    are copied under `out_dir/evidence/shard-N/` and the records point there."""
    refuse_twice(shards)
    results = [
        {**record, "evidence": _copy_evidence(record.get("evidence", []), path, data["run"], out_dir, f"shard-{n}")}
        for n, (path, data) in enumerate(shards, 1)
        for record in data["results"]
    ]
    runs = [data["run"] for _, data in shards]
    run = _merged_run(runs, [p for p, _ in shards])
    merged: dict[str, Any] = {
        "run": run,
        "counts": {s: sum(1 for r in results if r["status"] == s) for s in STATUSES},
        "results": sorted(results, key=lambda r: (r["check"], r["stack"])),
    }
    support = _merged_support([d.get("rtnetlink_support") for _, d in shards])
    if support:
        merged["rtnetlink_support"] = support
    bench = [d["benchmarks"] for _, d in shards if d.get("benchmarks")]
    if bench:
        merged["benchmarks"] = bench[0]
    return merged


def _merged_run(runs: list[dict[str, Any]], paths: list[Path]) -> dict[str, Any]:
    """The first shard's description, with what differs between machines said: the earliest
    date, the worst exit status, every stack (a stack found on any machine is available), and a
    note where shards ran different code, kernels or stack versions."""
    run: dict[str, Any] = {k: runs[0].get(k) for k in RUN_FIELDS if k in runs[0]}
    run["date"] = min(str(r.get("date", "")) for r in runs)
    # 5 is pytest's "nothing selected": a shard that a narrowed run left empty is not incomplete
    run["exit status"] = max((int(r.get("exit status") or 0) for r in runs if r.get("exit status") != NOTHING_SELECTED), default=0)
    run["collection errors"] = [e for r in runs for e in r.get("collection errors", [])]
    run["notes"] = [n for r in runs for n in r.get("notes", [])]
    run["full matrix"] = all(r.get("full matrix") for r in runs)
    stacks: dict[str, dict[str, Any]] = {}
    for r in runs:
        for stack, about in r.get("stacks", {}).items():
            if stack not in stacks or (about.get("available") and not stacks[stack].get("available")):
                stacks[stack] = dict(about)
    run["stacks"] = stacks
    for key in ("commit", "kernel", "labkit", "python", "packages"):
        values = sorted({str(r.get(key, "")) for r in runs})
        if len(values) > 1:
            run["notes"].append(f"shards ran different {key}s: {', '.join(values)}")
    for stack in stacks:
        versions = sorted(
            {str(r["stacks"][stack].get("version", "")) for r in runs if r.get("stacks", {}).get(stack, {}).get("available")}
        )
        if len(versions) > 1:
            run["notes"].append(f"shards ran different versions of {stack}: {', '.join(versions)}")
    run["shards"] = [
        {
            "results": str(path),
            "host": r.get("host", ""),
            "date": r.get("date", ""),
            "shard": r.get("shard", ""),
            "exit status": r.get("exit status"),
            "duration s": r.get("duration s"),
            "evidence bytes": r.get("evidence bytes"),
        }
        for path, r in zip(paths, runs, strict=True)
    ]
    durations = [float(r["duration s"]) for r in runs if r.get("duration s") is not None]
    if durations:
        run["duration s"] = max(durations)  # the machines ran side by side: the slowest one decides
    sizes = [int(r["evidence bytes"]) for r in runs if r.get("evidence bytes") is not None]
    if sizes:
        run["evidence bytes"] = sum(sizes)
    return run


def _copy_evidence(files: list[str], results: Path, run: dict[str, Any], out_dir: Path, shard: str) -> list[str]:
    """The shard's evidence as it lies beside its results.json here (the machine that wrote it
    recorded where its report and evidence folders were), copied under `out_dir/evidence/shard`
    unless it is under `out_dir` already (`./lab nightly` writes the shards there)."""
    into = out_dir / "evidence" / shard
    out = []
    report_dir = run.get("report dir")
    evidence_dir = run.get("evidence dir")
    for name in files:
        source = Path(name)
        if not source.is_absolute():
            source = results.parent / source
        elif evidence_dir and report_dir and source.is_relative_to(evidence_dir):
            inside = Path(evidence_dir)
            base = (
                results.parent / inside.relative_to(report_dir)
                if inside.is_relative_to(report_dir)
                else results.parent / "evidence"
            )
            source = base / source.relative_to(inside)
        if not source.is_file():
            out.append(name)  # kept as written: the page shows it, unlinkable, rather than nothing
            continue
        if source.resolve().is_relative_to(out_dir.resolve()):
            out.append(str(source.resolve()))
            continue
        # Outside the shard's folder, the check's own folder (evidence/<check>/<stack>.pcap) keeps
        # two checks' files apart.
        rel = source.relative_to(results.parent) if source.is_relative_to(results.parent) else Path(source.parent.name, source.name)
        dest = into / rel
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(source, dest)  # always: a file an earlier merge left in this folder is not this shard's
        out.append(str(dest.resolve()))
    return out


def _merged_support(tables: list[dict[str, Any] | None]) -> dict[str, Any] | None:
    """The rtnetlink support tables of the shards that ran the suite: their cells side by side."""
    found = [t for t in tables if t]
    if not found:
        return None
    merged: dict[str, Any] = {**found[0], "messages": {}}
    for table in found:
        for msg, cells in table.get("messages", {}).items():
            merged["messages"].setdefault(msg, {}).update(cells)
        for key, value in table.items():
            if key != "messages" and isinstance(value, dict):
                merged.setdefault(key, {}).update(value)
    return merged
