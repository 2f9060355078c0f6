"""Run the benchmarks and print the figures: python -m benchmarks [--json PATH] [--page-results RESULTS_JSON]."""

from __future__ import annotations

import argparse
import json
import os
import sys
from dataclasses import asdict
from pathlib import Path

from . import bench_burst, bench_gvisor, bench_inject, bench_report, bench_topology


def main() -> int:
    p = argparse.ArgumentParser(prog="benchmarks")
    p.add_argument("--json", help="also write the figures here (the report reads them)")
    p.add_argument(
        "--page-results",
        type=Path,
        help="the results.json whose report page bench_report opens in Chromium (default: reports/out/results.json)",
    )
    args = p.parse_args()
    figures = bench_topology.run() + bench_inject.run() + bench_gvisor.run() + bench_burst.run()
    figures += bench_report.run(args.page_results)
    for f in figures:
        print(f.line())
    if args.json:
        os.makedirs(os.path.dirname(os.path.abspath(args.json)), exist_ok=True)
        with open(args.json, "w") as fh:
            json.dump([asdict(f) for f in figures], fh, indent=2)
    return 0 if all(f.met is not False for f in figures) else 1


if __name__ == "__main__":
    sys.exit(main())
