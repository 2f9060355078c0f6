#!/usr/bin/env python3
"""Soak: lab runs interrupted at random moments by SIGINT, SIGTERM or SIGKILL leave nothing.

Each of N runs starts a real suite subset (`pytest suites/linkdispatch -n 2 --stack
linux,gvisor,slirp4netns` by default) in a process group of its own, and at a random moment
(uniform in --window, 2-25 s by default) sends it one of:

    sigint-group   SIGINT to the process group (a terminal's Ctrl-C)
    sigint-pid     SIGINT to the pytest process only
    sigterm-pid    SIGTERM to the pytest process (a CI cancel)
    sigterm-group  SIGTERM to the process group
    sigkill-group  SIGKILL to the process group

The signal is chosen uniformly among SIGINT, SIGTERM and SIGKILL, then the target. The seed
(printed, or --seed) fixes every choice and moment, so a failing sequence can be run again.

After each run: the time from the signal to the exit of the pytest process, what the run left
(namespaces `labkit-RUN-...`, processes of the run, /tmp/labkit-RUN-* paths), then `labkit
clean`, then what is left after it. The rules, any break of which makes the exit status 1:

- SIGINT and SIGTERM: the run exits within 10 s of the signal, prints its summary line (once its
  session had started), and leaves nothing even before `labkit clean`;
- every signal: after `labkit clean` (exit status 0) no namespace, process or temp path of the
  run is left, and every process the clean says it killed has been reaped when it returns.

A background job of a non-interactive shell starts with SIGINT ignored, and Python keeps it
ignored: each run is started through a small wrapper that restores SIGINT's default before it
execs pytest, so Ctrl-C is tested even when this script runs in the background.

Run it as root from the checkout with the lab's venv, e.g.

    .tox/tests/bin/python scripts/soak_interrupts.py --runs 20 --json soak.json
    .tox/tests/bin/python scripts/soak_interrupts.py --seed 1234 -- suites/linkdispatch/test_arp.py -n 2 --stack gvisor
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import secrets
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from labkit.lifecycle import owner  # noqa: E402  (the checkout's labkit, also without an install)
from labkit.lifecycle.reaper import run_processes  # noqa: E402

DEFAULT_ARGS = ["suites/linkdispatch", "-n", "2", "--stack", "linux,gvisor,slirp4netns", "-p", "no:cacheprovider"]
EXIT_BOUND = 10.0  # the rule: seconds from SIGINT/SIGTERM to the exit
GIVE_UP = 60.0  # after this, a run that did not exit is SIGKILLed so the soak goes on (and the run fails)
CLEAN_TIMEOUT = 120.0
TARGETS = {"SIGINT": ("group", "pid"), "SIGTERM": ("pid", "group"), "SIGKILL": ("group",)}
STACK_BINARIES = ("runsc", "runsc-sandbox", "runsc-gofer", "exe", "slirp4netns", "passt", "pasta", "passt.avx2", "pasta.avx2")

# Restores SIGINT's default disposition, then becomes pytest (same pid): argv[1:] is `-m pytest ...`.
RESTORE_SIGINT = (
    "import os, signal, sys; signal.signal(signal.SIGINT, signal.SIG_DFL); os.execv(sys.executable, [sys.executable, *sys.argv[1:]])"
)
SUMMARY = re.compile(r"^=+ .* in [\d.]+s(?: \([\d:]+\))? =+$", re.MULTILINE)


@dataclass
class Left:
    namespaces: list[str] = field(default_factory=list)
    processes: dict[int, str] = field(default_factory=dict)
    paths: list[str] = field(default_factory=list)

    def count(self) -> int:
        return len(self.namespaces) + len(self.processes) + len(self.paths)

    def brief(self) -> str:
        stacks = sum(1 for argv in self.processes.values() if _is_stack(argv))
        return f"{len(self.namespaces)} netns, {len(self.processes)} proc ({stacks} stack), {len(self.paths)} path"


@dataclass
class RunResult:
    index: int
    run_id: str
    kind: str
    at: float  # seconds after the start the signal was due
    sent: bool = False  # False: the run had ended before the signal was due
    exit_code: int | None = None
    exit_after: float | None = None  # seconds from the signal to the exit (None: did not exit within GIVE_UP)
    session_started: bool = False
    summary: bool = False
    sigint_ignored: bool | None = None  # SIGINT's disposition in the pytest process, read at the signal
    left_by_run: Left = field(default_factory=Left)
    clean_code: int | None = None
    clean_seconds: float | None = None
    clean_output: str = ""
    left_after_clean: Left = field(default_factory=Left)
    clean_killed: list[int] = field(default_factory=list)  # the processes `labkit clean` says it killed
    unreaped: list[int] = field(default_factory=list)  # killed by the clean, pid still there (a zombie) when it returned
    broken: list[str] = field(default_factory=list)
    log: str = ""

    @property
    def sig(self) -> str:
        return self.kind.split("-")[0].upper()


def _is_stack(argv: str) -> bool:
    name = os.path.basename(argv.split(" ", 1)[0]) if argv else ""
    return name in STACK_BINARIES


def netns_names() -> list[str]:
    out = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, timeout=30).stdout
    return [line.split()[0] for line in out.splitlines() if line.strip()]


def leftovers(run: str) -> Left:
    tag = f"{owner.PREFIX}-{run}-"
    return Left(
        namespaces=[n for n in netns_names() if n.startswith(tag)],
        processes=run_processes(run),
        paths=sorted(str(p) for p in Path(tempfile.gettempdir()).glob(f"{tag}*")),
    )


def sigint_ignored(pid: int) -> bool | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("SigIgn:"):
                return bool(int(line.split()[1], 16) & (1 << (signal.SIGINT - 1)))
    except OSError:
        pass
    return None


def one_run(index: int, kind: str, at: float, args: list[str], out_dir: Path) -> RunResult:
    run_id = secrets.token_hex(4)
    result = RunResult(index, run_id, kind, round(at, 2))
    log = out_dir / f"run-{index:02d}-{kind}-{run_id}.log"
    result.log = str(log)
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    env[owner.ENV_RUN] = run_id  # the run's resources are named labkit-RUN_ID-...: what we look for
    for name in (owner.ENV_OWNER, "PYTEST_XDIST_WORKER", "PYTEST_XDIST_WORKER_COUNT", "PYTEST_ADDOPTS"):
        env.pop(name, None)
    sig_name, target = kind.split("-")
    sig = getattr(signal, sig_name.upper())
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-c", RESTORE_SIGINT, "-m", "pytest", *args],
            cwd=ROOT,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its own process group, as a shell's job has
        )
    began = time.monotonic()
    try:
        proc.wait(at)
    except subprocess.TimeoutExpired:
        result.sigint_ignored = sigint_ignored(proc.pid)
        result.session_started = "test session starts" in log.read_text(errors="replace")
        sent_at = time.monotonic()
        if target == "group":
            os.killpg(proc.pid, sig)
        else:
            os.kill(proc.pid, sig)
        result.sent = True
        try:
            proc.wait(GIVE_UP)
            result.exit_after = round(time.monotonic() - sent_at, 2)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(30)
    else:
        result.exit_after = round(time.monotonic() - began, 2)  # ended on its own before the signal
    result.exit_code = proc.returncode
    text = log.read_text(errors="replace")
    result.session_started = result.session_started or "test session starts" in text
    result.summary = bool(SUMMARY.search(text))
    result.left_by_run = leftovers(run_id)

    t0 = time.monotonic()
    done = subprocess.run(
        [sys.executable, "-m", "labkit", "clean"], cwd=ROOT, capture_output=True, text=True, timeout=CLEAN_TIMEOUT, env=env
    )
    result.clean_seconds = round(time.monotonic() - t0, 2)
    result.clean_code = done.returncode
    result.clean_output = (done.stdout + done.stderr).strip()
    result.left_after_clean = leftovers(run_id)
    # `labkit clean` returns only once what it killed is reaped: no pid it had to kill may linger as a zombie.
    result.clean_killed = [int(ln.split()[1]) for ln in done.stdout.splitlines() if re.match(r"  process \d+$", ln)]
    result.unreaped = [pid for pid in result.clean_killed if Path(f"/proc/{pid}").exists()]
    judge(result)
    return result


def judge(r: RunResult) -> None:
    if r.sent and r.sig in ("SIGINT", "SIGTERM"):
        if r.exit_after is None:
            r.broken.append(f"did not exit within {GIVE_UP:g}s of {r.kind}")
        elif r.exit_after > EXIT_BOUND:
            r.broken.append(f"exited {r.exit_after:.1f}s after {r.kind} (bound {EXIT_BOUND:g}s)")
        if r.session_started and not r.summary:
            r.broken.append("no summary line")
        if r.sigint_ignored and r.sig == "SIGINT":
            r.broken.append("SIGINT was ignored in the pytest process (the soak's wrapper did not restore it)")
    if r.sig in ("SIGINT", "SIGTERM") or not r.sent:
        if r.left_by_run.count():
            r.broken.append(f"the run left {r.left_by_run.brief()}: {_detail(r.left_by_run)}")
    if r.clean_code != 0:
        r.broken.append(f"labkit clean exited {r.clean_code}: {r.clean_output[-300:]}")
    if r.unreaped:
        r.broken.append(f"not reaped when labkit clean returned: {r.unreaped}")
    if r.left_after_clean.count():
        r.broken.append(f"left after labkit clean: {r.left_after_clean.brief()}: {_detail(r.left_after_clean)}")


def _detail(left: Left) -> str:
    procs = [f"{pid} {argv[:80]}" for pid, argv in sorted(left.processes.items())]
    return "; ".join([*left.namespaces, *procs, *left.paths])[:600]


def line(r: RunResult, runs: int) -> str:
    when = f"at {r.at:5.1f}s" if r.sent else f"(ended at {r.exit_after}s, before {r.at:.1f}s)"
    took = "-" if not r.sent else ("no exit" if r.exit_after is None else f"{r.exit_after:.2f}s")
    verdict = "ok" if not r.broken else "BROKEN: " + " | ".join(r.broken)
    return (
        f"run {r.index:2d}/{runs} {r.kind:13s} {when}: exit {r.exit_code} after {took}, summary {'yes' if r.summary else 'no'}; "
        f"left by run {r.left_by_run.brief()}; clean {r.clean_code} in {r.clean_seconds}s, killed {len(r.clean_killed)}; "
        f"after clean {r.left_after_clean.brief()} -- {verdict}"
    )


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--runs", type=int, default=20, help="how many interrupted runs (default 20)")
    p.add_argument("--seed", type=int, help="seed for the signals and moments (default: a new one, printed)")
    p.add_argument("--window", type=float, nargs=2, default=(2.0, 25.0), metavar=("MIN", "MAX"), help="seconds after the start (default 2 25)")
    p.add_argument("--signals", default="SIGINT,SIGTERM,SIGKILL", help="signals to choose from (default SIGINT,SIGTERM,SIGKILL)")
    p.add_argument("--out", type=Path, help="directory for each run's pytest output (default: a new temp dir)")
    p.add_argument("--json", type=Path, help="write a JSON summary here")
    p.add_argument("pytest_args", nargs="*", help=f"pytest arguments after `--` (default: {' '.join(DEFAULT_ARGS)})")
    a = p.parse_args(argv)
    if os.geteuid() != 0:
        print("soak_interrupts: the lab needs root", file=sys.stderr)
        return 2
    signals = [s.strip().upper() for s in a.signals.split(",") if s.strip()]
    bad = [s for s in signals if s not in TARGETS]
    if bad or a.runs < 1 or not 0 <= a.window[0] <= a.window[1]:
        print(f"soak_interrupts: bad --signals {bad} / --runs / --window; allowed: {', '.join(TARGETS)}", file=sys.stderr)
        return 2
    if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:  # started as a background job: be Ctrl-C-able ourselves
        signal.signal(signal.SIGINT, signal.default_int_handler)
    seed = a.seed if a.seed is not None else secrets.randbelow(2**31)
    rng = random.Random(seed)
    args = a.pytest_args or DEFAULT_ARGS
    out_dir = a.out or Path(tempfile.mkdtemp(prefix="soak-interrupts-"))
    out_dir.mkdir(parents=True, exist_ok=True)
    print(f"soak_interrupts: seed {seed}, {a.runs} run(s) of pytest {' '.join(args)}; logs in {out_dir}", flush=True)

    results: list[RunResult] = []
    began = time.monotonic()
    for i in range(1, a.runs + 1):
        sig = rng.choice(signals)
        kind = f"{sig.lower()}-{rng.choice(TARGETS[sig])}"
        at = rng.uniform(*a.window)
        r = one_run(i, kind, at, args, out_dir)
        results.append(r)
        print(line(r, a.runs), flush=True)
    total = time.monotonic() - began

    summary: dict[str, object] = {"seed": seed, "runs": a.runs, "pytest_args": args, "seconds": round(total, 1)}
    per_signal: dict[str, dict[str, object]] = {}
    for sig in signals:
        mine = [r for r in results if r.sig == sig and r.sent]
        times = [r.exit_after for r in mine if r.exit_after is not None]
        per_signal[sig] = {
            "runs": len(mine),
            "max_exit_seconds": max(times) if times else None,
            "broken": sum(1 for r in mine if r.broken),
        }
    broken = [r for r in results if r.broken]
    summary.update(
        per_signal=per_signal,
        ended_before_signal=sum(1 for r in results if not r.sent),
        broken=len(broken),
        left_after_clean=sum(r.left_after_clean.count() for r in results),
    )
    print(f"\nsoak_interrupts: {a.runs} run(s) in {total:.0f}s, seed {seed}")
    for sig, s in per_signal.items():
        worst = "-" if s["max_exit_seconds"] is None else f"{s['max_exit_seconds']}s"
        print(f"  {sig}: {s['runs']} run(s), max exit {worst} after the signal, {s['broken']} broken")
    print(f"  ended before the signal: {summary['ended_before_signal']}; left after labkit clean: {summary['left_after_clean']}")
    print(f"  {'ALL OK' if not broken else f'{len(broken)} run(s) broke the rules: ' + ', '.join(str(r.index) for r in broken)}")
    if a.json:
        a.json.write_text(json.dumps({"summary": summary, "runs": [asdict(r) for r in results]}, indent=2, default=str))
    return 1 if broken else 0


if __name__ == "__main__":
    sys.exit(main())
