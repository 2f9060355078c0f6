"""Command-line options, turned into the lab's settings once per process."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import pytest

from labkit.errors import LabInputError
from labkit.lifecycle import owner
from labkit.manifest import Manifest
from labkit.net.plan import AddressPlan
from labkit.nightly.shards import SHARDS_FILE, Shard, ShardPlan
from labkit.pytest_plugin import order
from labkit.stacks import StackSpec, default_specs, load_builds, resolve
from labkit.testbed.isolation import MODES, Mode
from reports.history import DEFAULT_KEEP, check_keep

FUZZ_SMOKE_SECONDS = 8.0  # per stack in the conformance run: a smoke, not a campaign (tox -e fuzz)
FUZZ_SHRINK_SECONDS = 300.0
FUZZ_MAX_SECONDS = 24 * 3600.0
MANIFEST_NAME = "suites/deviations.toml"  # under the rootdir: the checkout's, or your own project's


def add_options(parser: pytest.Parser) -> None:
    group = parser.getgroup("labkit", "labkit conformance lab")
    group.addoption(
        "--stack",
        action="append",
        default=[],
        metavar="NAME[,NAME]",
        help="stacks to test: a stack id (linux, linux-txcsum), NAME-* for all its variants, 'all', "
        "or module.path:ClassName; default: every installed stack in its default variant. NAME@PATH "
        "(gvisor@/opt/runsc-nightly/runsc) or NAME@LABEL (a build of --lab-builds) runs it on that binary, "
        "as a column of its own (NAME@LABEL; a path's label is its directory's name)",
    )
    group.addoption(
        "--lab-builds",
        metavar="FILE",
        default=None,
        help='a TOML file naming stack builds for --stack NAME@LABEL: [gvisor] nightly = "/opt/runsc-nightly/runsc"',
    )
    group.addoption(
        "--deviations",
        metavar="PATH",
        default=None,
        help=f"known-deviation manifest (default: {MANIFEST_NAME} under the rootdir, if there)",
    )
    group.addoption("--lab-net4", metavar="PREFIX", default=None, help="IPv4 prefix of the standard topology (in 198.18.0.0/15)")
    group.addoption("--lab-net6", metavar="PREFIX", default=None, help="IPv6 prefix of the standard topology (in 2001:db8::/32)")
    group.addoption(
        "--lab-report",
        metavar="DIR",
        default=None,
        help="write results.json and index.html (the conformance matrix) to DIR at the end of the run",
    )
    group.addoption(
        "--lab-previous",
        metavar="PATH",
        default=None,
        help="a previous run's results.json: the report then says what changed (new failures, fixed, new deviations)",
    )
    group.addoption(
        "--full-matrix",
        action="store_true",
        default=False,
        help="run every check on every variant; by default a check runs on one variant per distinct value "
        "of the options it declares it varies with, and the others carry its verdict over",
    )
    group.addoption(
        "--lab-shard",
        metavar="K/N",
        default=None,
        help=f"run only the K-th of N shards of the matrix ({SHARDS_FILE} packed into N by weight; the nightly's machines)",
    )
    group.addoption(
        "--lab-shards", metavar="PATH", default=None, help=f"the shard definition (default: {SHARDS_FILE} under the rootdir)"
    )
    group.addoption(
        "--lab-history",
        metavar="DIR",
        default=None,
        help="keep this run in DIR (the last --lab-keep nights) and draw the trends and flaky checks on the page (needs --lab-report)",
    )
    group.addoption(
        "--lab-keep",
        metavar="N",
        type=int,
        default=DEFAULT_KEEP,
        help=f"how many nights --lab-history keeps (default {DEFAULT_KEEP})",
    )
    order.add_options(group)
    group.addoption(
        "--fuzz-seed",
        metavar="N",
        type=int,
        default=None,
        help="robustness suite: the run's seed (each stack's campaign derives its own from it; printed and in "
        "results.json); default: from the run id",
    )
    group.addoption(
        "--fuzz-seconds",
        metavar="S",
        type=float,
        default=FUZZ_SMOKE_SECONDS,
        help=f"robustness suite: seconds of fuzzing per stack (default {FUZZ_SMOKE_SECONDS:g}: the conformance run's smoke)",
    )
    group.addoption(
        "--fuzz-shrink-seconds",
        metavar="S",
        type=float,
        default=FUZZ_SHRINK_SECONDS,
        help=f"robustness suite: the most a finding's shrinking may take (default {FUZZ_SHRINK_SECONDS:g})",
    )
    group.addoption(
        "--lab-isolation",
        choices=MODES,
        default=None,
        help="how hard the testbed pool looks for what a check left on a reused stack: cheap (the MAC the "
        "stack sends to each lab peer), canary (also addresses, routes, sockets and processes inside: "
        "~130 ms per check on gvisor), off (only to show what the looking prevents); default: canary "
        "when CI is set, else cheap",
    )
    group.addoption(
        "--lab-evidence",
        metavar="DIR",
        default=None,
        help="where pcaps and stack logs of failed checks go (default: pytest's basetemp)",
    )


@dataclass(frozen=True)
class LabSettings:
    specs: tuple[StackSpec, ...]
    manifest: Manifest
    plan: AddressPlan
    evidence: Path | None
    full_matrix: bool = False
    isolation: Mode = "cheap"
    shard: Shard | None = None
    shard_plan: ShardPlan | None = None
    fuzz_seed: int = 0
    fuzz_seconds: float = FUZZ_SMOKE_SECONDS
    fuzz_shrink_seconds: float = FUZZ_SHRINK_SECONDS


def read_settings(config: pytest.Config) -> LabSettings:
    """Parse and validate every lab option; raises LabInputError on the first bad value."""
    names = [n for v in config.getoption("stack") for n in v.split(",") if n.strip()]
    builds = load_builds(config.getoption("lab_builds")) if config.getoption("lab_builds") else None
    specs = resolve(names, builds) if names else default_specs()
    path = config.getoption("deviations")
    default = config.rootpath / MANIFEST_NAME
    manifest = Manifest.load(path) if path else (Manifest.load(default) if default.exists() else Manifest.empty())
    plan = AddressPlan.parse(config.getoption("lab_net4"), config.getoption("lab_net6"))
    evidence = config.getoption("lab_evidence")
    isolation: Mode = config.getoption("lab_isolation") or (
        "canary" if os.environ.get("CI", "").lower() in ("1", "true") else "cheap"
    )
    shard, shard_plan = None, None
    if config.getoption("lab_shard"):
        shards_path = config.getoption("lab_shards") or config.rootpath / SHARDS_FILE
        shard_plan = ShardPlan.load(Path(shards_path))
        shard = shard_plan.select(config.getoption("lab_shard"))
    if config.getoption("lab_history") and not config.getoption("lab_report"):
        raise LabInputError(
            "--lab-history needs --lab-report: the history is kept with the run's results; allowed: both, or neither"
        )
    check_keep(config.getoption("lab_keep"), "--lab-keep")
    fuzz_seed = config.getoption("fuzz_seed")
    if fuzz_seed is not None and not 0 <= fuzz_seed < 2**32:
        raise LabInputError(f"bad --fuzz-seed {fuzz_seed}; allowed: 0 to {2**32 - 1}")
    for name in ("fuzz_seconds", "fuzz_shrink_seconds"):
        value = config.getoption(name)
        if not 0 < value <= FUZZ_MAX_SECONDS:
            flag = "--" + name.replace("_", "-")
            raise LabInputError(f"bad {flag} {value:g}; allowed: more than 0, at most {FUZZ_MAX_SECONDS:g}")
    return LabSettings(
        tuple(specs),
        manifest,
        plan,
        Path(evidence).resolve() if evidence else None,
        bool(config.getoption("full_matrix")),
        isolation,
        shard,
        shard_plan,
        int(owner.run_id(), 16) % 2**32 if fuzz_seed is None else fuzz_seed,
        float(config.getoption("fuzz_seconds")),
        float(config.getoption("fuzz_shrink_seconds")),
    )
