"""The order checks run in: shuffled from a recorded seed, and replayable sequence by sequence.

A verdict must not depend on which check ran before on a pooled testbed, so the suites run in
a different order every time: stacks, then modules within a stack, then checks within a module
are shuffled from one seed (the grouping keeps a stack's pooled sandbox and a module's fixtures
serving a run of checks). Under xdist a seed fixes the collection order, not which worker gets
what, so every worker's sequence is recorded; `--lab-replay FILE` runs those sequences again one
after another in one process, each on an empty pool, as the workers had them.
"""

from __future__ import annotations

import json
import random
from collections import defaultdict
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import pytest

from labkit.errors import LabInputError

ORDERS = ("random", "given")
SEQUENCE_START = pytest.StashKey[str]()  # on the first check of each replayed sequence: whose it was
SEED = pytest.StashKey[int]()
SEQUENCES = pytest.StashKey[dict[str, list[str]]]()  # worker (or "main") -> node ids, in the order run
ORDER_FILE = pytest.StashKey[Path]()


def add_options(group: Any) -> None:
    group.addoption(
        "--lab-order",
        choices=ORDERS,
        default="random",
        help="random (default): shuffle stacks, modules and checks from --lab-seed, and record each "
        "worker's sequence (order.json next to the report, else in .labkit/ under the rootdir); given: as collected",
    )
    group.addoption("--lab-seed", metavar="N", type=int, default=None, help="the seed of a random order (default: a new one)")
    group.addoption(
        "--lab-replay",
        metavar="FILE",
        default=None,
        help="run the check sequences an order.json recorded, one after another, each on an empty testbed pool (no -n)",
    )


# -- hooks (this module is a plugin of its own: labkit.pytest_plugin) ---------------------------


def pytest_configure(config: pytest.Config) -> None:
    if config.getoption("lab_replay") and (config.getoption("numprocesses", None) or 0):
        pytest.exit("labkit: --lab-replay runs the recorded sequences in one process; allowed: without -n (or -n 0)", returncode=2)
    config.stash[SEED] = choose_seed(config)
    config.stash[SEQUENCES] = {}


@pytest.hookimpl(optionalhook=True)
def pytest_configure_node(node: Any) -> None:
    """xdist: every worker shuffles from the controller's seed, so all collect the same order."""
    node.workerinput["labkit_seed"] = node.config.stash[SEED]


def pytest_runtest_protocol(item: pytest.Item) -> None:
    if "stack_spec" in getattr(item, "fixturenames", ()):  # the checks that share pooled testbeds: the order that matters
        item.config.stash[SEQUENCES].setdefault("main", []).append(item.nodeid)


@pytest.hookimpl(optionalhook=True)
def pytest_testnodedown(node: Any, error: object) -> None:
    sequence = getattr(node, "workeroutput", {}).get("labkit_sequence")
    if sequence:
        node.config.stash[SEQUENCES][str(node.workerinput["workerid"])] = sequence


@pytest.hookimpl(tryfirst=True)
def pytest_sessionfinish(session: pytest.Session) -> None:
    """A worker hands its sequence to the controller, which writes them all to order.json."""
    config = session.config
    sequences = config.stash[SEQUENCES]
    if hasattr(config, "workerinput"):
        config.workeroutput["labkit_sequence"] = sequences.get("main", [])  # type: ignore[attr-defined]
        return
    if not sequences or config.getoption("lab_replay"):
        return
    report_dir = config.getoption("lab_report")
    # Next to the report, else where pytest would keep its cache (which this project turns off).
    where = Path(report_dir) / "order.json" if report_dir else config.rootpath / ".labkit" / "order.json"
    config.stash[ORDER_FILE] = write(where, seed_of(config), sequences, config.invocation_params.args)


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter, config: pytest.Config) -> None:
    written = config.stash.get(ORDER_FILE, None)
    if written is not None:
        terminalreporter.write_line(f"labkit: {describe(config)}; each worker's sequence is in {written}: --lab-replay {written} runs them again")


# -- the parts ----------------------------------------------------------------------------------


def arrange(config: pytest.Config, items: list[pytest.Item], stack_of: Callable[[pytest.Item], str | None]) -> None:
    """Put the collected checks in the run's order: replayed, shuffled, or as collected."""
    try:
        if config.getoption("lab_replay"):
            replay(config, items, config.getoption("lab_replay"))
        elif config.getoption("lab_order") == "random":
            shuffle(items, config.stash[SEED], stack_of)
    except LabInputError as exc:
        pytest.exit(f"labkit: {exc}", returncode=exc.exit_code)


def seed_of(config: pytest.Config) -> int | None:
    """The seed this run's order came from; None when it did not come from one."""
    random_order = config.getoption("lab_order") == "random" and not config.getoption("lab_replay")
    return config.stash.get(SEED, None) if random_order else None


def describe(config: pytest.Config) -> str:
    if config.getoption("lab_replay"):
        return f"order: replayed from {config.getoption('lab_replay')}"
    seed = seed_of(config)
    return f"order: random, --lab-seed {seed}" if seed is not None else "order: as collected"


def choose_seed(config: pytest.Config) -> int:
    """The run's seed: given, inherited from the xdist controller, or new."""
    workerinput = getattr(config, "workerinput", None)
    if workerinput is not None and "labkit_seed" in workerinput:
        return int(workerinput["labkit_seed"])
    seed = config.getoption("lab_seed")
    return seed if seed is not None else random.randrange(1, 2**31)


def shuffle(items: list[pytest.Item], seed: int, stack_of: Callable[[pytest.Item], str | None]) -> None:
    """Shuffle the checks that run on a stack in place: stacks, modules, then checks, each level
    from the one seed; items without a stack keep their places."""
    rng = random.Random(seed)
    places = [i for i, item in enumerate(items) if stack_of(item) is not None]
    groups: dict[str, dict[str, list[pytest.Item]]] = defaultdict(lambda: defaultdict(list))
    for i in places:
        groups[stack_of(items[i]) or ""][str(items[i].path)].append(items[i])
    ordered: list[pytest.Item] = []
    for stack in rng.sample(sorted(groups), len(groups)):
        modules = groups[stack]
        for module in rng.sample(sorted(modules), len(modules)):
            checks = modules[module]
            ordered += rng.sample(checks, len(checks))
    for i, item in zip(places, ordered, strict=True):
        items[i] = item


def replay(config: pytest.Config, items: list[pytest.Item], path: str) -> None:
    """Keep and order the items as the recorded sequences ran them; each sequence's first item is
    marked (SEQUENCE_START) so the pool is emptied there."""
    sequences = read(Path(path))
    by_id = {item.nodeid: item for item in items}
    missing = sorted({n for seq in sequences.values() for n in seq} - set(by_id))
    if missing:
        raise LabInputError(
            f"--lab-replay {path}: {len(missing)} recorded check(s) are not collected here, e.g. {missing[0]}; "
            "allowed: a replay with the same suites and --stack as the recorded run"
        )
    ordered: list[pytest.Item] = []
    for worker, sequence in sequences.items():
        if sequence:
            by_id[sequence[0]].stash[SEQUENCE_START] = worker
        ordered += [by_id[n] for n in sequence]
    chosen = set(ordered)
    config.hook.pytest_deselected(items=[i for i in items if i not in chosen])
    items[:] = ordered


def read(path: Path) -> dict[str, list[str]]:
    """worker -> node ids in the order it ran them, from an order.json."""
    try:
        data = json.loads(path.read_text())
        sequences = data["sequences"]
        if not isinstance(sequences, dict) or not all(isinstance(v, list) for v in sequences.values()):
            raise ValueError("'sequences' is not an object of lists")
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise LabInputError(f"--lab-replay {path}: {exc}; allowed: an order.json written by a lab run") from None
    return {str(k): [str(n) for n in v] for k, v in sequences.items()}


def write(path: Path, seed: int | None, sequences: Mapping[str, Sequence[str]], args: Sequence[str]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"seed": seed, "args": list(args), "sequences": sequences}, indent=1) + "\n")
    return path
