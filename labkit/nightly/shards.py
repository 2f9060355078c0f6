"""The shard definition: which stacks and suites each machine of the nightly runs.

`.ci/shards.toml` cuts the conformance matrix into pieces, each a set of stack drivers times a
set of suites with its measured cost (check-seconds), and `--lab-shard K/N` packs the pieces
into N shards of about equal cost and runs the K-th. Pieces split by driver, never by variant:
a variant's verdict may be carried over from another variant of its driver (the variant rule,
labkit.pytest_plugin.matrix), and both must run on the same machine. Every check of a run
belongs to exactly one piece, so merged shards fill each cell once; a check that runs on no
stack (the kernel's own fanout, the launcher's option rules) goes to the piece marked
`stackless` for its suite.

    [[piece]]
    name = "gvisor-transport"
    stacks = ["gvisor-*"]
    suites = ["transport"]
    weight = 240
"""

from __future__ import annotations

import json
import re
import tomllib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from labkit.errors import LabInputError
from labkit.manifest import stack_matches

SHARDS_FILE = ".ci/shards.toml"
DRIVER_GLOB = re.compile(r"^(\*|[A-Za-z0-9_.]+-\*)(@[A-Za-z0-9_.+-]+)?$")
KEYS = {"name", "stacks", "suites", "weight"}
OPTIONAL = {"stackless"}


@dataclass(frozen=True)
class Piece:
    name: str
    stacks: tuple[str, ...]
    suites: tuple[str, ...]
    weight: float
    stackless: bool = False

    def claims(self, suite: str, stack_id: str | None) -> bool:
        """Whether a check of `suite` on `stack_id` (None: it runs on no stack) is this piece's."""
        if suite not in self.suites:
            return False
        if stack_id is None:
            return self.stackless
        return any(stack_matches(stack_id, p) for p in self.stacks)  # "gvisor-*" claims gvisor@nightly too


@dataclass(frozen=True)
class Shard:
    number: int  # 1-based
    count: int
    pieces: tuple[Piece, ...]

    @property
    def label(self) -> str:
        return f"{self.number}/{self.count}"

    @property
    def name(self) -> str:
        return "+".join(p.name for p in self.pieces) or "empty"

    @property
    def weight(self) -> float:
        return sum(p.weight for p in self.pieces)

    def claims(self, suite: str, stack_id: str | None) -> bool:
        return any(p.claims(suite, stack_id) for p in self.pieces)


@dataclass(frozen=True)
class ShardPlan:
    path: Path
    pieces: tuple[Piece, ...]

    @classmethod
    def load(cls, path: Path) -> ShardPlan:
        try:
            data = tomllib.loads(Path(path).read_text())
        except OSError as exc:
            raise LabInputError(f"shard definition {path}: {exc.strerror}; allowed: a TOML file of [[piece]] entries") from None
        except tomllib.TOMLDecodeError as exc:
            raise LabInputError(f"shard definition {path}: not TOML ({exc}); allowed: a TOML file of [[piece]] entries") from None
        raw = data.get("piece")
        if not isinstance(raw, list) or not raw:
            raise LabInputError(f"shard definition {path}: no [[piece]] entries; allowed: one or more [[piece]] tables")
        pieces = tuple(_piece(path, n, entry) for n, entry in enumerate(raw, 1))
        names = [p.name for p in pieces]
        if len(set(names)) < len(names):
            twice = next(n for n in names if names.count(n) > 1)
            raise LabInputError(f"shard definition {path}: piece {twice!r} is named twice; allowed: a name per piece")
        return cls(Path(path), pieces)

    def shards(self, count: int) -> list[Shard]:
        """The pieces packed into `count` shards, heaviest first onto the lightest shard, so the
        slowest machine finishes as early as it can; the same file always gives the same plan."""
        if not 1 <= count <= len(self.pieces):
            raise LabInputError(
                f"shard count {count}: the shard definition {self.path} has {len(self.pieces)} pieces; "
                f"allowed: 1 to {len(self.pieces)}"
            )
        bins: list[list[Piece]] = [[] for _ in range(count)]
        for piece in sorted(self.pieces, key=lambda p: (-p.weight, p.name)):
            lightest = min(range(count), key=lambda i: (sum(p.weight for p in bins[i]), i))
            bins[lightest].append(piece)
        return [Shard(i + 1, count, tuple(b)) for i, b in enumerate(bins)]

    def select(self, label: str) -> Shard:
        """`K/N`: the K-th of N shards."""
        match = re.fullmatch(r"(\d+)/(\d+)", label.strip())
        if match is None or not 1 <= int(match[1]) <= int(match[2]):
            raise LabInputError(f"--lab-shard {label!r}: allowed: K/N with 1 <= K <= N (the K-th of N shards of {self.path})")
        return self.shards(int(match[2]))[int(match[1]) - 1]

    def owners(self, suite: str, stack_id: str | None) -> list[Piece]:
        return [p for p in self.pieces if p.claims(suite, stack_id)]


def _piece(path: Path, n: int, entry: object) -> Piece:
    where = f"shard definition {path}, piece {n}"
    if not isinstance(entry, dict):
        raise LabInputError(f"{where}: not a table; allowed: [[piece]] with {', '.join(sorted(KEYS))}")
    missing, unknown = KEYS - set(entry), set(entry) - KEYS - OPTIONAL
    if missing or unknown:
        what = f"missing {sorted(missing)[0]!r}" if missing else f"unknown key {sorted(unknown)[0]!r}"
        raise LabInputError(f"{where}: {what}; allowed keys: {', '.join(sorted(KEYS | OPTIONAL))}")
    stacks, suites, weight = entry["stacks"], entry["suites"], entry["weight"]
    if not isinstance(entry["name"], str) or not re.fullmatch(r"[A-Za-z0-9_.-]+", entry["name"]):
        raise LabInputError(f"{where}: name {entry['name']!r}; allowed: letters, digits, '.', '_' and '-'")
    if not _strings(stacks) or not all(DRIVER_GLOB.match(s) for s in stacks):
        raise LabInputError(
            f"{where}: stacks {stacks!r}; allowed: a list of whole drivers ('gvisor-*', '*', 'gvisor-*@BUILD'): "
            "a variant's verdict may be carried from another variant of its driver, so they stay together"
        )
    if not _strings(suites):
        raise LabInputError(f"{where}: suites {suites!r}; allowed: a list of suite folder names under suites/")
    if isinstance(weight, bool) or not isinstance(weight, int | float) or weight < 0:
        raise LabInputError(f"{where}: weight {weight!r}; allowed: the piece's measured check-seconds, a number >= 0")
    stackless = entry.get("stackless", False)
    if not isinstance(stackless, bool):
        raise LabInputError(f"{where}: stackless {stackless!r}; allowed: true or false")
    return Piece(entry["name"], tuple(stacks), tuple(suites), float(weight), stackless)


def _strings(value: object) -> bool:
    return isinstance(value, list) and bool(value) and all(isinstance(v, str) and v for v in value)


def unclaimed_or_twice(plan: ShardPlan, cells: Iterable[tuple[str, str | None]]) -> list[str]:
    """The (suite, stack) cells of a run that no piece or more than one piece claims, described."""
    problems = []
    for suite, stack in sorted(set(cells), key=lambda c: (c[0], c[1] or "")):
        owners = plan.owners(suite, stack)
        if len(owners) != 1:
            what = f"suite {suite!r} on {stack or 'no stack'}"
            problems.append(f"{what} is in {'no piece' if not owners else 'pieces ' + ', '.join(p.name for p in owners)}")
    return problems


def github_matrix(shards: Sequence[Shard]) -> str:
    """The plan as the workflow's `strategy.matrix` (one line of JSON for `fromJSON`)."""
    return json.dumps(
        {
            "include": [
                {
                    "shard": s.label,
                    "index": s.number,
                    "name": s.name,
                    "stacks": " ".join(sorted({x for p in s.pieces for x in p.stacks})),
                    "suites": " ".join(sorted({x for p in s.pieces for x in p.suites})),
                }
                for s in shards
            ]
        },
        separators=(",", ":"),
    )


def describe(shards: Sequence[Shard]) -> str:
    lines = []
    for s in shards:
        lines.append(f"shard {s.label}: ~{s.weight:.0f} check-s: " + "; ".join(
            f"{p.name} ({' '.join(p.stacks)} x {' '.join(p.suites)})" for p in s.pieces
        ))  # fmt: skip
    return "\n".join(lines)
