"""`labkit`: the lab's command line (doctor, clean, report, flake)."""

from __future__ import annotations

import argparse
import sys

from labkit.errors import LabError, LabInputError
from labkit.flake import DEFAULT_ARGS as DEFAULT_FLAKE_ARGS


def cmd_doctor(args: argparse.Namespace) -> int:
    from labkit import doctor

    findings = doctor.examine()
    missing = doctor.apt_packages(findings)
    if args.install and missing:
        print(f"installing: {' '.join(missing)}", flush=True)
        doctor.install(missing)
        findings = doctor.examine()
        missing = doctor.apt_packages(findings)
    if not args.quiet or missing:
        print(doctor.render(findings))
    if missing:
        print(f"\nto install what is missing: {doctor.APT_INSTALL} {' '.join(missing)}  (or: labkit doctor --install)")
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
    """Rebuild index.html from a results.json, and say what changed since a previous one."""
    from pathlib import Path

    try:
        from reports import html
    except ImportError as exc:  # name what is missing: the builder itself, or one of its libraries (jinja2)
        raise LabError(f"the report builder cannot be loaded: {exc}; install labkit with its dependencies (pip install -e .)") from None
    paths = [Path(args.results)] + ([Path(args.previous)] if args.previous else [])
    for path in paths:
        if not path.is_file():
            raise LabInputError(f"results file {path}: not found; allowed: a results.json written by a conformance run")
    try:
        data = html.load(paths[0])
        previous = html.load(paths[1]) if args.previous else None
    except ValueError as exc:
        raise LabInputError(f"results file: not JSON ({exc}); allowed: a results.json written by a conformance run") from None
    out_dir = Path(args.out) if args.out else paths[0].parent
    out_dir.mkdir(parents=True, exist_ok=True)
    page = html.write_page(out_dir, data, previous)
    print(f"wrote {page}")
    if previous is not None:
        for title, items in html.changes(data, previous).items():
            print(f"{title}: {len(items)}")
            for item in items[:20]:
                was = "new check" if item["was"] is None else f"was {item['was']}"
                print(f"  {item['check']} on {item['stack'] or '-'} ({was})")
    return 0


def cmd_flake(args: argparse.Namespace) -> int:
    """Run the suites --runs times in random orders and list the checks whose outcome changed."""
    from pathlib import Path

    from labkit import flake

    root = Path(__file__).resolve().parents[1]
    pytest_args = args.pytest_args[1:] if args.pytest_args[:1] == ["--"] else args.pytest_args
    deviations = Path(args.deviations) if args.deviations else root / "suites" / "deviations.toml"
    return flake.main(args.runs, Path(args.out).resolve(), pytest_args, deviations, root)


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="labkit", description="packet-level conformance lab for sandboxed network stacks")
    sub = p.add_subparsers(dest="command", required=True)
    d = sub.add_parser("doctor", help="which stacks and tools are installed, and how to install the rest")
    d.add_argument("--install", action="store_true", help="install what is missing with apt-get (root)")
    d.add_argument("--quiet", action="store_true", help="print only when something is missing")
    d.set_defaults(func=cmd_doctor)
    c = sub.add_parser("clean", help="remove namespaces, processes and files left by dead lab runs")
    c.add_argument("--run", help="also remove everything of this run id, even if its owner still runs")
    c.set_defaults(func=cmd_clean)
    f = sub.add_parser(
        "flake", help="run the suites several times in random orders; list every check whose outcome differed"
    )
    f.add_argument("--runs", type=int, default=3, help="how many runs (default 3)")
    f.add_argument("--out", default="reports/flake", help="where each run's report and flake.json go (default reports/flake)")
    f.add_argument("--deviations", help="the manifest that says which deviations are load-dependent (default suites/deviations.toml)")
    f.add_argument(
        "pytest_args", nargs=argparse.REMAINDER, help=f"after --: pytest arguments (default: {' '.join(DEFAULT_FLAKE_ARGS)})"
    )
    f.set_defaults(func=cmd_flake)
    r = sub.add_parser("report", help="rebuild the HTML report from results.json; with --previous, what changed")
    r.add_argument("results", help="results.json of a conformance run")
    r.add_argument("--previous", help="results.json of an earlier run to compare with")
    r.add_argument("--out", help="where index.html goes (default: next to results.json)")
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
