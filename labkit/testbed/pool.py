"""Started testbeds kept for the next check, and torn down off the critical path.

A gVisor sandbox takes ~250 ms to start and ~1.5 s to die; a check takes a few ms. The pool hands
a check a testbed of its stack variant that an earlier check left as it found it, and ends the
others in a background thread. A testbed is kept only after a check that passed, declared no
change and, looked at, changed nothing (labkit.testbed.isolation; `isolation` says how hard the
pool looks, "off" only to show what the looking prevents). The linux reference costs 4 ms to
build, so it is never pooled: the driver's `reuse` flag decides.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from concurrent.futures import Future, ThreadPoolExecutor, wait

from labkit.errors import LabError, LabInputError
from labkit.net.plan import AddressPlan
from labkit.stacks import StackSpec
from labkit.testbed import Layout, Testbed, standard_layout
from labkit.testbed.isolation import MODES, Mode


class TestbedPool:
    __test__ = False

    def __init__(self, keep: int = 2, teardown_threads: int = 2, isolation: Mode = "cheap") -> None:
        if isolation not in MODES:
            raise LabInputError(f"unknown isolation mode {isolation!r}; allowed: {', '.join(MODES)}")
        self.keep = keep  # idle testbeds kept at most (each is a live sandbox)
        self.isolation = isolation
        self._idle: OrderedDict[tuple[str, AddressPlan, Layout], Testbed] = OrderedDict()
        self._teardown = ThreadPoolExecutor(teardown_threads, thread_name_prefix="labkit-teardown")
        self._pending: list[Future] = []
        self._lock = threading.Lock()
        self.errors: list[BaseException] = []
        self.started = self.reused = 0

    def acquire(self, spec: StackSpec, plan: AddressPlan, fresh: bool = False, layout: Layout = standard_layout) -> Testbed:
        """A testbed for `spec`: a reused one when allowed and healthy, else a newly built one."""
        key = (spec.id, plan, layout)
        bed = self._idle.pop(key, None)
        if bed is not None:
            if not fresh and bed.healthy():
                try:
                    bed.reset()
                except Exception:
                    self.discard(bed)  # a testbed that cannot be reset is not handed out
                else:
                    self.reused += 1
                    return bed
            else:
                self.discard(bed)
        bed = Testbed(spec, plan, layout).up()
        self.started += 1
        if self.isolation == "canary" and spec.driver.reuse:
            try:
                bed.remember_inside()
            except BaseException:
                self.discard(bed)
                raise
        return bed

    def release(self, bed: Testbed, reusable: bool, changes: frozenset[str] = frozenset()) -> dict[str, str]:
        """Give back a testbed after a check; `reusable` is False when the check failed, `changes`
        what it declares it changed. Returns what it changed without declaring it (the testbed is
        then discarded): the caller fails the check with that."""
        if self.isolation != "off":
            reusable = reusable and not changes
        if not (reusable and bed.spec.driver.reuse and self.keep > 0):
            self.discard(bed)
            return {}
        try:
            bed.reset()
            changed = {} if self.isolation == "off" else bed.changes(full=self.isolation == "canary")
        except Exception:
            self.discard(bed)  # a testbed that cannot be reset or looked at is not handed on
            return {}
        if changed:
            self.discard(bed)
            return changed
        key = (bed.spec.id, bed.plan, bed.layout)
        old = self._idle.pop(key, None)
        if old is not None:
            self.discard(old)
        self._idle[key] = bed
        while len(self._idle) > self.keep:
            self.discard(self._idle.popitem(last=False)[1])
        return {}

    def discard(self, bed: Testbed) -> None:
        """Tear down: inline when cheap, in the background when the driver is slow to stop."""
        if not bed.spec.driver.reuse:
            bed.down()
            return
        with self._lock:
            self._pending = [f for f in self._pending if not f.done()]
            self._pending.append(self._teardown.submit(self._down, bed))

    def _down(self, bed: Testbed) -> None:
        try:
            bed.down()
        except BaseException as exc:
            self.errors.append(exc)

    def clear(self) -> None:
        """End every idle testbed (in the background): the next check of each stack starts one."""
        while self._idle:
            self.discard(self._idle.popitem()[1])

    def close(self, timeout: float = 60.0) -> None:
        """End every testbed, waiting (bounded) for the background teardowns."""
        self.clear()
        with self._lock:
            pending = list(self._pending)
        not_done = wait(pending, timeout).not_done
        self._teardown.shutdown(wait=not not_done, cancel_futures=True)
        if not_done:
            self.errors.append(LabError(f"{len(not_done)} testbed teardown(s) still running after {timeout:g}s"))

    def __enter__(self) -> TestbedPool:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
