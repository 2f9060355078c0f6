"""Per-cell gates: `suites/perf.toml` (beside suites/deviations.toml).

    [[gate]]
    stack = "gvisor*"       # a glob over stack ids, as --stack takes them
    metric = "tcp_tx_1"     # a metric name (labkit.perf.campaign.METRICS), or a glob
    min_ratio = 0.05        # the cell's median over the kernel's, same run, same MTU

The ratio is always "1.0 = as good as Linux, lower = worse": cell/kernel for metrics where
higher is better, kernel/cell for latency (lower is better). The first gate that matches a cell
applies, so put specific entries before broad ones.
"""

from __future__ import annotations

import fnmatch
import tomllib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from labkit.errors import LabInputError

KEYS = ("stack", "metric", "min_ratio", "why")


@dataclass(frozen=True)
class Gate:
    stack: str
    metric: str
    min_ratio: float
    why: str = ""

    def matches(self, stack: str, metric: str) -> bool:
        return fnmatch.fnmatchcase(stack, self.stack) and fnmatch.fnmatchcase(metric, self.metric)


def parse(doc: dict[str, object], where: str, metrics: Iterable[str]) -> list[Gate]:
    """Gates of a parsed perf.toml; bad input raises one line naming the value and what is allowed."""
    known = sorted(metrics)
    extra = sorted(set(doc) - {"gate"})
    if extra:
        raise LabInputError(f"{where}: unknown table {extra[0]!r}; allowed: [[gate]] entries")
    entries = doc.get("gate", [])
    if not isinstance(entries, list):
        raise LabInputError(f"{where}: 'gate' is {type(entries).__name__}; allowed: [[gate]] entries (an array of tables)")
    gates = []
    for n, entry in enumerate(entries, 1):
        at = f"{where} gate #{n}"
        if not isinstance(entry, dict):
            raise LabInputError(f"{at}: {entry!r}; allowed: a table with {', '.join(KEYS[:3])}")
        unknown = sorted(set(entry) - set(KEYS))
        if unknown:
            raise LabInputError(f"{at}: unknown key {unknown[0]!r}; allowed: {', '.join(KEYS)}")
        stack, metric, ratio, why = entry.get("stack"), entry.get("metric"), entry.get("min_ratio"), entry.get("why", "")
        if not isinstance(stack, str) or not stack:
            raise LabInputError(f"{at}: stack = {stack!r}; allowed: a stack id or glob (gvisor-*)")
        if not isinstance(metric, str) or not any(fnmatch.fnmatchcase(m, metric) for m in known):
            raise LabInputError(f"{at}: metric = {metric!r}; allowed: {', '.join(known)}, or a glob over them")
        if isinstance(ratio, bool) or not isinstance(ratio, (int, float)) or not 0 < float(ratio) <= 10:
            raise LabInputError(f"{at}: min_ratio = {ratio!r}; allowed: a number above 0 and at most 10")
        if not isinstance(why, str):
            raise LabInputError(f"{at}: why = {why!r}; allowed: a string")
        gates.append(Gate(stack, metric, float(ratio), why))
    return gates


def load(path: Path, metrics: Iterable[str]) -> list[Gate]:
    """The gates of `path`; a missing file has none."""
    if not path.exists():
        return []
    try:
        doc = tomllib.loads(path.read_text())
    except tomllib.TOMLDecodeError as exc:
        raise LabInputError(f"{path}: not TOML ({exc}); allowed: [[gate]] entries with stack, metric, min_ratio") from None
    return parse(doc, str(path), metrics)


def gate_for(gates: Sequence[Gate], stack: str, metric: str) -> Gate | None:
    """The first gate matching the cell (None: the cell is not gated). A build's cells
    (`gvisor@nightly`) match by the stack id before the '@' as well."""
    base = stack.split("@", 1)[0]
    return next((g for g in gates if g.matches(stack, metric) or g.matches(base, metric)), None)
