"""Rootless, as rootless podman sets it up: the namespace is a new user namespace (root mapped)
and a new network namespace held by a process, and slirp4netns and pasta are pointed at its
pid. (The lab itself runs as root: the stacks join those namespaces from the init user
namespace, so this checks the pid mode and the user namespace, not unprivileged operation.)"""

from __future__ import annotations

import os
import shutil
import socket

import pytest

from labkit.lifecycle.pids import alive
from labkit.rtnetlink.view import NetView
from labkit.stacks import resolve
from labkit.testbed import Testbed

KINDS = [
    pytest.param("slirp4netns", marks=pytest.mark.skipif(not shutil.which("slirp4netns"), reason="apt-get install -y slirp4netns")),
    pytest.param("pasta", marks=pytest.mark.skipif(not shutil.which("pasta"), reason="apt-get install -y passt")),
]


@pytest.mark.parametrize("kind", KINDS)
def test_rootless_namespace_gets_its_tap_address_and_route(kind):
    with Testbed(resolve(f"{kind}-rootless")[0]) as bed:
        stack, plan = bed.stack, bed.plan
        holder = stack.holder_pid
        assert holder is not None
        assert os.stat(f"/proc/{holder}/ns/user").st_ino != os.stat("/proc/self/ns/user").st_ino, "not a user namespace of its own"
        assert os.stat(f"/proc/{holder}/ns/net").st_ino == bed.peer_end.netns.inode(), "the Wire is not in the holder's netns"
        uid_map = open(f"/proc/{holder}/uid_map").read().split()
        assert uid_map[0] == "0", f"root is not mapped in the user namespace: {uid_map}"
        view = NetView.read(stack.run)
        assert f"{plan.peer4}/{plan.net4.prefixlen}" in view.addresses.get("tap0", ()), view.addresses
        defaults = [(r.gateway, r.dev) for r in view.routes if r.dst == "0.0.0.0/0"]
        assert defaults == [(plan.stack4, "tap0")], defaults
        userns_path = bed.peer_end.netns.path
    assert not userns_path.exists(), "the named user+net namespace outlived the testbed"
    assert not alive(holder), f"the namespace holder {holder} outlived the testbed"


@pytest.mark.skipif(not shutil.which("slirp4netns"), reason="apt-get install -y slirp4netns")
@pytest.mark.parametrize("variant", ["", "-rootless"], ids=["rootful", "rootless"])
def test_forwarded_port_reaches_a_service_behind_slirp(variant):
    """A lab service runs in the namespace (as a container's would), and a forward added through
    the API carries a TCP stream from the host namespace's 127.0.0.1 (slirp4netns runs there) to
    it and back."""
    with Testbed(resolve(f"slirp4netns{variant}")[0]) as bed:
        echo = bed.stack.service("tcp-echo")
        host = bed.stack.tap.host_netns
        with host.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
            probe.bind(("127.0.0.1", 0))
            host_port = probe.getsockname()[1]
        forward = bed.stack.slirp.api.add_hostfwd("tcp", "127.0.0.1", host_port, echo.port)
        payload = os.urandom(64)
        with host.socket(socket.AF_INET, socket.SOCK_STREAM) as conn:
            conn.settimeout(5)
            conn.connect(("127.0.0.1", host_port))
            conn.sendall(payload)
            conn.shutdown(socket.SHUT_WR)
            got = b""
            while chunk := conn.recv(4096):
                got += chunk
        assert got == payload, f"echoed {got!r}"
        accepted = echo.wait_for(lambda e: e["event"] == "accepted", timeout=3)
        assert accepted["peer"][0] == str(bed.plan.stack4), f"slirp delivers forwarded connections from its gateway, got {accepted}"
        bed.stack.slirp.api.remove_hostfwd(forward)
