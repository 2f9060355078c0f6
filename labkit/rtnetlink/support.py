"""The rtnetlink support table: message type x stack, from the rows the suite's checks write.

Each check adds a row (its message type, the stack, supported / differs / unsupported, the
differences, the attributes each side returned) to a file of its own process; `merge_support`
folds every part into rtnetlink-support.json, which the report shows.
"""

from __future__ import annotations

import json
from pathlib import Path

SUPPORT_FILE = "rtnetlink-support.json"
PARTS = "rtnetlink-support.d"


class SupportTable:
    """Rows from this process's checks, in a file of its own (`RUN-WORKER.jsonl`): a run only
    merges its own parts, so an evidence directory kept across runs does not mix them."""

    def __init__(self, directory: Path, run: str, worker: str) -> None:
        self.path = directory / PARTS / f"{run}-{worker}.jsonl"
        self.rows: list[dict] = []

    def add(self, row: dict) -> None:
        self.rows.append(row)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self.path.open("a") as f:
            f.write(json.dumps(row) + "\n")


def _rows(part: Path):
    for line in part.read_text().splitlines():
        try:
            yield json.loads(line)
        except ValueError:
            continue  # a line another worker is still writing; its own merge will see it whole


def merge_support(directory: Path, run: str) -> Path | None:
    """rtnetlink-support.json: for each message type and stack, the worst status over its checks
    (unsupported > differs > supported), the checks behind it, and the attributes seen."""
    parts = sorted((directory / PARTS).glob(f"{run}-*.jsonl"))
    if not parts:
        return None
    rank = {"supported": 0, "differs": 1, "unsupported": 2}
    table: dict[str, dict[str, dict]] = {}
    kernel_attrs: dict[str, set[str]] = {}
    for part in parts:
        for row in _rows(part):
            cell = table.setdefault(row["message"], {}).setdefault(
                row["stack"], {"status": "supported", "checks": {}, "attrs": set(), "differences": []}
            )
            cell["checks"][row["check"]] = row["status"]
            if rank[row["status"]] > rank[cell["status"]]:
                cell["status"] = row["status"]
            cell["differences"] += row["differences"]
            for names in row["attrs"].values():
                cell["attrs"].update(names)
            for names in row["kernel_attrs"].values():
                kernel_attrs.setdefault(row["message"], set()).update(names)
    out = {
        "run": run,
        "messages": {
            msg: {
                stack: {**cell, "attrs": sorted(cell["attrs"]), "differences": cell["differences"][:20]}
                for stack, cell in sorted(stacks.items())
            }
            for msg, stacks in sorted(table.items())
        },
        "kernel_attrs": {msg: sorted(names) for msg, names in sorted(kernel_attrs.items())},
    }
    path = directory / SUPPORT_FILE
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(out, indent=1))
    tmp.replace(path)
    return path
