"""The rtnetlink support table as the page shows it (templates/support.html.j2, macro `support`).

The table in results.json (labkit.rtnetlink.support.merge) is message type x stack. Read as it
comes it repeats itself: the variants of one stack mostly answer every message alike, so a
reader scans eight identical columns to learn one thing. Here stacks whose answers are the same
on every row share one column, headed by their names. An attribute count means something only
against what the kernel returned for that message, so a cell says "k of the kernel's n
attributes" and lists the missing ones on demand; where the kernel returned no attribute (the
DEL messages, the malformed requests) there is nothing to count and the cell says nothing.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

# A row named "socket: SO_RCVBUF" belongs to the family "socket"; a bare message type ("RTM_GETLINK",
# "malformed") to the requests and answers. The page groups rows by family in this order, so the
# reader finds what a tool relies on (the socket, notifications, the libraries and commands)
# together rather than spread through the alphabet; a family not named here comes last.
FAMILIES = {
    "": "requests and answers",
    "dump": "large dumps",
    "socket": "the socket",
    "notify": "notifications",
    "pyroute2": "pyroute2's API",
    "ip": "iproute2 commands",
}


def family_of(message: str) -> str:
    prefix, sep, _ = message.partition(": ")
    return prefix if sep and " " not in prefix else ""


def _row_order(message: str) -> tuple[int, str, str]:
    family = family_of(message)
    rank = list(FAMILIES).index(family) if family in FAMILIES else len(FAMILIES)
    return rank, family, message


STATUS_CSS = {"supported": "passed", "differs": "known-deviation", "unsupported": "failed"}
SHOWN_NAMES = 2  # a merged column's header names this many stacks, then "… (n)"; its title names all


def _answer(cell: dict[str, Any] | None) -> tuple[Any, ...] | None:
    """What a column shows for one message: two stacks with the same answer on every row merge.
    Differences are compared as a set: the rows of a cell arrive in whatever order the workers
    finished, and the order is not an answer."""
    if cell is None:
        return None
    return cell["status"], tuple(sorted(set(cell.get("attrs", [])))), tuple(sorted(set(cell.get("differences", []))))


def _label(stacks: list[str]) -> str:
    if len(stacks) <= SHOWN_NAMES + 1:
        return ", ".join(stacks)
    return f"{', '.join(stacks[:SHOWN_NAMES])}, … ({len(stacks)})"


def _attributes(n: int) -> str:
    return f"{n} attribute" + ("" if n == 1 else "s")


def _coverage(attrs: list[str], kernel: list[str]) -> dict[str, Any] | None:
    """The attributes a stack returned, read against the kernel's; None when there is nothing to count."""
    mine, theirs = set(attrs), set(kernel)
    if not mine and not theirs:
        return None
    if not theirs:
        return {"text": f"{_attributes(len(mine))}; the kernel returned none", "missing": [], "extra": sorted(mine)}
    return {
        "text": f"{len(mine & theirs)} of the kernel's {_attributes(len(theirs))}",
        "missing": sorted(theirs - mine),
        "extra": sorted(mine - theirs),
    }


def _cell(cell: dict[str, Any] | None, kernel: list[str]) -> dict[str, Any] | None:
    if cell is None:
        return None
    differences = sorted(set(cell.get("differences", [])))
    carried = f"carried over from {cell['carried_from']}\n" if cell.get("carried_from") else ""
    return {
        "status": cell["status"],
        "cls": STATUS_CSS.get(cell["status"], ""),
        "tip": carried + "\n".join(differences),
        "differences": len(differences),
        "coverage": _coverage(cell.get("attrs", []), kernel),
    }


def columns(messages: dict[str, dict[str, Any]]) -> list[list[str]]:
    """The stacks, grouped by identical answers over every message; groups in the order of their
    first stack, the stacks of a group sorted."""
    stacks = sorted({s for cells in messages.values() for s in cells})
    groups: dict[tuple[Any, ...], list[str]] = {}
    for s in stacks:
        key = tuple(_answer(messages[m].get(s)) for m in sorted(messages))
        groups.setdefault(key, []).append(s)
    return list(groups.values())


def _shown(cells: dict[str, Any], group: list[str]) -> dict[str, Any] | None:
    """The cell a merged column shows: a measured stack's where the group has one (all answer
    alike; a carried one would label the whole column "carried over")."""
    present = [cells[s] for s in group if s in cells]
    measured = [c for c in present if not c.get("carried_from")]
    return (measured or present or [None])[0]


def with_carried(messages: dict[str, dict[str, Any]], carried: Mapping[str, str]) -> dict[str, dict[str, Any]]:
    """The table with the answers of variants that ran no rtnetlink check of their own filled in
    from the variant whose run stood for theirs (the matrix rule): that is the answer they give,
    and without it they read as blank columns."""
    out = {}
    for msg, cells in messages.items():
        filled = dict(cells)
        for stack, source in carried.items():
            if stack not in filled and source in cells:
                filled[stack] = {**cells[source], "carried_from": source}
        out[msg] = filled
    return out


def support_table(table: dict[str, Any] | None, carried: Mapping[str, str] | None = None) -> dict[str, Any] | None:
    """The context the `support` macro lays out; None when the run asked no rtnetlink question.
    `carried`: stack -> the variant its rtnetlink checks were carried over from."""
    if not table or not table.get("messages"):
        return None
    messages: dict[str, dict[str, Any]] = with_carried(table["messages"], carried or {})
    kernel_attrs: dict[str, list[str]] = table.get("kernel_attrs", {})
    groups = columns(messages)
    rows = []
    for msg in sorted(messages, key=_row_order):
        kernel = sorted(kernel_attrs.get(msg, []))
        family = family_of(msg)
        rows.append(
            {
                "family": FAMILIES.get(family, family),
                "message": msg,
                "cells": [_cell(_shown(messages[msg], group), kernel) for group in groups],
                "kernel": kernel,
            }
        )
    return {
        "columns": [{"label": _label(g), "stacks": g, "title": ", ".join(g)} for g in groups],
        "rows": rows,
        "stacks": sum(len(g) for g in groups),
    }
