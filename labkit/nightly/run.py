"""`./lab nightly` (`labkit nightly`): the CI workflow's pipeline on one machine.

The same shard definition, the same per-shard command and the same merge as the workflow
(.github/workflows/nightly.yml), so what the nightly does is what runs here: each shard is a
pytest run of its own (`--lab-shard K/N`), one after another or side by side as the cores
allow, then `labkit report --merge` builds one page, keeps the night in the history and says
what is new since the night before.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from labkit.errors import LabError, LabInputError
from labkit.nightly.shards import SHARDS_FILE, Shard, ShardPlan
from reports.history import check_keep
from reports.merge import NOTHING_SELECTED

DEFAULT_ARGS = ("suites", "--stack", "all")
SHARD_TIMEOUT = 90 * 60.0  # the CI job's bound: a shard that runs longer is a hang, and is ended
STOP_GRACE = 60.0  # for an ended shard to stop its workers and sandboxes before it is killed
CHECKS_FAILED = 1  # pytest's exit status when checks failed: the merge's verdict, not a broken shard


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
    with open(log, "wb") if log is not None else contextlib.nullcontext() as out:
        proc = subprocess.Popen(argv, cwd=root, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT if out else None)
        try:
            status = proc.wait(SHARD_TIMEOUT)
        except subprocess.TimeoutExpired:
            # As Ctrl-C would: pytest ends its workers and the lab's janitor stops what they started;
            # past the grace, the run is killed and the next run's reaper takes what is left.
            proc.send_signal(signal.SIGINT)
            try:
                proc.wait(STOP_GRACE)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
            where = f"; its output: {log}" if log else ""
            raise LabError(f"shard {shard.label} ran past {SHARD_TIMEOUT / 60:.0f} min and was ended{where}") from None
    if status not in (0, CHECKS_FAILED, NOTHING_SELECTED) or not results.is_file():
        where = f"; its output: {log}" if log else "; see its output above"
        raise LabError(
            f"shard {shard.label} ended with pytest exit status {status} and {'no ' if not results.is_file() else ''}{results}{where}"
        )
    print(f"nightly: shard {shard.label} done (pytest exit status {status})", flush=True)
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
    check_keep(keep)
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
    jobs = [
        (s, shard_argv(s, out, args, workers, shards_file), out / f"shard-{s.number}.log" if parallel > 1 else None) for s in chosen
    ]
    with ThreadPoolExecutor(parallel) as pool:
        results = list(pool.map(lambda job: run_shard(job[0], job[1], root, job[2]), jobs))
    from labkit.cli import parser
    from labkit.report import main as report

    argv = ["report", "--merge", *map(str, results), "--out", str(out), "--history", str(history), "--keep", str(keep)]
    argv += ["--summary", str(out / "summary.md"), "--fail-on-new"]
    status = report(parser().parse_args(argv))
    print(f"nightly: {len(chosen)} shards merged into {out / 'index.html'}; summary {out / 'summary.md'}; history {history}")
    return status
