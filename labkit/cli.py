"""`labkit`: the lab's command line (doctor, clean, report, flake, shards, nightly, replay)."""

from __future__ import annotations

import argparse
import sys

from labkit.errors import LabError, LabInputError
from labkit.flake import DEFAULT_ARGS as DEFAULT_FLAKE_ARGS


def cmd_doctor(args: argparse.Namespace) -> int:
    from labkit import doctor

    groups = doctor.groups_of(args.groups)
    findings = doctor.examine()
    missing = doctor.apt_packages(findings, groups)
    if args.install and missing:
        print(f"installing: {' '.join(missing)}", flush=True)
        doctor.install(missing)
        findings = doctor.examine()
        missing = doctor.apt_packages(findings, groups)
    if not args.quiet or missing:
        print(doctor.render(findings, groups))
    if missing:
        again = "labkit doctor --install" + "".join(f" --for {g}" for g in groups if g != doctor.LAB)
        print(f"\nto install what is missing: {doctor.APT_INSTALL} {' '.join(missing)}  (or: {again})")
    broken = [f.name for f in findings if f.required and not f.ok]
    if broken:
        print(f"labkit cannot run without: {', '.join(broken)}", file=sys.stderr)
        return 1
    return 0


def cmd_clean(args: argparse.Namespace) -> int:
    from labkit.lifecycle import reaper

    if args.run is not None and not all(c in "0123456789abcdef" for c in args.run):
        raise LabInputError(f"bad run id {args.run!r}: allowed are the hex run ids in lab resource names (labkit-RUN-PID-...)")
    done = reaper.reap(run=args.run)
    print(done.summary())
    # What is still there is named too, and the exit status says so: a script must not take it as clean.
    # It returns once what it killed has been reaped (or the bound ran out: listed as unreaped, dead all the same).
    listed: tuple[tuple[str, list[int] | list[str]], ...] = (
        ("netns", done.namespaces), ("process", done.processes), ("path", done.paths),
        ("survivor", done.survivors), ("refused", done.refused), ("kept netns", done.kept_namespaces),
        ("unreaped", done.unreaped),
    )  # fmt: skip
    for what, items in listed:
        for item in items:
            print(f"  {what} {item}")
    return 1 if done.left else 0


def cmd_report(args: argparse.Namespace) -> int:
    """Rebuild the page from a results.json, or merge shards into one; keep the history, say
    what changed since the previous night, write the summary; with --fail-on-new, the verdict."""
    from labkit import report

    return report.main(args)


def cmd_flake(args: argparse.Namespace) -> int:
    """Run the suites --runs times in random orders and list the checks whose outcome changed."""
    from pathlib import Path

    from labkit import flake

    root = Path(__file__).resolve().parents[1]
    pytest_args = args.pytest_args[1:] if args.pytest_args[:1] == ["--"] else args.pytest_args
    deviations = Path(args.deviations) if args.deviations else root / "suites" / "deviations.toml"
    return flake.main(args.runs, Path(args.out).resolve(), pytest_args, deviations, root)


def cmd_replay(args: argparse.Namespace) -> int:
    """Send a robustness reproducer to a fresh stack and say whether it still breaks it."""
    from pathlib import Path

    from labkit.fuzz.cli import replay_file

    return replay_file(Path(args.pcap), args.stack, args.times)


def cmd_shards(args: argparse.Namespace) -> int:
    """The shard plan: as text, as the workflow's matrix, or weighed from a run's results."""
    from pathlib import Path

    from labkit.nightly import shards

    root = Path(__file__).resolve().parents[1]
    plan = shards.ShardPlan.load(Path(args.file) if args.file else root / shards.SHARDS_FILE)
    if args.weigh:
        from labkit.report import read_json

        data = read_json(Path(args.weigh), "results file")
        seconds = {p.name: 0.0 for p in plan.pieces}
        for r in data.get("results", []):
            owners = plan.owners(r["suite"], r["stack"] or None)
            if len(owners) == 1:
                seconds[owners[0].name] += float(r.get("duration", 0.0))
        for name, value in seconds.items():
            print(f"{name}: weight = {value:.0f}")
        return 0
    planned = plan.shards(args.count)
    print(shards.github_matrix(planned) if args.github_matrix else shards.describe(planned))
    return 0


def cmd_nightly(args: argparse.Namespace) -> int:
    """Every shard on this machine, then the merge, the history and the verdict, as the CI workflow does."""
    from pathlib import Path

    from labkit.nightly import run

    root = Path(__file__).resolve().parents[1]
    pytest_args = args.pytest_args[1:] if args.pytest_args[:1] == ["--"] else args.pytest_args
    return run.main(
        args.shards,
        Path(args.out).resolve(),
        Path(args.history).resolve(),
        args.keep,
        pytest_args,
        root,
        args.parallel,
        Path(args.file).resolve() if args.file else None,
    )


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="labkit", description="packet-level conformance lab for sandboxed network stacks")
    sub = p.add_subparsers(dest="command", required=True)
    d = sub.add_parser("doctor", help="which stacks and tools are installed, and how to install the rest")
    d.add_argument("--install", action="store_true", help="install what is missing with apt-get (root)")
    d.add_argument("--quiet", action="store_true", help="print only when something is missing")
    d.add_argument(
        "--for",
        dest="groups",
        action="append",
        default=[],
        metavar="GROUP",
        help="also look after the tools of this group: tests (the browser labkit's own tests open the report in)",
    )
    d.set_defaults(func=cmd_doctor)
    c = sub.add_parser("clean", help="remove namespaces, processes and files left by dead lab runs")
    c.add_argument("--run", help="also remove everything of this run id, even if its owner still runs")
    c.set_defaults(func=cmd_clean)
    f = sub.add_parser("flake", help="run the suites several times in random orders; list every check whose outcome differed")
    f.add_argument("--runs", type=int, default=3, help="how many runs (default 3)")
    f.add_argument("--out", default="reports/flake", help="where each run's report and flake.json go (default reports/flake)")
    f.add_argument(
        "--deviations", help="the manifest that says which deviations are load-dependent (default suites/deviations.toml)"
    )
    f.add_argument(
        "pytest_args", nargs=argparse.REMAINDER, help=f"after --: pytest arguments (default: {' '.join(DEFAULT_FLAKE_ARGS)})"
    )
    f.set_defaults(func=cmd_flake)
    s = sub.add_parser("shards", help="the nightly's shard plan (.ci/shards.toml packed into --count shards)")
    s.add_argument("--count", type=int, default=3, help="how many shards (default 3)")
    s.add_argument("--github-matrix", action="store_true", help="print the plan as a GitHub Actions matrix (one line of JSON)")
    s.add_argument("--file", help="the shard definition (default .ci/shards.toml)")
    s.add_argument("--weigh", metavar="RESULTS", help="print each piece's check-seconds in a run's results.json (its weight)")
    s.set_defaults(func=cmd_shards)
    n = sub.add_parser("nightly", help="run every shard here, merge them, keep the history, fail on what is new")
    n.add_argument("--shards", type=int, default=3, help="how many shards (default 3)")
    n.add_argument("--parallel", type=int, default=0, help="shards run side by side (default: one per two cores)")
    n.add_argument("--out", default="reports/nightly", help="where the shards' and the merged report go (default reports/nightly)")
    n.add_argument("--history", default="reports/history", help="the nights kept (default reports/history)")
    n.add_argument("--keep", type=int, default=30, help="nights kept (default 30)")
    n.add_argument("--file", help="the shard definition (default .ci/shards.toml)")
    n.add_argument("pytest_args", nargs=argparse.REMAINDER, help="after --: pytest arguments (default: suites --stack all)")
    n.set_defaults(func=cmd_nightly)
    rp = sub.add_parser(
        "replay", help="send a robustness reproducer (a pcap) to a fresh stack; exit 1 when it still breaks the stack"
    )
    rp.add_argument("pcap", help="the reproducer: <stack>.reproducer.pcap of a robustness finding, or any Ethernet pcap")
    rp.add_argument("--stack", required=True, help="the stack to send it to (a stack id, as --stack takes it: linux, gvisor-ch4)")
    rp.add_argument("--times", type=int, default=1, help="replay it on this many fresh stacks (default 1; at most 20)")
    rp.set_defaults(func=cmd_replay)
    r = sub.add_parser(
        "report", help="rebuild the HTML report from results.json, or merge shards' (--merge); history, summary, verdict"
    )
    r.add_argument("results", nargs="+", help="results.json of a conformance run (with --merge: one per shard)")
    r.add_argument(
        "--merge", action="store_true", help="merge the shards' results.json into one (a cell reported twice is refused)"
    )
    r.add_argument("--previous", help="results.json of an earlier run to compare with (default: the newest night in --history)")
    r.add_argument("--out", help="where results.json (when merged) and index.html go (default: next to the results.json)")
    r.add_argument(
        "--history", metavar="DIR", help="keep this run in DIR (the last --keep nights) and draw trends and flaky checks"
    )
    r.add_argument("--keep", type=int, default=30, help="nights kept in --history (default 30)")
    r.add_argument("--benchmarks", metavar="FILE", help="benchmarks.json of the perf job (./lab bench) to show with the run")
    r.add_argument("--summary", metavar="FILE", help="write a short markdown summary there (a CI job summary)")
    r.add_argument("--page-url", default="", help="where the page is published, for the summary's links (default: relative)")
    r.add_argument(
        "--deviations", help="the manifest that says which deviations are load-dependent (default suites/deviations.toml)"
    )
    r.add_argument("--fail-on-new", action="store_true", help="exit 1 on new failures and unexpected passes (strict entries) only")
    r.set_defaults(func=cmd_report)
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        return args.func(args)
    except LabInputError as exc:
        print(f"labkit: {exc}", file=sys.stderr)
        return exc.exit_code
    except LabError as exc:
        print(f"labkit: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
