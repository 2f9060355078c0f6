"""Started testbeds kept for the next check, and torn down off the critical path.

A gVisor sandbox takes ~250 ms to start and ~1.5 s to die; a check takes a few ms. The pool hands
a check a testbed of its stack variant that an earlier check left as it found it, and ends the
others in a background thread. A testbed is kept only after a check that passed, declared no
change and, looked at, changed nothing (labkit.testbed.isolation; `isolation` says how hard the
pool looks, "off" only to show what the looking prevents). The linux reference costs 4 ms to
build, so it is never pooled: the driver's `reuse` flag decides. A tap stack (slirp4netns, pasta)
is never pooled either, but its layout takes a second to come up, so the pool builds the next
one in the background while a check runs.
"""

from __future__ import annotations

import threading
from collections import OrderedDict, deque
from concurrent.futures import Future, ThreadPoolExecutor, wait

from labkit.errors import LabError, LabInputError
from labkit.net.layouts import TapEnd
from labkit.net.plan import AddressPlan
from labkit.net.topology import Topology
from labkit.stacks import StackSpec
from labkit.testbed import Layout, Testbed, standard_layout
from labkit.testbed.bed import prebuild_tap
from labkit.testbed.isolation import MODES, Mode

SPARES = 2  # tap layouts building behind the one a check takes
SPARE_TIMEOUT = 30.0  # seconds a check waits for the layout built for it (it takes about one)


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
        # Tap layouts being built for the next checks of a stack that makes its own link, by plan.
        self._spares: dict[AddressPlan, deque[Future[tuple[Topology, TapEnd]]]] = {}
        self._builder = ThreadPoolExecutor(SPARES + 1, thread_name_prefix="labkit-prebuild")

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
        prebuilt = self._spare(spec, plan) if spec.driver.makes_link and layout is standard_layout else None
        bed = Testbed(spec, plan, layout, prebuilt=prebuilt).up()
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

    def _spare(self, spec: StackSpec, plan: AddressPlan) -> tuple[Topology, TapEnd] | None:
        """A tap layout built for this check while earlier ones ran (None: its build failed, and
        the testbed builds its own), with SPARES more set building behind it.

        A tap testbed is never reused (the stack keeps what a check did to it), but its layout is
        the same every time, and building one is mostly waiting for the kernel's linkwatch, which
        brings up every pending link at once, once a second: several built side by side are
        ready together, so a run of short tap checks does not wait a second each.
        """
        key = spec.driver.plan_for(spec.variant, plan)
        for other in [k for k in self._spares if k != key]:  # the run moved on to another plan
            self._drop_spares(other)
        queue = self._spares.setdefault(key, deque())
        while len(queue) < SPARES + 1:
            queue.append(self._builder.submit(prebuild_tap, key))
        try:
            return queue.popleft().result(timeout=SPARE_TIMEOUT)
        except Exception:  # built in line instead; a failed build rolled itself back
            return None
        finally:
            queue.append(self._builder.submit(prebuild_tap, key))

    def _drop_spares(self, key: AddressPlan | None = None) -> None:
        """Tear down the spare layouts of `key` (of every plan: None) once built, off the critical path."""
        for plan in [key] if key is not None else list(self._spares):
            for building in self._spares.pop(plan, deque()):
                building.add_done_callback(self._down_spare)

    def _down_spare(self, building: Future[tuple[Topology, TapEnd]]) -> None:
        if building.cancelled() or building.exception() is not None:
            return
        try:
            building.result()[0].down()
        except Exception as exc:
            self.errors.append(exc)

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
        """End every testbed and spare layout, waiting (bounded) for the background teardowns."""
        self.clear()
        self._drop_spares()
        self._builder.shutdown(wait=True)  # each build is bounded (netlink waits); their callbacks tear them down
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
