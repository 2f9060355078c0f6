"""`./lab nightly` (`labkit nightly`): the CI workflow's pipeline on one machine.

The same shard definition, the same per-shard command and the same merge as the workflow
(.github/workflows/nightly.yml), so what the nightly does is what runs here: each shard is a
pytest run of its own (`--lab-shard K/N`), one after another or side by side as the cores
allow, then `labkit report --merge` builds one page, keeps the night in the history and says
what is new since the night before.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from labkit.errors import LabError, LabInputError
from labkit.nightly.shards import SHARDS_FILE, Shard, ShardPlan

DEFAULT_ARGS = ("suites", "--stack", "all")
SHARD_TIMEOUT = 90 * 60.0  # the CI job's bound: a shard that runs longer is a hang, and is ended
CHECKS_FAILED = 1  # pytest's exit status when checks failed: the merge's verdict, not a broken shard
NOTHING_SELECTED = 5  # a shard whose pieces the run's selection left empty (a narrowed nightly)


def shard_argv(shard: Shard, out: Path, pytest_args: Sequence[str], workers: int, shards_file: Path) -> list[str]:
    """The pytest command of one shard: the conformance command with its shard and its own report."""
    here = out / f"shard-{shard.number}"
    argv = [sys.executable, "-m", "pytest", *pytest_args]
    if not any(a == "-n" or a.startswith(("-n", "--numprocesses")) for a in pytest_args):
        argv += ["-n", str(workers)]
    return [
        *argv,
        "--lab-shard",
        shard.label,
        "--lab-shards",
        str(shards_file),
        "--lab-report",
        str(here),
        "--lab-evidence",
        str(here / "evidence"),
        "--junitxml",
        str(here / "junit.xml"),
    ]


def run_shard(shard: Shard, argv: list[str], root: Path, log: Path | None) -> Path:
    """One shard's run; its results.json, or an error naming the shard and what it printed."""
    results = Path(argv[argv.index("--lab-report") + 1]) / "results.json"
    results.unlink(missing_ok=True)
    results.parent.mkdir(parents=True, exist_ok=True)
    print(f"nightly: shard {shard.label} ({shard.name}): {' '.join(argv[3:])}", flush=True)
    try:
        if log is None:
            done = subprocess.run(argv, cwd=root, stdin=subprocess.DEVNULL, timeout=SHARD_TIMEOUT)
        else:
            with open(log, "wb") as out:
                done = subprocess.run(
                    argv, cwd=root, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT, timeout=SHARD_TIMEOUT
                )
    except subprocess.TimeoutExpired:
        raise LabError(
            f"shard {shard.label} ran past {SHARD_TIMEOUT / 60:.0f} min and was ended" + (f"; its output: {log}" if log else "")
        ) from None
    if done.returncode not in (0, CHECKS_FAILED, NOTHING_SELECTED) or not results.is_file():
        where = f"; its output: {log}" if log else "; see its output above"
        raise LabError(
            f"shard {shard.label} ended with pytest exit status {done.returncode} and {'no ' if not results.is_file() else ''}{results}{where}"
        )
    print(f"nightly: shard {shard.label} done (pytest exit status {done.returncode})", flush=True)
    return results


def main(
    shards: int,
    out: Path,
    history: Path,
    keep: int,
    pytest_args: Sequence[str],
    root: Path,
    parallel: int = 0,
    shards_file: Path | None = None,
) -> int:
    shards_file = shards_file or root / SHARDS_FILE
    plan = ShardPlan.load(shards_file)
    chosen = plan.shards(shards)
    cpus = os.cpu_count() or 1
    parallel = parallel or max(1, min(shards, cpus // 2))
    if not 1 <= parallel <= shards:
        raise LabInputError(f"--parallel {parallel}: allowed: 1 to the number of shards ({shards})")
    workers = max(1, cpus // parallel)
    out.mkdir(parents=True, exist_ok=True)
    args = list(pytest_args) or list(DEFAULT_ARGS)
    jobs = [(s, shard_argv(s, out, args, workers, shards_file), out / f"shard-{s.number}.log" if parallel > 1 else None) for s in chosen]
    with ThreadPoolExecutor(parallel) as pool:
        results = list(pool.map(lambda job: run_shard(job[0], job[1], root, job[2]), jobs))
    from labkit.cli import parser
    from labkit.report import main as report

    argv = ["report", "--merge", *map(str, results), "--out", str(out), "--history", str(history), "--keep", str(keep)]
    argv += ["--summary", str(out / "summary.md"), "--fail-on-new"]
    status = report(parser().parse_args(argv))
    print(f"nightly: {len(chosen)} shards merged into {out / 'index.html'}; summary {out / 'summary.md'}; history {history}")
    return status
