"""The perf suite's collection, options and the one campaign its checks share.

Collected only when the command line names this folder (`pytest suites/perf`, `tox -e perf`):
the conformance run (`pytest suites`) ignores these files, so it neither measures nor lists them.

Without `--stack` the default set below is measured (the base stacks and the gVisor variants
that change the data path, at their default MTU); `--full` measures every variant that can run
TCP, veth stacks at MTU 1500 and 65520 (a tap stack's MTU is its variant's). The kernel (linux)
is always measured as well: every figure is also a ratio to it.
"""

from __future__ import annotations

import contextlib
import json
import time
from pathlib import Path
from typing import Any

import pytest

from labkit.errors import LabInputError
from labkit.net.plan import AddressPlan
from labkit.perf import PERF_STASH, gates
from labkit.perf.campaign import KERNEL, METRICS, Campaign
from labkit.pytest_plugin.hooks import SETTINGS
from labkit.stacks import StackSpec, resolve
from labkit.stacks.base import EXEC, OUTSIDE, TCP

HERE = Path(__file__).parent
DEFAULT_STACKS = "linux,gvisor,gvisor-ch2,gvisor-ch4,gvisor-nogso,gvisor-swgso,gvisor-txcsum,gvisor-norxcsum,slirp4netns,pasta"
FULL_MTUS = (1500, 65520)
GATES_NAME = "suites/perf.toml"
REPETITIONS = 5
SECONDS = 1.0
PERF = PERF_STASH  # the campaign's results (the "perf" of results.json), for the report plugin
STARTED = pytest.StashKey[float]()


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("labkit-perf", "labkit perf suite (suites/perf)")
    group.addoption("--full", action="store_true", default=False, help="perf: every variant, MTU 1500 and 65520 where allowed")
    group.addoption("--perf-reps", type=int, default=REPETITIONS, help=f"perf: repetitions per cell (default {REPETITIONS})")
    group.addoption("--perf-seconds", type=float, default=SECONDS, help=f"perf: seconds per measurement (default {SECONDS:g})")


def _named_here(config: pytest.Config) -> bool:
    """Whether the command line names this folder or something in it."""
    for arg in config.args:
        path = Path(config.invocation_params.dir, arg.split("::", 1)[0]).resolve()
        if path == HERE or HERE in path.parents:
            return True
    return False


def pytest_ignore_collect(collection_path: Path, config: pytest.Config) -> bool | None:
    if collection_path.suffix == ".py" and collection_path.name.startswith("test_") and not _named_here(config):
        return True
    return None


def _option(config: pytest.Config, name: str, default: Any) -> Any:
    try:
        return config.getoption(name)
    except ValueError:  # this conftest was not loaded at start-up: its options do not exist
        return default


def selected_specs(config: pytest.Config) -> list[StackSpec]:
    """--stack as the conformance run takes it, else the default set; --full: every variant of
    their drivers that runs commands inside and carries TCP (a veth stack's own TCP, or a tap
    stack's traffic to its outside)."""
    specs = list(config.stash[SETTINGS].specs) if config.getoption("stack") else resolve(DEFAULT_STACKS)
    if _option(config, "full", False):
        drivers = list(dict.fromkeys(s.driver for s in specs))
        specs = [StackSpec(d, v) for d in drivers for v in d.variants]
        specs = [s for s in specs if EXEC in s.capabilities and (TCP in s.capabilities or OUTSIDE in s.capabilities)]
    return specs


def cell_keys(config: pytest.Config) -> list[tuple[str, str, int]]:
    """(stack, metric, MTU) of every cell: the kernel's first, then the selected stacks'."""
    specs = selected_specs(config)
    if not any(s.id == KERNEL for s in specs):
        specs = [*resolve(KERNEL), *specs]
    full = _option(config, "full", False)
    plan = AddressPlan()
    keys = []
    for spec in specs:
        mtus = [spec.driver.plan_for(spec.variant, plan).mtu] if spec.driver.makes_link or not full else list(FULL_MTUS)
        keys += [(spec.id, metric, mtu) for mtu in mtus for metric in METRICS]
    return keys


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "perf_cell" in metafunc.fixturenames:
        keys = cell_keys(metafunc.config)
        full = _option(metafunc.config, "full", False)
        ids = [f"{s}:{m}" + (f":mtu{mtu}" if full else "") for s, m, mtu in keys]
        metafunc.parametrize("perf_cell", keys, ids=ids, scope="session")


def _cell_of(item: pytest.Item) -> tuple[str, str, int] | None:
    callspec = getattr(item, "callspec", None)
    cell = callspec.params.get("perf_cell") if callspec is not None else None
    return cell if isinstance(cell, tuple) else None


@pytest.fixture(scope="session")
def perf_run(request: pytest.FixtureRequest) -> dict[str, Any]:
    """The campaign, run once for every cell the session's checks ask about; its results go to
    `config.stash[PERF]` and, with --lab-report DIR, to DIR/perf.json."""
    config = request.config
    wanted = {cell for item in request.session.items if (cell := _cell_of(item)) is not None}
    ids = list(dict.fromkeys(stack for stack, _m, _mtu in wanted))
    specs = [s for s in selected_specs(config) if s.id in ids] or resolve(KERNEL)
    metrics = [m for m in METRICS if any(metric == m for _s, metric, _mtu in wanted)]
    full = bool(_option(config, "full", False))
    try:
        gate_list = gates.load(config.rootpath / GATES_NAME, METRICS)
    except LabInputError as exc:
        pytest.exit(f"labkit: {exc}", returncode=exc.exit_code)
    reporter = config.pluginmanager.get_plugin("terminalreporter")
    capture = config.pluginmanager.get_plugin("capturemanager")

    def log(line: str) -> None:
        """Progress on the terminal as it happens (a default run takes minutes), past pytest's capture."""
        if reporter is None:
            return
        with capture.global_and_fixture_disabled() if capture is not None else contextlib.nullcontext():
            reporter.write_line(line)
            reporter.flush()

    campaign = Campaign(
        specs,
        repetitions=int(_option(config, "perf_reps", REPETITIONS)),
        seconds=float(_option(config, "perf_seconds", SECONDS)),
        metrics=metrics,
        mtus=list(FULL_MTUS) if full else [None],
        gates=gate_list,
        plan=config.stash[SETTINGS].plan,
        full=full,
        log=log,
    )
    result = campaign.run()
    config.stash[PERF] = result
    out = config.getoption("lab_report")
    if out:
        Path(out).mkdir(parents=True, exist_ok=True)
        (Path(out) / "perf.json").write_text(json.dumps({"perf": result}, indent=1) + "\n")
    return result


def pytest_report_header(config: pytest.Config) -> list[str]:
    if not _named_here(config):
        return []
    ids = list(dict.fromkeys(stack for stack, _m, _mtu in cell_keys(config)))
    reps, seconds = _option(config, "perf_reps", REPETITIONS), _option(config, "perf_seconds", SECONDS)
    return [f"labkit perf: stacks {', '.join(ids)}; {reps} repetitions of {seconds:g}s per cell{' (--full)' if _option(config, 'full', False) else ''}"]


def pytest_sessionstart(session: pytest.Session) -> None:
    session.config.stash[STARTED] = time.monotonic()


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter, config: pytest.Config) -> None:
    result = config.stash.get(PERF, None)
    if result is None:
        return
    took = time.monotonic() - config.stash.get(STARTED, time.monotonic())
    cells = result["cells"]
    erratic = [f"{c['stack']}/{c['metric']}" for c in cells if c["erratic"]]
    terminalreporter.section("labkit perf")
    terminalreporter.write_line(
        f"{len(cells)} cells, {result['repetitions']} repetitions of {result['seconds']:g}s"
        f"{' (--full)' if result['full'] else ''}; campaign {result['duration s']:.0f}s, session {took:.0f}s"
    )
    terminalreporter.write_line(f"erratic: {', '.join(erratic) if erratic else 'none'}")
    for stack, why in result["skipped"].items():
        terminalreporter.write_line(f"skipped {stack}: {why}")
    out = config.getoption("lab_report")
    if out:
        terminalreporter.write_line(f"figures: {Path(out) / 'perf.json'}")
