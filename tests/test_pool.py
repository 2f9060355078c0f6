"""The testbed pool's bookkeeping, with fake testbeds: reuse, fresh and unhealthy beds, eviction, teardown."""

import threading
import time
from types import SimpleNamespace

import pytest

import labkit.testbed.pool
from labkit.errors import LabError, LabInputError
from labkit.testbed.pool import TestbedPool


class FakeTestbed:
    built: list["FakeTestbed"] = []

    def __init__(self, spec, plan, layout=None, prebuilt=None):
        self.spec = spec
        self.plan = plan
        self.layout = layout
        self.calls: list[str] = []
        self.is_healthy = True
        self.down_error: BaseException | None = None
        self.down_delay = 0.0
        self.down_gate: threading.Event | None = None
        self.down_thread: str | None = None
        self.changed: dict[str, str] = {}
        FakeTestbed.built.append(self)

    def up(self):
        self.calls.append("up")
        return self

    def reset(self):
        self.calls.append("reset")
        return self

    def remember_inside(self):
        self.calls.append("remember")

    def changes(self, full):
        self.calls.append("look full" if full else "look")
        return dict(self.changed)

    def healthy(self):
        return self.is_healthy

    def down(self):
        self.down_thread = threading.current_thread().name
        if self.down_gate is not None:
            self.down_gate.wait(10)
        time.sleep(self.down_delay)
        self.calls.append("down")
        if self.down_error is not None:
            raise self.down_error


@pytest.fixture(autouse=True)
def fake_testbed(monkeypatch):
    FakeTestbed.built = []
    monkeypatch.setattr(labkit.testbed.pool, "Testbed", FakeTestbed)


@pytest.fixture
def pool():
    p = TestbedPool(keep=2)
    yield p
    p.close(timeout=10)


def spec(stack_id="gvisor-ch4", reuse=True):
    return SimpleNamespace(id=stack_id, driver=SimpleNamespace(reuse=reuse, makes_link=False))


PLAN = "plan-a"  # the pool only needs a hashable plan


def test_reusable_bed_is_reset_and_handed_out_again(pool):
    s = spec()
    first = pool.acquire(s, PLAN)
    assert first.calls == ["up"]
    pool.release(first, reusable=True)
    again = pool.acquire(s, PLAN)
    assert again is first
    assert first.calls == ["up", "reset", "look", "reset"]  # reset and looked at when given back, reset when handed out
    assert (pool.started, pool.reused) == (1, 1)


def test_fresh_request_builds_a_new_bed_and_ends_the_old(pool):
    s = spec()
    old = pool.acquire(s, PLAN)
    pool.release(old, reusable=True)
    new = pool.acquire(s, PLAN, fresh=True)
    assert new is not old
    assert new.calls == ["up"]
    assert (pool.started, pool.reused) == (2, 0)
    pool.close(timeout=10)
    assert old.calls == ["up", "reset", "look", "down"]
    assert old.down_thread.startswith("labkit-teardown")


def test_unhealthy_bed_is_replaced_and_ended(pool):
    s = spec()
    old = pool.acquire(s, PLAN)
    pool.release(old, reusable=True)
    old.is_healthy = False
    new = pool.acquire(s, PLAN)
    assert new is not old
    assert (pool.started, pool.reused) == (2, 0)
    pool.close(timeout=10)
    assert old.calls == ["up", "reset", "look", "down"]  # not reset again: an unhealthy bed is not handed out


def test_bed_released_as_not_reusable_is_ended_not_kept(pool):
    s = spec()
    bed = pool.acquire(s, PLAN)
    pool.release(bed, reusable=False)
    assert pool.acquire(s, PLAN) is not bed
    pool.close(timeout=10)
    assert bed.calls == ["up", "down"]


def test_non_reuse_driver_is_torn_down_inline(pool):
    s = spec("linux", reuse=False)
    bed = pool.acquire(s, PLAN)
    pool.release(bed, reusable=True)
    assert bed.calls == ["up", "down"]  # before close(): inline, not in the background
    assert bed.down_thread == threading.current_thread().name
    again = pool.acquire(s, PLAN)
    assert again is not bed
    assert (pool.started, pool.reused) == (2, 0)


def test_other_plan_or_stack_is_not_reused(pool):
    bed = pool.acquire(spec("gvisor-ch4"), PLAN)
    pool.release(bed, reusable=True)
    assert pool.acquire(spec("gvisor-ch4"), "plan-b") is not bed
    assert pool.acquire(spec("gvisor-ch2"), PLAN) is not bed
    assert pool.acquire(spec("gvisor-ch4"), PLAN) is bed
    assert (pool.started, pool.reused) == (3, 1)


def test_more_than_keep_idle_beds_evicts_the_oldest(pool):
    beds = [pool.acquire(spec(f"gvisor-{n}"), PLAN) for n in ("a", "b", "c")]
    for bed in beds:
        pool.release(bed, reusable=True)
    assert pool.acquire(spec("gvisor-b"), PLAN) is beds[1]
    assert pool.acquire(spec("gvisor-c"), PLAN) is beds[2]
    assert pool.acquire(spec("gvisor-a"), PLAN) is not beds[0]
    pool.close(timeout=10)
    assert [b.calls[-1] for b in beds] == ["down", "reset", "reset"]


def test_releasing_a_second_bed_for_the_same_key_ends_the_first(pool):
    s = spec()
    one = pool.acquire(s, PLAN)
    two = pool.acquire(s, PLAN)
    pool.release(one, reusable=True)
    pool.release(two, reusable=True)
    assert pool.acquire(s, PLAN) is two
    pool.close(timeout=10)
    assert one.calls == ["up", "reset", "look", "down"]


def test_keep_zero_keeps_nothing():
    p = TestbedPool(keep=0)
    s = spec()
    bed = p.acquire(s, PLAN)
    p.release(bed, reusable=True)
    assert p.acquire(s, PLAN) is not bed
    p.close(timeout=10)
    assert bed.calls == ["up", "down"]


def test_close_ends_idle_beds_and_waits_for_slow_teardowns():
    p = TestbedPool(keep=2)
    beds = [p.acquire(spec(f"gvisor-{n}"), PLAN) for n in ("a", "b")]
    for bed in beds:
        bed.down_delay = 0.2
        p.release(bed, reusable=True)
    assert [b.calls for b in beds] == [["up", "reset", "look"]] * 2
    p.close(timeout=10)
    assert [b.calls for b in beds] == [["up", "reset", "look", "down"]] * 2
    assert p.errors == []


def test_close_records_errors_of_background_teardowns():
    p = TestbedPool(keep=2)
    s = spec()
    bed = p.acquire(s, PLAN)
    boom = RuntimeError("sandbox would not die")
    bed.down_error = boom
    p.release(bed, reusable=False)
    p.close(timeout=10)
    assert p.errors == [boom]


def test_close_gives_up_after_timeout_and_says_so():
    p = TestbedPool(keep=2)
    bed = p.acquire(spec(), PLAN)
    gate = threading.Event()
    bed.down_gate = gate
    p.release(bed, reusable=True)
    try:
        started = time.monotonic()
        p.close(timeout=0.2)
        assert time.monotonic() - started < 5
        assert len(p.errors) == 1
        assert isinstance(p.errors[0], LabError)
        assert "1 testbed teardown(s) still running after 0.2s" in str(p.errors[0])
    finally:
        gate.set()


# -- isolation: what a check changed never reaches the next one -------------------------------


def test_a_declared_change_ends_the_bed_without_looking(pool):
    s = spec()
    bed = pool.acquire(s, PLAN)
    assert pool.release(bed, reusable=True, changes=frozenset({"neighbours"})) == {}
    assert pool.acquire(s, PLAN) is not bed
    pool.close(timeout=10)
    assert bed.calls == ["up", "down"]


def test_an_undeclared_change_ends_the_bed_and_is_returned(pool):
    s = spec()
    bed = pool.acquire(s, PLAN)
    bed.changed = {"neighbours": "the stack now sends to 2001:db8::1: 02:00:00:00:00:01 -> 02:00:00:00:00:55"}
    assert pool.release(bed, reusable=True) == bed.changed
    assert pool.acquire(s, PLAN) is not bed
    pool.close(timeout=10)
    assert bed.calls == ["up", "reset", "look", "down"]


def test_canary_reads_the_inside_once_and_looks_fully():
    p = TestbedPool(isolation="canary")
    s = spec()
    bed = p.acquire(s, PLAN)
    p.release(bed, reusable=True)
    assert p.acquire(s, PLAN) is bed
    p.close(timeout=10)
    assert bed.calls == ["up", "remember", "reset", "look full", "reset"]


def test_isolation_off_hands_on_what_a_check_changed():
    p = TestbedPool(isolation="off")
    s = spec()
    bed = p.acquire(s, PLAN)
    bed.changed = {"addresses": "+eth0 198.18.0.9/24"}
    assert p.release(bed, reusable=True, changes=frozenset({"addresses"})) == {}
    assert p.acquire(s, PLAN) is bed
    p.close(timeout=10)
    assert "look" not in bed.calls


def test_unknown_isolation_mode_is_refused():
    with pytest.raises(LabInputError, match="unknown isolation mode 'strict'; allowed: cheap, canary, off"):
        TestbedPool(isolation="strict")
