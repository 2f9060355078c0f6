"""The pytest side of labkit: which stacks a check runs on, with what, and what is kept.

Hooks stay small; the work lives in `labkit` and in the sibling modules here.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from labkit.errors import LabInputError
from labkit.lifecycle import janitor, owner, reaper
from labkit.net.plan import AddressPlan
from labkit.packet.wire import Wire
from labkit.pytest_plugin.options import LabSettings, add_options, read_settings
from labkit.stacks import Stack, StackSpec
from labkit.testbed import Layout, Testbed, standard_layout
from labkit.testbed.pool import TestbedPool

SETTINGS = pytest.StashKey[LabSettings]()
CALL_REPORT = pytest.StashKey[pytest.TestReport]()
TESTBED = pytest.StashKey[Testbed]()


def pytest_addoption(parser: pytest.Parser) -> None:
    add_options(parser)


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "stacks(*patterns): run this check only on stacks whose id matches a pattern")
    config.addinivalue_line("markers", "needs(*capabilities): skip on stacks that lack one of these capabilities")
    config.addinivalue_line(
        "markers", "fresh: this check needs a newly started stack (and leaves it changed): never a reused testbed"
    )
    config.addinivalue_line("markers", "layout(fn): fn(plan) -> (topology, stack end, wire end) replaces the standard topology")
    try:
        config.stash[SETTINGS] = read_settings(config)
    except LabInputError as exc:
        pytest.exit(f"labkit: {exc}", returncode=exc.exit_code)
    janitor.install_sigterm_handler()
    owner.run_id()  # fixed before xdist starts workers, which inherit it through the environment
    if not hasattr(config, "workerinput"):  # the controller (or a plain run) cleans up dead runs
        reaper.reap()
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
        from fnmatch import fnmatchcase

        specs = [s for s in specs if any(fnmatchcase(s.id, p) for p in marker.args)]
    # Session scope makes pytest run a stack's checks one after another, so a started sandbox
    # serves them all (see labkit.pool).
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


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    manifest = config.stash[SETTINGS].manifest
    for item in items:
        spec = getattr(item, "callspec", None) and item.callspec.params.get("stack_spec")
        item.user_properties.append(("check", check_id(item)))  # for the report (reports/results.py)
        if not isinstance(spec, StackSpec):
            continue
        item.user_properties.append(("stack", spec.id))
        deviation = manifest.lookup(spec.id, check_id(item))
        if deviation is not None:
            item.add_marker(pytest.mark.xfail(reason=f"known deviation: {deviation.reason}", strict=deviation.strict))
            item.user_properties.append(("deviation", deviation.reason))


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo) -> Iterator[None]:
    report: pytest.TestReport = yield
    if report.when == "call":
        item.stash[CALL_REPORT] = report
    testbed = item.stash.get(TESTBED, None)
    if report.when == "call" and (report.failed or hasattr(report, "wasxfail")) and testbed is not None:
        _keep_evidence(item, testbed, report)
    return report


def _keep_evidence(item: pytest.Item, testbed: Testbed, report: pytest.TestReport) -> None:
    settings = item.config.stash[SETTINGS]
    directory = settings.evidence or item.config._tmp_path_factory.getbasetemp() / "evidence"  # type: ignore[attr-defined]
    stem = re.sub(r"[^A-Za-z0-9_.-]+", "_", item.nodeid)[-150:]
    try:
        paths = testbed.save_evidence(Path(directory), stem)
    except Exception as exc:
        report.sections.append(("labkit evidence", f"could not save evidence: {exc}"))
        return
    report.sections.append(("labkit evidence", "\n".join(str(p) for p in paths)))
    for p in paths:
        item.user_properties.append(("pcap" if p.suffix == ".pcap" else "log", str(p)))


# -- fixtures --------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def lab_settings(request: pytest.FixtureRequest) -> LabSettings:
    return request.config.stash[SETTINGS]


@pytest.fixture
def plan(request: pytest.FixtureRequest, lab_settings: LabSettings) -> AddressPlan:
    """The addresses of the check's topology: peer .1/::1 and stack .2/::2 of the lab prefixes,
    unless the stack under test fixes its own (its driver's plan_for)."""
    if "stack_spec" in request.fixturenames:
        spec = request.getfixturevalue("stack_spec")
        return spec.driver.plan_for(spec.variant, lab_settings.plan)
    return lab_settings.plan


@pytest.fixture(scope="session")
def testbed_pool() -> Iterator[TestbedPool]:
    """Started testbeds of slow-to-start stacks, kept across checks of this worker (labkit.pool)."""
    pool = TestbedPool()
    try:
        yield pool
    finally:
        pool.close()
        if pool.errors:
            raise pool.errors[0]


def require(request: pytest.FixtureRequest, spec: StackSpec) -> None:
    """Skip, saying why, when `spec` is not installed or lacks what the check's `needs` marker asks."""
    available = spec.availability()
    if not available.ok:
        hint = f"; install: {available.install}" if available.install else ""
        pytest.skip(f"{spec.id} unavailable: {available.reason}{hint}")
    marker = request.node.get_closest_marker("needs")
    missing = sorted(set(marker.args) - spec.capabilities) if marker else []
    if missing:
        pytest.skip(f"{spec.id} lacks capabilities: {', '.join(missing)}")
    layout = request.node.get_closest_marker("layout")
    if layout is not None and spec.driver.makes_link:
        name = getattr(layout.args[0], "__name__", layout.args[0]) if layout.args else "?"
        pytest.skip(f"{spec.id} makes its own link (a tap); the check's topology ({name}) does not apply")


@pytest.fixture
def testbed(
    request: pytest.FixtureRequest, stack_spec: StackSpec, plan: AddressPlan, testbed_pool: TestbedPool
) -> Iterator[Testbed]:
    """The standard topology with `stack_spec` started behind it and a Wire in front.

    A stack whose driver allows it is reused from an earlier check (reset in between) unless the
    check is marked `fresh`; after a failing or `fresh` check the testbed is discarded.
    """
    require(request, stack_spec)
    fresh = request.node.get_closest_marker("fresh") is not None
    bed = testbed_pool.acquire(stack_spec, plan, fresh=fresh, layout=layout_of(request.node))
    request.node.stash[TESTBED] = bed
    try:
        yield bed
    finally:
        if request.node.stash.get(TESTBED, None) is bed:
            del request.node.stash[TESTBED]
        outcome = request.node.stash.get(CALL_REPORT, None)
        testbed_pool.release(bed, reusable=not fresh and outcome is not None and outcome.passed)


def layout_of(item: pytest.Item) -> Layout:
    marker = item.get_closest_marker("layout")
    if marker is None:
        return standard_layout
    if len(marker.args) != 1 or not callable(marker.args[0]):
        raise pytest.UsageError(
            f"{item.nodeid}: bad layout marker {marker.args!r}; allowed: @pytest.mark.layout.with_args(fn), fn(plan) -> (topology, stack end, wire end)"
        )
    return marker.args[0]


@pytest.fixture
def testbed_factory(request: pytest.FixtureRequest, stack_spec: StackSpec, plan: AddressPlan) -> Iterator[Callable[..., Testbed]]:
    """`make(layout)` builds a new testbed of `stack_spec` on the check's own layout.

    For checks that expect a start to fail, or need several testbeds; each is torn down after
    the check, and the last one made supplies the evidence.
    """
    require(request, stack_spec)
    made: list[Testbed] = []

    def make(layout: Layout = standard_layout) -> Testbed:
        bed = Testbed(stack_spec, plan, layout).up()
        made.append(bed)
        request.node.stash[TESTBED] = bed
        return bed

    try:
        yield make
    finally:
        if request.node.stash.get(TESTBED, None) in made:
            del request.node.stash[TESTBED]
        errors = []
        for bed in made:
            try:
                bed.down()
            except Exception as exc:  # tear down the others all the same
                errors.append(exc)
        if errors:
            raise errors[0]


@pytest.fixture
def stack(testbed: Testbed) -> Stack:
    """The started stack under test (parametrized over --stack)."""
    assert testbed.stack is not None
    return testbed.stack


@pytest.fixture
def wire(testbed: Testbed) -> Wire:
    """The Wire on the peer end of the stack's veth; it answers ARP/NDP for the peer addresses."""
    assert testbed.wire is not None
    return testbed.wire


def pytest_report_header(config: pytest.Config) -> str:
    settings = config.stash[SETTINGS]
    ids = ", ".join(s.id for s in settings.specs)
    return f"labkit: run {owner.run_id()} (pid {os.getpid()}), stacks: {ids}, deviations: {len(settings.manifest.deviations)}"
