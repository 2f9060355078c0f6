"""The pytest side of labkit: which stacks a check runs on, with what, and what is kept.

Hooks stay small; the work lives in `labkit` and in the sibling modules here.
"""

from __future__ import annotations

import json
import os
from collections import defaultdict
from collections.abc import Generator
from pathlib import Path

import pytest

from labkit.errors import LabInputError
from labkit.lifecycle import janitor, owner, reaper
from labkit.manifest import Deviation, stack_matches
from labkit.nightly.shards import unclaimed_or_twice
from labkit.pytest_plugin import order
from labkit.pytest_plugin.matrix import MARKER, check_axes, known_axes, plan_cells
from labkit.pytest_plugin.options import LabSettings, add_options, read_settings
from labkit.stacks import StackSpec, known_drivers
from labkit.testbed import Layout, Testbed, isolation, standard_layout
from labkit.testbed.evidence import EvidenceStore

SETTINGS = pytest.StashKey[LabSettings]()
CALL_REPORT = pytest.StashKey[pytest.TestReport]()
TESTBED = pytest.StashKey[Testbed]()
DEVIATION = pytest.StashKey[Deviation]()  # the manifest entry that makes the cell a known deviation
REAPED = pytest.StashKey[reaper.Reaped]()


def pytest_addoption(parser: pytest.Parser) -> None:
    add_options(parser)


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "stacks(*patterns): run this check only on stacks whose id matches a pattern")
    config.addinivalue_line("markers", "needs(*capabilities): skip on stacks that lack one of these capabilities")
    config.addinivalue_line("markers", "fresh: this check needs a newly started stack: never a reused testbed")
    config.addinivalue_line(
        "markers",
        f"changes(*what): this check changes the stack ({', '.join(isolation.CHANGES)}): the pool never hands its testbed on",
    )
    config.addinivalue_line("markers", "layout(fn): fn(plan) -> (topology, stack end, wire end) replaces the standard topology")
    config.addinivalue_line(
        "markers",
        "varies_with(*axes): the variant options (channels, gso, tx_checksum, ...) this check's outcome depends on; "
        "it runs on one variant per distinct value of them (--full-matrix: on all)",
    )
    try:
        config.stash[SETTINGS] = read_settings(config)
    except LabInputError as exc:
        pytest.exit(f"labkit: {exc}", returncode=exc.exit_code)
    janitor.install_interrupt_handlers()
    owner.run_id()  # fixed before xdist starts workers, which inherit it through the environment
    if not hasattr(config, "workerinput"):  # the controller (or a plain run) cleans up dead runs
        config.stash[REAPED] = reaper.reap()
        report_dir = config.getoption("lab_report")
        if report_dir:  # the controller sees every check's reports, also under xdist
            from labkit.pytest_plugin.results import ResultsCollector

            previous = config.getoption("lab_previous")
            if previous:
                try:
                    json.loads(Path(previous).read_text())
                except (OSError, ValueError) as exc:
                    pytest.exit(
                        f"labkit: --lab-previous {previous}: {exc}; allowed: a results.json of an earlier run", returncode=2
                    )
            collector = ResultsCollector(Path(report_dir).resolve(), Path(previous) if previous else None)
            config.pluginmanager.register(collector, "labkit-results")


def pytest_unconfigure(config: pytest.Config) -> None:
    janitor.close_all()
    if not hasattr(config, "workerinput"):
        reaper.reap()  # backstop for workers that died; live owners are never touched


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "stack_spec" not in metafunc.fixturenames:
        return
    specs = list(metafunc.config.stash[SETTINGS].specs)
    marker = metafunc.definition.get_closest_marker("stacks")
    if marker is not None:
        specs = [s for s in specs if any(stack_matches(s.id, p) for p in marker.args)]
    # Session scope makes pytest run a stack's checks one after another, so a started sandbox
    # serves them all (see labkit.testbed.pool).
    metafunc.parametrize("stack_spec", specs, ids=[s.id for s in specs], scope="session")


def check_id(item: pytest.Item) -> str:
    """The test id the manifest uses: relative to suites/, the stack parameter left out.

    Other parameters stay, in brackets (`linkdispatch/test_udp.py::test_datagram[ipv6]`).
    """
    base = item.nodeid.split("[", 1)[0]
    base = base.split("suites/", 1)[1] if base.startswith("suites/") else base
    callspec = getattr(item, "callspec", None)
    if callspec is None:
        return base
    spec = callspec.params.get("stack_spec")
    rest = callspec.id
    if isinstance(spec, StackSpec):
        for form in (f"{spec.id}-", f"-{spec.id}", spec.id):
            if form in rest:
                rest = rest.replace(form, "", 1)
                break
    return f"{base}[{rest}]" if rest else base


@pytest.hookimpl(trylast=True)  # after -k, -m, --deselect and --lf chose the checks: then group what is left
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    settings = config.stash[SETTINGS]
    for item in items:
        spec = _spec(item)
        item.user_properties.append(("check", check_id(item)))  # for the report (labkit/pytest_plugin/results.py)
        if spec is None:
            continue
        item.user_properties.append(("stack", spec.id))
        deviation = settings.manifest.lookup(spec.id, check_id(item))
        if deviation is not None:
            item.add_marker(pytest.mark.xfail(reason=f"known deviation: {deviation.reason}", strict=deviation.strict))
            item.stash[DEVIATION] = deviation
            item.user_properties.append(("deviation", deviation.reason))
            item.user_properties.append(("manifest entry", deviation.entry))
    if settings.shard is not None:
        _keep_shard(config, items)
    runs = _runs_by_check(items)
    try:
        axes = {check: _axes(group[0]) for check, group in runs.items()}  # a typo stops the run, --full-matrix or not
        for item in items:
            for marker in item.iter_markers("changes"):
                isolation.declared(marker.args, item.nodeid)
    except LabInputError as exc:
        pytest.exit(f"labkit: {exc}", returncode=exc.exit_code)
    if not settings.full_matrix:
        _measure_one_variant_per_group(config, items, runs, axes)
    order.arrange(config, items, lambda item: s.id if (s := _spec(item)) else None)


def _keep_shard(config: pytest.Config, items: list[pytest.Item]) -> None:
    """`--lab-shard K/N`: deselect the checks of the other shards. Every check must belong to
    exactly one piece of the shard definition, or merged shards would lose or double a cell."""
    settings = config.stash[SETTINGS]
    assert settings.shard is not None and settings.shard_plan is not None
    cells = {item: (suite_of(item.nodeid), s.id if (s := _spec(item)) else None) for item in items}
    problems = unclaimed_or_twice(settings.shard_plan, cells.values())
    if problems:
        pytest.exit(
            f"labkit: {problems[0]} of {settings.shard_plan.path}"
            + (f" (and {len(problems) - 1} more)" if len(problems) > 1 else "")
            + "; allowed: a shard definition whose pieces take every check exactly once",
            returncode=2,
        )
    others = [item for item in items if not settings.shard.claims(*cells[item])]
    if others:
        config.hook.pytest_deselected(items=others)
        items[:] = [item for item in items if settings.shard.claims(*cells[item])]


def _runs_by_check(items: list[pytest.Item]) -> dict[tuple[str, str], list[pytest.Item]]:
    """The runs of each check on a stack, one per selected variant."""
    runs: dict[tuple[str, str], list[pytest.Item]] = defaultdict(list)
    for item in items:
        if _spec(item) is not None:
            runs[(str(item.path), check_id(item))].append(item)
    return runs


def _axes(item: pytest.Item) -> tuple[str, ...] | None:
    marker = item.get_closest_marker(MARKER)
    return None if marker is None else check_axes(marker.args, known_axes(known_drivers().values()), item.nodeid)


def _measure_one_variant_per_group(
    config: pytest.Config,
    items: list[pytest.Item],
    runs: dict[tuple[str, str], list[pytest.Item]],
    axes: dict[tuple[str, str], tuple[str, ...] | None],
) -> None:
    """Deselect the runs whose verdict another variant's run carries over (see `matrix`); the
    run that stands for them lists them (`stands_for`: their node ids and stacks), so the
    report fills in their cells."""
    settings = config.stash[SETTINGS]

    def verdict_inputs(item: pytest.Item) -> tuple[object, ...]:
        spec = _spec_of(item)
        deviation = settings.manifest.lookup(spec.id, check_id(item))
        return spec.capabilities, spec.driver.plan_for(spec.variant, settings.plan), deviation

    carried: set[pytest.Item] = set()
    for check, group in runs.items():
        for cell in plan_cells(group, _spec_of, axes[check], verdict_inputs):
            if cell.carried:
                cell.measured.user_properties.append(("stands_for", [[c.nodeid, _spec_of(c).id] for c in cell.carried]))
                carried.update(cell.carried)
    if carried:
        config.hook.pytest_deselected(items=[i for i in items if i in carried])
        items[:] = [i for i in items if i not in carried]


def _spec(item: pytest.Item) -> StackSpec | None:
    callspec = getattr(item, "callspec", None)
    spec = callspec.params.get("stack_spec") if callspec is not None else None
    return spec if isinstance(spec, StackSpec) else None


def _spec_of(item: pytest.Item) -> StackSpec:
    spec = _spec(item)
    assert spec is not None, f"{item.nodeid} runs on no stack"
    return spec


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter, config: pytest.Config) -> None:
    """How many cells ran and how many took another variant's verdict, and each suite's share
    of the time (check time summed over workers), so a budget is seen where it goes."""
    if hasattr(config, "workerinput"):
        return
    reports = [r for kind in terminalreporter.stats.values() for r in kind if isinstance(r, pytest.TestReport)]
    measured = {r.nodeid for r in reports if dict(r.user_properties).get("stack")}
    carried = sum(len(stands_for(r)) for r in reports if r.when == "setup")
    if measured:
        how = (
            "every one measured (--full-matrix)"
            if config.stash[SETTINGS].full_matrix
            else (f"{carried} carried over from the variant that stands for them (--full-matrix measures them all)")
        )
        terminalreporter.write_line(f"labkit: {len(measured)} check x stack cells measured, {how}")
    seconds: dict[str, float] = defaultdict(float)
    for r in reports:
        seconds[suite_of(r.nodeid)] += r.duration
    total = sum(seconds.values())
    if total > 0:
        shares = ", ".join(f"{s} {t:.0f} s ({t / total:.0%})" for s, t in sorted(seconds.items(), key=lambda kv: -kv[1]))
        terminalreporter.write_line(f"labkit: check time by suite (all workers): {shares}")


def stands_for(report: pytest.TestReport) -> list[tuple[str, str]]:
    """(node id, stack) of the cells this run fills (see labkit.pytest_plugin.matrix)."""
    return [(str(nodeid), str(stack)) for nodeid, stack in dict(report.user_properties).get("stands_for", [])]  # type: ignore[attr-defined]


def suite_of(nodeid: str) -> str:
    """`suites/rtnetlink/test_x.py::...` -> `rtnetlink`; anything else by its top folder."""
    parts = nodeid.split("::", 1)[0].split("/")
    return parts[1] if parts[0] == "suites" and len(parts) > 2 else parts[0]


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    report = yield
    if report.when == "call":
        _unless_described(item, report)
        item.stash[CALL_REPORT] = report
    testbed = item.stash.get(TESTBED, None)
    if report.when == "call" and (report.failed or hasattr(report, "wasxfail")) and testbed is not None:
        _keep_evidence(item, testbed, report)
    return report


def _unless_described(item: pytest.Item, report: pytest.TestReport) -> None:
    """A known deviation whose entry says what the failure must say (`says`) and a failure
    that says something else: the check failed, not as recorded, and is reported as a failure."""
    deviation = item.stash.get(DEVIATION, None)
    if deviation is None or not hasattr(report, "wasxfail") or not report.skipped or deviation.describes(report.longreprtext):
        return
    said = report.longreprtext
    del report.wasxfail
    report.outcome = "failed"
    report.longrepr = (
        f"{said}\n\nnot the known deviation: the manifest entry {deviation.entry!r} is for a failure "
        f"saying /{deviation.says}/ ({deviation.reason})"
    )


def _keep_evidence(item: pytest.Item, testbed: Testbed, report: pytest.TestReport) -> None:
    """The cell's evidence in `--lab-evidence` (labkit.testbed.evidence): its paths go to the
    report's section and, as user properties, to results.json."""
    try:
        paths = testbed.save_evidence(evidence_store(item.config), check_id(item), since_start=_owns_start(item, testbed))
    except Exception as exc:
        report.sections.append(("labkit evidence", f"could not save evidence: {exc}"))
        return
    report.sections.append(("labkit evidence", "\n".join(str(p) for p in paths)))
    for p in paths:
        item.user_properties.append((evidence_kind(p), str(p)))


def evidence_store(config: pytest.Config) -> EvidenceStore:
    directory = config.stash[SETTINGS].evidence or config._tmp_path_factory.getbasetemp() / "evidence"  # type: ignore[attr-defined]
    return EvidenceStore(Path(directory), owner.run_id())


def _owns_start(item: pytest.Item, testbed: Testbed) -> bool:
    """Whether the stack's start belongs to the check's window: it was started for this check
    alone (`fresh`, made by the check through testbed_factory, or a driver that is never pooled).
    A pooled stack's boot is the pool's, whichever check happened to get it first."""
    fresh = item.get_closest_marker("fresh") is not None
    return fresh or "testbed_factory" in getattr(item, "fixturenames", ()) or not testbed.spec.driver.reuse


def pytest_sessionfinish(session: pytest.Session) -> None:
    """The run's evidence index goes when every worker is done (the controller, or the only process)."""
    settings = session.config.stash.get(SETTINGS, None)
    if not hasattr(session.config, "workerinput") and settings is not None and settings.evidence is not None:
        evidence_store(session.config).finish()


EVIDENCE_KINDS = ("pcap", "expects", "log")


def evidence_kind(path: Path) -> str:
    """The pcap (`.pcap`, or `.pcap.gz` when big), what the check expected of the wire
    (`*.expects.json`), or a stack's log or command lines."""
    if path.name.endswith((".pcap", ".pcap.gz")):
        return "pcap"
    return "expects" if path.name.endswith(".expects.json") else "log"


def changes_of(item: pytest.Item) -> frozenset[str]:
    """What the check's `changes` markers declare it changes (validated at collection)."""
    return frozenset(k for m in item.iter_markers("changes") for k in m.args)


def layout_of(item: pytest.Item) -> Layout:
    marker = item.get_closest_marker("layout")
    if marker is None:
        return standard_layout
    if len(marker.args) != 1 or not callable(marker.args[0]):
        raise pytest.UsageError(
            f"{item.nodeid}: bad layout marker {marker.args!r}; allowed: @pytest.mark.layout.with_args(fn), fn(plan) -> (topology, stack end, wire end)"
        )
    return marker.args[0]


def pytest_report_header(config: pytest.Config) -> list[str]:
    settings = config.stash[SETTINGS]
    ids = ", ".join(s.id for s in settings.specs)
    lines = [
        f"labkit: run {owner.run_id()} (pid {os.getpid()}), stacks: {ids}, deviations: {len(settings.manifest.deviations)}, "
        f"{order.describe(config)}, isolation: {settings.isolation}"
    ]
    lines.append(
        f"labkit: fuzz seed {settings.fuzz_seed} (--fuzz-seed replays it), {settings.fuzz_seconds:g}s per stack (suites/robustness)"
    )
    if settings.shard is not None:
        lines.append(
            f"labkit: shard {settings.shard.label} of {settings.shard_plan.path if settings.shard_plan else '?'}: {settings.shard.name}"
        )
    reaped = config.stash.get(REAPED, None)
    if reaped is not None and reaped.left:  # a dead run's processes that would not die: say so, do not hide it
        lines.append(f"labkit: cleaning up after dead runs: {reaped.summary()}")
    return lines
