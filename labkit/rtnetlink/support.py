"""The rtnetlink support table: message type x stack, from the rows the suite's checks note.

Each check adds a row (its message type, the stack, supported / differs / unsupported, the
differences, the attributes each side returned) to the rows of its process; the pytest plugin
(labkit.pytest_plugin.rtnetlink) gathers every process's rows where the run ends, and `merge`
folds them into the table the report shows.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path
from typing import Any

SUPPORT_FILE = "rtnetlink-support.json"
RANK = {"supported": 0, "differs": 1, "unsupported": 2}  # a cell shows the worst of its checks


def merge(rows: Iterable[dict[str, Any]]) -> dict[str, Any]:
    """For each message type and stack: the worst status over its checks (unsupported >
    differs > supported), the checks behind it, and the attributes seen; and the attributes
    the kernel returned, which is what a stack's are read against."""
    table: dict[str, dict[str, dict]] = {}
    kernel_attrs: dict[str, set[str]] = {}
    for row in rows:
        cell = table.setdefault(row["message"], {}).setdefault(
            row["stack"], {"status": "supported", "checks": {}, "attrs": set(), "differences": []}
        )
        cell["checks"][row["check"]] = row["status"]
        if RANK[row["status"]] > RANK[cell["status"]]:
            cell["status"] = row["status"]
        cell["differences"] += row["differences"]
        for names in row["attrs"].values():
            cell["attrs"].update(names)
        for names in row["kernel_attrs"].values():
            kernel_attrs.setdefault(row["message"], set()).update(names)
    return {
        "messages": {
            msg: {
                stack: {**cell, "attrs": sorted(cell["attrs"]), "differences": cell["differences"][:20]}
                for stack, cell in sorted(stacks.items())
            }
            for msg, stacks in sorted(table.items())
        },
        "kernel_attrs": {msg: sorted(names) for msg, names in sorted(kernel_attrs.items())},
    }


def write(directory: Path, table: dict[str, Any]) -> Path:
    """rtnetlink-support.json in `directory`, replaced whole (a reader never sees half of it)."""
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / SUPPORT_FILE
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(table, indent=1))
    tmp.replace(path)
    return path
