"""The order checks run in: shuffled from a seed, grouped so pooled testbeds serve runs of checks,
recorded per worker, and replayed."""

import json
import textwrap
from types import SimpleNamespace

from labkit.pytest_plugin import order

from .conftest import run_pytest


def items(spec: str) -> list[SimpleNamespace]:
    """`stack:module:name ...` -> fake items (a stack of '-' is none)."""
    out = []
    for word in spec.split():
        stack, module, name = word.split(":")
        out.append(SimpleNamespace(nodeid=f"{module}::{name}[{stack}]", path=module, stack=None if stack == "-" else stack))
    return out


ITEMS = "a:m1:t1 a:m1:t2 a:m1:t3 a:m2:t1 a:m2:t2 -:u:t1 b:m1:t1 b:m1:t2 b:m2:t1 b:m2:t2"


def shuffled(seed: int) -> list[str]:
    got = items(ITEMS)
    order.shuffle(got, seed, lambda i: i.stack)  # type: ignore[arg-type]
    return [i.nodeid for i in got]


def test_a_seed_gives_one_order_and_other_seeds_others():
    assert shuffled(7) == shuffled(7)
    assert len({tuple(shuffled(seed)) for seed in range(20)}) > 5


def test_a_stacks_checks_and_a_modules_checks_stay_together_and_unstacked_items_stay_put():
    for seed in range(20):
        got = shuffled(seed)
        assert got[5] == "u::t1[-]"
        runs = [n.split("[")[1] + n.split("::")[0] for n in got if not n.endswith("[-]")]
        groups = [k for i, k in enumerate(runs) if i == 0 or runs[i - 1] != k]
        assert len(groups) == 4, f"seed {seed}: a stack's module is split: {got}"


SUITE = textwrap.dedent(
    """
    import pytest

    @pytest.mark.parametrize("n", range(6))
    def test_n(stack_spec, n):
        pass
    """
)


def test_the_recorded_order_is_replayed(tmp_path):
    suite = tmp_path / "test_many.py"
    suite.write_text(SUITE)
    first = run_pytest(str(suite), "--stack", "linux", "-n", "2", "--lab-seed", "11", "--lab-report", str(tmp_path / "r"))
    assert first.returncode == 0, first.stdout[-2000:]
    recorded = json.loads((tmp_path / "r" / "order.json").read_text())
    assert recorded["seed"] == 11 and sum(map(len, recorded["sequences"].values())) == 6
    again = run_pytest(str(suite), "--stack", "linux", "--lab-replay", str(tmp_path / "r" / "order.json"), "-v")
    assert again.returncode == 0, again.stdout[-2000:]
    ran = [line.split()[0] for line in again.stdout.splitlines() if " PASSED" in line]
    want = [n for seq in recorded["sequences"].values() for n in seq]
    assert [r.split("::", 1)[1] for r in ran] == [w.split("::", 1)[1] for w in want]
