"""A tap stack's world leaves nothing behind: after a run, and after SIGKILL plus `labkit clean`,
no slirp4netns or passt process, no namespace (container, host, outside) and no socket file stays,
and the root namespace never saw any of it."""

from __future__ import annotations

import os
import select
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from labkit.lifecycle import owner
from labkit.stacks import resolve
from labkit.stacks.forwarding import STANDARD
from labkit.testbed import Testbed

from .conftest import ROOT, lab_namespaces_of, root_state

STACKS = [
    pytest.param("slirp4netns", marks=pytest.mark.skipif(not shutil.which("slirp4netns"), reason="apt-get install -y slirp4netns")),
    pytest.param("pasta", marks=pytest.mark.skipif(not shutil.which("pasta"), reason="apt-get install -y passt")),
]
PROGRAMS = ("slirp4netns", "passt", "pasta", "passt.avx2", "pasta.avx2")  # passt re-execs its AVX2 build where it can

# Builds a tap testbed with its outside world busy (a service outside, a forward in place), then
# waits to be killed. Prints the stack's workdir: its API socket and pid file live there.
HOLDER = textwrap.dedent(
    """
    import sys, threading
    from labkit.stacks import resolve
    from labkit.stacks.forwarding import STANDARD
    from labkit.testbed import Testbed

    bed = Testbed(resolve(sys.argv[1])[0]).up()
    bed.outside.service("tcp-echo")
    forward = next(f for f in STANDARD if f.proto == "tcp" and f.family == "ipv4")
    bed.stack.forward(forward).__enter__()
    print("HOLD", bed.stack.workdir, flush=True)
    threading.Event().wait(120)
    """
)


def lab_programs(pid: int | None = None) -> list[int]:
    """slirp4netns / passt processes of the lab (of the owner `pid`, if given)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            comm = (entry / "comm").read_text().strip()
            environ = (entry / "environ").read_bytes().split(b"\0")
        except OSError:
            continue
        tags = [e.split(b"=", 1)[1].decode() for e in environ if e.startswith(owner.ENV_OWNER.encode() + b"=")]
        mine = [o for t in tags if (o := owner.Owner.parse(t)) is not None and (pid is None or o.pid == pid)]
        if comm in PROGRAMS and mine:
            found.append(int(entry.name))
    return found


@pytest.mark.parametrize("stack", STACKS)
def test_sigkill_then_labkit_clean_leaves_no_tap_stack_behind(stack):
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    env.pop(owner.ENV_RUN, None)
    holder = subprocess.Popen([sys.executable, "-c", HOLDER, stack], stdout=subprocess.PIPE, text=True, env=env, cwd=ROOT)
    try:
        ready = select.select([holder.stdout], [], [], 60)[0]  # a holder stuck building its testbed fails the test
        line = holder.stdout.readline().split() if ready else []
        assert line and line[0] == "HOLD", f"holder did not start within 60 s: {line}"
        workdir = Path(line[1])
        assert len(lab_namespaces_of(holder.pid)) == 3, "container, host and outside namespaces"
        assert list(workdir.glob("*.sock")) or list(workdir.glob("*.pid")), f"no socket or pid file in {workdir}"
    finally:
        holder.kill()
        holder.wait(10)
        holder.stdout.close()
    done = subprocess.run([sys.executable, "-m", "labkit", "clean"], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert lab_namespaces_of(holder.pid) == []
    assert lab_programs(holder.pid) == [], "a slirp4netns or passt process outlived labkit clean"
    assert not workdir.exists(), f"{workdir} (API socket, pid file) outlived labkit clean"


def root_ports(proto: str) -> set[int]:
    """Local ports of the root namespace's sockets (this test runs there)."""
    ports = set()
    for table in (f"/proc/net/{proto}", f"/proc/net/{proto}6"):
        for row in Path(table).read_text().splitlines()[1:]:
            ports.add(int(row.split()[1].rsplit(":", 1)[1], 16))
    return ports


@pytest.mark.parametrize("stack", STACKS)
def test_a_testbed_going_down_ends_its_stack_and_its_world(stack, no_leftovers):
    before_root = root_state()
    bed = Testbed(resolve(stack)[0]).up()
    try:
        assert bed.outside is not None and bed.stack is not None and bed.stack.workdir is not None
        workdir = bed.stack.workdir
        bed.outside.service("udp-echo")
        forward = next(f for f in STANDARD if f.proto == "udp" and f.family == "ipv4" and f.count == 1)
        with bed.stack.forward(forward):
            assert lab_programs(os.getpid()), f"no {stack} process of this test is running"
            assert forward.host_port not in root_ports("udp"), "the forward listens in the root namespace"
    finally:
        bed.down()
    assert lab_programs(os.getpid()) == []
    assert not workdir.exists()
    assert root_state() == before_root, "the root namespace's links, addresses or routes changed"


@pytest.mark.parametrize("stack", STACKS)
def test_the_pool_builds_tap_layouts_ahead_and_leaves_none_behind(stack, no_leftovers):
    """The pool builds the next checks' tap layouts while one runs; each testbed takes one of
    them (never one a stack ran on), and closing the pool tears the unused ones down."""
    from labkit.net.plan import AddressPlan
    from labkit.testbed.pool import SPARES, TestbedPool

    spec = resolve(stack)[0]
    with TestbedPool() as pool:
        first = pool.acquire(spec, AddressPlan())
        used = {ns.name for ns in first.topology.namespaces.values()}
        pool.release(first, reusable=True)
        second = pool.acquire(spec, AddressPlan())
        assert second.healthy() and second.outside is not None
        assert not used & {ns.name for ns in second.topology.namespaces.values()}, "a layout was handed out twice"
        pool.release(second, reusable=True)
        assert len(pool._spares[spec.driver.plan_for(spec.variant, AddressPlan())]) == SPARES + 1
