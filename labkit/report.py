"""`labkit report`: the page from results.json, shards merged, the history kept, the verdict.

The same steps whatever produced the results (one run, shards of one machine from
`./lab nightly`, shards of many from the CI workflow), so the pipeline's logic is what the
tests here run.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from labkit.errors import LabError, LabInputError
from labkit.manifest import Manifest

DEFAULT_MANIFEST = Path(__file__).resolve().parents[1] / "suites" / "deviations.toml"


def load_dependent_of(path: Path | None) -> Callable[[str, str], bool]:
    """The manifest's answer to whether a cell's deviation is `strict = false` (Manifest.load_dependent)."""
    manifest = Manifest.load(path) if path is not None and path.exists() else Manifest.empty()
    return manifest.load_dependent


def read_json(path: Path, what: str) -> Any:
    if not path.is_file():
        raise LabInputError(f"{what} {path}: not found; allowed: {_ALLOWED[what]}")
    try:
        return json.loads(path.read_text())
    except ValueError as exc:
        raise LabInputError(f"{what} {path}: not JSON ({exc}); allowed: {_ALLOWED[what]}") from None


_ALLOWED = {
    "results file": "a results.json written by a conformance run",
    "previous results": "a results.json written by a conformance run",
    "benchmarks file": "a benchmarks.json written by ./lab bench",
}


def main(args: argparse.Namespace) -> int:
    try:
        from reports import history, html, merge, summary
        from reports.results import RESULTS_FILE
    except ImportError as exc:  # name what is missing: the builder itself, or one of its libraries (jinja2)
        raise LabError(
            f"the report builder cannot be loaded: {exc}; install labkit with its dependencies (pip install -e .)"
        ) from None
    paths = [Path(p) for p in args.results]
    if len(paths) > 1 and not args.merge:
        raise LabInputError(
            f"{len(paths)} results files given without --merge; allowed: one results.json, or --merge with one per shard"
        )
    history.check_keep(args.keep)
    out_dir = Path(args.out) if args.out else paths[0].parent
    # Every input is read and checked before anything is written: a refusal leaves nothing behind.
    shards = merge.read_shards(paths) if args.merge else None
    previous = read_json(Path(args.previous), "previous results") if args.previous else None
    benchmarks = read_json(Path(args.benchmarks), "benchmarks file") if args.benchmarks else None
    deviations = Path(args.deviations) if args.deviations else DEFAULT_MANIFEST
    load_dependent = load_dependent_of(deviations)
    if args.history:
        history.load(Path(args.history))  # a broken night is refused here, not after the merge
    if shards is not None:
        data = merge.merge(shards, out_dir)
    else:
        data = read_json(paths[0], "results file")
    if benchmarks is not None:
        data["benchmarks"] = benchmarks
        written = dt.datetime.fromtimestamp(Path(args.benchmarks).stat().st_mtime, dt.UTC)
        data["run"]["benchmarks date"] = written.isoformat(timespec="seconds")
    out_dir.mkdir(parents=True, exist_ok=True)
    if args.history:
        night_before = history.attach(data, Path(args.history), args.keep, load_dependent)
        previous = previous if previous is not None else night_before
    written = args.merge or args.history or args.benchmarks
    if written:
        (out_dir / RESULTS_FILE).write_text(json.dumps(data, indent=1))
    page = html.write_page(out_dir, data, previous)
    print(f"wrote {page}" + (f" and {out_dir / RESULTS_FILE}" if written else ""))
    if previous is not None:
        for title, items in html.changes(data, previous).items():
            print(f"{title}: {len(items)}")
            for item in items[:20]:
                was = "new check" if item["was"] is None else f"was {item['was']}"
                print(f"  {item['check']} on {item['stack'] or '-'} ({was})")
    if args.summary:
        Path(args.summary).write_text(summary.markdown(data, previous, load_dependent, args.page_url))
        print(f"wrote {args.summary}")
    if args.fail_on_new:
        bad = summary.verdict(data, previous, load_dependent)
        if any(bad.values()):
            print("labkit report: the nightly fails: " + ", ".join(f"{len(v)} {k}" for k, v in bad.items() if v))
            return 1
    return 0
