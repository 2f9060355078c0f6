"""pasta, started as the lab starts it: the namespace gets the addresses, routes and MTU asked
for, ports given as `-t`/`-u` are forwarded from the host's 127.0.0.1, and nothing else is.
pasta runs in a lab "host" namespace (the `host` fixture): "the host" is that namespace, never
the root namespace."""

from __future__ import annotations

import os
import select
import shutil
import socket

import pytest

from labkit.errors import LabInputError
from labkit.lifecycle.process import run_in
from labkit.rtnetlink.view import NetView
from labkit.stacks.forwarding import PortForward
from labkit.stacks.pasta.launcher import Pasta, PastaOptions

from .conftest import carried, free_port

needs_pasta = pytest.mark.skipif(shutil.which("pasta") is None, reason="pasta is not installed; install: apt-get install -y passt")


def options(plan, **kw) -> PastaOptions:
    return PastaOptions(
        f"{plan.peer4}/{plan.net4.prefixlen}", plan.stack4, f"{plan.peer6}/{plan.net6.prefixlen}", plan.stack6, **kw
    )


@pytest.mark.parametrize(
    "make, allowed",
    [
        (lambda plan: options(plan, mtu=67), "from 68 to 65520"),
        (lambda plan: options(plan, mtu=70000), "from 68 to 65520"),
        (lambda plan: PortForward("sctp", 1, 1), "allowed: tcp, udp"),
        (lambda plan: options(plan, forwards=(("tcp", 1, 1),)), "allowed: a labkit.stacks.forwarding.PortForward"),
    ],
    ids=["mtu-67", "mtu-70000", "forward-sctp", "forward-not-a-PortForward"],
)
def test_bad_options_are_refused(plan, make, allowed):
    with pytest.raises(LabInputError, match=allowed):
        make(plan)


@needs_pasta
@pytest.mark.parametrize("mtu", [1500, 65520])
def test_namespace_gets_addresses_routes_and_mtu(plan, namespace, host, workdir, mtu):
    with Pasta(namespace.netns, options(plan, mtu=mtu), host=host.netns, workdir=workdir) as pasta:
        assert pasta.running()
        view = NetView.read(lambda argv: run_in(namespace.netns, argv))
        tap = view.links.get("tap0")
        assert tap is not None and tap.mtu == mtu, f"tap0: {tap}, asked for MTU {mtu}"
        have = view.addresses.get("tap0", frozenset())
        want = {f"{plan.peer4}/{plan.net4.prefixlen}", f"{plan.peer6}/{plan.net6.prefixlen}"}
        assert want <= have, f"tap0 has {sorted(have)}, not {sorted(want - have)}"
        defaults = {(r.dst, r.gateway, r.dev) for r in view.routes if r.dst in ("0.0.0.0/0", "::/0")}
        assert defaults == {("0.0.0.0/0", plan.stack4, "tap0"), ("::/0", plan.stack6, "tap0")}, f"default routes {defaults}"
        pidfd = os.pidfd_open(pasta.pid)
    try:
        assert select.select([pidfd], [], [], 0)[0], "pasta survived stop"
    finally:
        os.close(pidfd)
    assert namespace.netns.exists()


@needs_pasta
@pytest.mark.parametrize("proto", ["tcp", "udp"])
def test_port_forwarding_from_host_loopback(plan, namespace, host, workdir, proto):
    """The forwarded port reaches its service; another port, with a service of its own on the
    same number inside, is not forwarded."""
    kind = socket.SOCK_STREAM if proto == "tcp" else socket.SOCK_DGRAM
    host_port, other_port = free_port(host.netns, kind), free_port(host.netns, kind)
    with namespace.netns.entered():
        inside = socket.socket(socket.AF_INET, kind)
        other = socket.socket(socket.AF_INET, kind)
    with inside, other:
        inside.bind(("0.0.0.0", 0))
        other.bind(("0.0.0.0", other_port))
        guest_port = inside.getsockname()[1]
        if proto == "tcp":
            inside.listen(2)
            other.listen(2)
        forwards = (PortForward(proto, host_port, guest_port),)
        with Pasta(namespace.netns, options(plan, forwards=forwards), host=host.netns, workdir=workdir):
            assert carried(host.netns, proto, host_port, inside), f"{proto} 127.0.0.1:{host_port} did not reach the service inside"
            assert not carried(host.netns, proto, other_port, other, timeout=1), (
                f"{proto} 127.0.0.1:{other_port} was forwarded unasked"
            )
