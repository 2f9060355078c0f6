"""The lab's fixtures: the check's addresses, a started testbed (pooled for slow stacks), the
stack and the Wire in front of it, and a factory for checks that need testbeds of their own."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import pytest

from labkit.net.plan import AddressPlan, Endpoints
from labkit.packet.testbench.guest import Guest, announce
from labkit.packet.wire import Wire
from labkit.pytest_plugin.hooks import CALL_REPORT, SETTINGS, TESTBED, changes_of, layout_of
from labkit.pytest_plugin.options import LabSettings
from labkit.pytest_plugin.order import SEQUENCE_START
from labkit.stacks import Stack, StackSpec
from labkit.stacks.agent import SocketAgent
from labkit.testbed import Layout, Testbed, down_all, isolation, standard_layout
from labkit.testbed.outside import Outside
from labkit.testbed.pool import TestbedPool


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
def testbed_pool(lab_settings: LabSettings) -> Iterator[TestbedPool]:
    """Started testbeds of slow-to-start stacks, kept across checks of this worker (labkit.testbed.pool)."""
    pool = TestbedPool(isolation=lab_settings.isolation)
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

    A stack whose driver allows it is reused from an earlier check unless the check is marked
    `fresh`. The testbed goes on to the next check only if this one passed, declares no
    `changes` and, looked at, left it as it got it; a change it does not declare fails it.
    """
    require(request, stack_spec)
    if SEQUENCE_START in request.node.stash:  # --lab-replay: each recorded worker began with no testbed
        testbed_pool.clear()
    fresh = request.node.get_closest_marker("fresh") is not None
    bed = testbed_pool.acquire(stack_spec, plan, fresh=fresh, layout=layout_of(request.node))
    request.node.stash[TESTBED] = bed
    try:
        yield bed
    finally:
        if request.node.stash.get(TESTBED, None) is bed:
            del request.node.stash[TESTBED]
        outcome = request.node.stash.get(CALL_REPORT, None)
        changed = testbed_pool.release(bed, reusable=outcome is not None and outcome.passed, changes=changes_of(request.node))
    if changed:
        pytest.fail(isolation.verdict(changed), pytrace=False)


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
        down_all(made)


@pytest.fixture
def stack(testbed: Testbed) -> Stack:
    """The started stack under test (parametrized over --stack)."""
    assert testbed.stack is not None
    return testbed.stack


@pytest.fixture
def agent(stack: Stack) -> SocketAgent:
    """The socket agent inside the stack under test (labkit.agent): the application side of a
    transport check. It lives with the testbed; the pool closes its sockets between checks."""
    if not stack.can("agent"):
        pytest.skip(f"{stack.id} lacks capabilities: agent")
    return stack.agent()


@pytest.fixture
def outside(testbed: Testbed) -> Outside:
    """The world behind a tap stack: the lab's outside namespace, where the container's traffic
    arrives through the stack's host sockets, and the host namespace the stack runs in."""
    if testbed.outside is None:
        assert testbed.stack is not None
        pytest.skip(f"{testbed.stack.id} lacks capabilities: outside")
    return testbed.outside


@pytest.fixture
def guest(request: pytest.FixtureRequest, stack: Stack, wire: Wire, plan: AddressPlan, outside: Outside) -> Guest:
    """The container the Wire plays in front of a tap stack, for the check's `family` (IPv4
    without one): an address of its own in the container's network, announced to the stack the
    way a container's first packets do (labkit.packet.testbench.guest)."""
    family = request.getfixturevalue("family") if "family" in request.fixturenames else "ipv4"
    if family not in stack.capabilities_for(stack.variant):
        pytest.skip(f"{stack.id} lacks capabilities: {family}")
    me = Guest.of(plan, family, outside.address(family), outside.address(family, "host"))
    announce(wire, me)
    return me


@pytest.fixture
def wire(testbed: Testbed) -> Wire:
    """The Wire on the peer end of the stack's veth; it answers ARP/NDP for the peer addresses."""
    assert testbed.wire is not None
    return testbed.wire


@pytest.fixture
def ends(request: pytest.FixtureRequest, plan: AddressPlan, family: str) -> Endpoints:
    """The addresses of the check's `family` parameter (`plan.endpoints(family)`); a stack that
    lacks that IP version skips, saying so."""
    if "stack_spec" in request.fixturenames:
        spec: StackSpec = request.getfixturevalue("stack_spec")
        if family not in spec.capabilities:
            pytest.skip(f"{spec.id} lacks capabilities: {family}")
    return plan.endpoints(family)
