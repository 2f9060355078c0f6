"""The conformance matrix: checks down, stacks across, one cell per check and stack.

Columns are grouped by what a reader compares: a first header row with one group per driver
(linux first, the reference), spanning its variants, and a second row naming each variant, the
driver's own default variant as "default". A build (`gvisor@nightly`) is a group of its own,
placed right after its driver: it is another binary with its own version, and mixing its cells
among the packaged variants would hide which binary a verdict belongs to.

Rows are grouped by suite and by feature (the check's file). A cell is one of four kinds, so
that a reader never mistakes "this cannot be asked of this stack" for "the lab could not ask":
- a status (pass, FAIL, dev, XPASS): what the check found;
- `n/a`: the check does not apply to that stack (no record at all, or a skip whose reason says
  the check's topology does not apply, e.g. a stack that makes its own link);
- skip: the stack lacks a capability or a program; the title gives the reason;
- carried over (the mark): the verdict of the variant that stands for this one.

This module only shapes the data; templates/matrix.html.j2 lays it out (autoescaped) and
templates/page.js filters it, by the data-* attributes shaped here.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Mapping
from typing import Any

from .versions import stacks_changed

SHORT = {
    "passed": "pass",
    "failed": "FAIL",
    "known deviation": "dev",
    "unexpected pass": "XPASS",
    "skipped": "skip",
    "not run": "—",
}
NA = "n/a"
CARRIED_MARK = "↳"
TITLE_CHARS = 300
DRIVER_ORDER = ("linux", "gvisor", "slirp4netns", "pasta")  # the reference first, then the sandboxes
NOT_APPLICABLE = ("does not apply", "makes its own link")  # skip reasons that mean n/a, not a lack
NO_STACK = ""  # the stack of checks that run on no stack (the kernel's own behaviour)


def token(status: str) -> str:
    """A status as one word, for class names and the space separated data-statuses."""
    return status.replace(" ", "-")


def split_stack(stack: str, info: Mapping[str, Any] | None = None) -> tuple[str, str, str]:
    """(driver, variant, build) of a stack id: `gvisor-ch4@nightly` -> ("gvisor", "ch4", "nightly").
    The run may name the driver itself (a third-party driver whose kind has a '-' in it)."""
    base, _, build = stack.partition("@")
    driver = (info or {}).get("driver") or base.split("-", 1)[0]
    variant = base[len(driver) + 1 :] if base.startswith(f"{driver}-") else ""
    return driver, variant, build


def _group_key(stack: str, info: Mapping[str, Any] | None) -> tuple[int, str, str]:
    driver, _, build = split_stack(stack, info)
    rank = DRIVER_ORDER.index(driver) if driver in DRIVER_ORDER else len(DRIVER_ORDER)
    return rank, driver, build


def _missing_title(info: Mapping[str, Any]) -> str:
    why = info.get("why") or "not installed"
    return f"missing: {why}" + (f"; install: {info['install']}" if info.get("install") else "")


def columns(stacks: Iterable[str], run: Mapping[str, Any]) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """The two header rows: driver groups (with their span) and their variants, in display order."""
    infos = run.get("stacks", {})
    groups: dict[tuple[int, str, str], list[str]] = defaultdict(list)
    for stack in stacks:
        groups[_group_key(stack, infos.get(stack))].append(stack)
    heads, cols = [], []
    for key in sorted(groups):
        _, driver, build = key
        members = sorted(groups[key], key=lambda s: (split_stack(s, infos.get(s))[1] != "", s))
        shaped = []
        for stack in members:
            info = infos.get(stack, {})
            missing = not info.get("available", True)
            version = info.get("version", "")
            shaped.append(
                {
                    "stack": stack,
                    "label": split_stack(stack, info)[1] or "default",
                    "missing": missing,
                    "title": _missing_title(info) if missing else (f"{stack} {version}".strip()),
                    "edge": False,
                }
            )
        shaped[-1]["edge"] = True  # the group's last column: a heavier line after it
        all_missing = all(c["missing"] for c in shaped)
        versions = sorted(
            {str(infos.get(s, {}).get("version") or "") for s in members if infos.get(s, {}).get("available", True)} - {""}
        )
        heads.append(
            {
                "name": f"{driver}@{build}" if build else driver,
                "span": len(shaped),
                "missing": all_missing,
                "title": shaped[0]["title"] if all_missing else "",
                # the variants of a group run one binary: its version, under the group's name
                "version": " / ".join(versions),
            }
        )
        cols.extend(shaped)
    return heads, cols


def not_applicable(record: Mapping[str, Any] | None) -> bool:
    """No record, or a skip saying the check does not apply to this kind of stack."""
    if record is None:
        return True
    reason = record.get("reason", "")
    return record["status"] == "skipped" and any(p in reason for p in NOT_APPLICABLE)


def cell(record: Mapping[str, Any] | None, stack: str, links: Mapping[str, str], changed: bool) -> dict[str, Any]:
    """One cell, its kind decided: status, n/a, skip, or carried over (with a status). The title
    is the reason (a cell with no record needs none: the legend says what n/a means)."""
    shaped = {
        "stack": stack,
        "status": NA,
        "kind": "n/a",
        "short": NA,
        "title": "",
        "href": "",
        "carried_from": "",
        "changed": changed,
    }
    if record is None:
        return shaped
    title = record.get("reason", "")[:TITLE_CHARS]
    if not_applicable(record):
        return {**shaped, "title": title}
    status, carried = record["status"], record.get("carried_from") or ""
    if carried:
        title = f"carried over from {carried}" + (f": {title}" if title else "")
    return {
        **shaped,
        "status": status,
        "kind": "carried" if carried else "skip" if status == "skipped" else "status",
        "short": SHORT.get(status, status),
        "title": title,
        "href": links.get(record["nodeid"], ""),
        "carried_from": carried,
    }


def changed_cells(current: Mapping[str, Any], previous: Mapping[str, Any] | None) -> set[tuple[str, str]]:
    """The (check, stack) cells whose outcome changed since `previous`, a check new to a stack
    among them, and every cell of a stack whose version changed (a new build may change any
    verdict, so a reader filtering on "changed" wants to look at all of them). A version one
    run does not name is no change: that is a stack labkit learnt to ask, not a new build."""
    if previous is None:
        return set()
    before = {(r["check"], r["stack"]): r["status"] for r in previous.get("results", [])}
    rebuilt = stacks_changed(current.get("run", {}), previous.get("run", {}))
    return {
        (r["check"], r["stack"])
        for r in current.get("results", [])
        if before.get((r["check"], r["stack"])) != r["status"] or r["stack"] in rebuilt
    }


def _check_name(check: str) -> str:
    return check.split("::", 1)[1] if "::" in check else check


def _feature(check: str) -> str:
    return check.split("::", 1)[0].split("/")[-1]


def matrix(
    results: list[dict[str, Any]],
    stacks: list[str],
    run: Mapping[str, Any],
    links: Mapping[str, str],
    changed: set[tuple[str, str]] | frozenset[tuple[str, str]],
) -> dict[str, Any]:
    """Everything templates/matrix.html.j2 lays out. `links`: a record's nodeid -> the href of its
    finding; `changed`: the (check, stack) cells whose outcome or stack version changed since the
    previous run."""
    heads, cols = columns(stacks, run)
    no_stack = any(r["stack"] == NO_STACK for r in results)
    order = ([NO_STACK] if no_stack else []) + [c["stack"] for c in cols]
    by_cell: dict[str, dict[str, dict[str, dict[str, Any]]]] = defaultdict(lambda: defaultdict(dict))
    for r in results:
        by_cell[r["suite"]][r["check"]][r["stack"]] = r
    suites: list[dict[str, Any]] = []
    total = 0
    for suite in sorted(by_cell):
        features: list[dict[str, Any]] = []
        for check in sorted(by_cell[suite]):
            if not features or features[-1]["name"] != _feature(check):
                features.append({"name": _feature(check), "rows": []})
            cells = [cell(by_cell[suite][check].get(s), s, links, (check, s) in changed) for s in order]
            statuses = list(dict.fromkeys(token(c["status"]) for c in cells))
            features[-1]["rows"].append(
                {
                    "check": check,
                    "name": _check_name(check),
                    "statuses": " ".join(statuses),
                    "changed": any(c["changed"] for c in cells),
                    "cells": cells,
                }
            )
            total += 1
        suites.append({"name": suite, "features": features, "checks": sum(len(f["rows"]) for f in features)})
    return {
        "heads": heads,
        "columns": cols,
        "no_stack": no_stack,
        "width": len(order) + 1,
        "suites": suites,
        "total": total,
        "carried": any(c["carried_from"] for s in suites for f in s["features"] for row in f["rows"] for c in row["cells"]),
        "changed": sum(1 for s in suites for f in s["features"] for row in f["rows"] if row["changed"]),
        "mark": CARRIED_MARK,
    }
