"""What the drivers of user-space stacks behind a tap share (slirp4netns, pasta).

Such a stack makes the namespace's tap itself and answers on its far side; the lab's namespace
keeps its kernel, which owns the namespace's address, and the lab's services run there, as a
container would. The Wire sits on the tap (see Testbed), so checks talk to the stack across it.

A tap testbed is never pooled (`reuse` stays False): what a check does to the stack stays in
it and cannot be looked at from outside. pasta sends everything for the container to the
address and MAC it heard from last (a DHCP client of the Wire's, the Wire's own guest address),
libslirp keeps its ARP table, leases and UDP bindings; a stack costs milliseconds to start.

The stack's process runs in the layout's "host" namespace (labkit.net.layouts.tap): what the
container sends out leaves through that namespace's sockets towards the lab's outside
namespace, and ports forwarded into the container are that namespace's. Its DNS upstream is the
lab's outside responder, named in a resolv.conf that only the stack's process sees.

Rootful, the namespace is the topology's named one and the stack is pointed at its path.
Rootless (variant option `rootless`), it is what rootless podman makes: a process in a new user
namespace (root mapped) and a new network namespace, and the stack is pointed at its pid. The
lab names that namespace (`ip netns attach`, owner-tagged, so the reaper knows it) to put the
Wire and the services there.
"""

from __future__ import annotations

import abc
import subprocess
import sys
from collections.abc import Iterator, Mapping, Sequence
from contextlib import AbstractContextManager, contextmanager, suppress
from pathlib import Path
from typing import ClassVar

from labkit.errors import ExpectTimeout, LabError
from labkit.lifecycle import owner
from labkit.lifecycle.process import LabProcess, run_in
from labkit.net.layouts import OUTSIDE4, OUTSIDE6, TapEnd
from labkit.net.netns import NetNS
from labkit.stacks import base
from labkit.stacks.forwarding import PortForward

# Holds the user+net namespace: turns duplicate address detection off there (the tap does not
# exist yet; its addresses must be usable at once, as in the rootful layout), reports its pid
# once inside, and lives until its stdin closes.
_HOLDER = (
    "import os, sys\n"
    "for conf in ('all', 'default'):\n"
    "    open(f'/proc/sys/net/ipv6/conf/{conf}/accept_dad', 'w').write('0')\n"
    "print(os.getpid(), flush=True); sys.stdin.read()"
)


class TapStack(base.Stack):
    makes_link = True
    # A world broken on purpose behind the stack (examples/mutants.py), to show the checks fail:
    # an nftables ruleset for the outside namespace, and options the outside's services start
    # with (`{"dns": {"lie": 1}}`). The testbed's Outside applies them; the drivers leave both empty.
    outside_rules: ClassVar[str] = ""
    outside_faults: ClassVar[Mapping[str, Mapping[str, object]]] = {}
    DNS_HOST = 3  # the container's DNS server is .3 (::3) of its network: libslirp's fixed choice, the lab's for pasta

    def __init__(self, variant: str = "", binary: str | None = None) -> None:
        super().__init__(variant, binary)
        self._holder: LabProcess | None = None
        self.holder_pid: int | None = None

    @property
    def tap(self) -> TapEnd:
        if not isinstance(self.link, TapEnd):
            raise LabError(f"{self.id} runs on a tap layout (labkit.net.layouts.tap), not on {self.link!r}")
        return self.link

    @property
    def rootless(self) -> bool:
        return bool(self.options.get("rootless"))

    @property
    def mac(self) -> str:
        assert self.tap.stack_mac is not None, f"{self.id}: the stack's MAC is not known yet"
        return self.tap.stack_mac

    # -- lifecycle: the namespace first, then the stack ------------------------------------------

    def _start(self) -> None:
        if self.rootless:
            self._make_user_namespace()
        self._start_stack()
        self.read_tap()

    def _stop(self) -> None:
        try:
            self._stop_stack()
        finally:
            self._drop_user_namespace()

    @abc.abstractmethod
    def _start_stack(self) -> None:
        """Start the stack for `self.tap.netns` (rootful) or `self.holder_pid` (rootless)."""

    @abc.abstractmethod
    def _stop_stack(self) -> None: ...

    def resolv_conf(self) -> Path:
        """The lab's resolv.conf for the stack's process: the outside namespace's DNS responder."""
        assert self.workdir is not None
        path = self.workdir / "resolv.conf"
        path.write_text(f"nameserver {OUTSIDE4}\nnameserver {OUTSIDE6}\n")
        return path

    def dns_address(self, family: str = "ipv4") -> str:
        """The address in the container's network whose DNS queries the stack forwards upstream."""
        if family == "ipv6" and not self.can(base.IPV6):
            raise LabError(f"{self.id} has no IPv6 DNS address (it lacks the {base.IPV6!r} capability)")
        net = self.tap.net4 if family == "ipv4" else self.tap.net6
        return str(net.network_address + self.DNS_HOST)

    # -- port forwarding: the driver adds and removes; the base makes it a context -----------

    def forward(self, forward: PortForward) -> AbstractContextManager[None]:
        if (why := self.forward_refusal(forward)) is not None:
            raise LabError(why)
        return self._forwarding(forward)

    @contextmanager
    def _forwarding(self, forward: PortForward) -> Iterator[None]:
        handle = self._add_forward(forward)
        try:
            yield
        except BaseException:
            # The check's own failure is the news; a forward that will not go either goes with
            # the stack, which no later check gets (tap testbeds are never pooled).
            with suppress(Exception):
                self._remove_forward(handle)
            raise
        self._remove_forward(handle)

    def _add_forward(self, forward: PortForward) -> object:
        """Put `forward` in place; what `_remove_forward` needs to take it away."""
        return None

    def _remove_forward(self, handle: object) -> None:
        """Take away what `_add_forward` put in place."""

    def _make_user_namespace(self) -> None:
        argv = ["unshare", "--user", "--map-root-user", "--net", "--", sys.executable, "-c", _HOLDER]
        self._holder = LabProcess(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE)
        try:
            line = self._holder.read_line(timeout=10)
        except ExpectTimeout:
            line = None
        if not line:
            raise LabError(f"{self.id}: the user+net namespace holder exited before it was ready ({' '.join(argv[:5])})")
        self.holder_pid = self._holder.pid  # unshare execs the holder: same pid
        self.tap.userns_netns = NetNS.attach(owner.new_name("userns"), self.holder_pid)

    def _drop_user_namespace(self) -> None:
        tap = self.link if isinstance(self.link, TapEnd) else None
        if tap is not None and tap.userns_netns is not None:
            tap.userns_netns.delete()
            tap.userns_netns = None
        if self._holder is not None:
            self._holder.close()
            self._holder = None

    def read_tap(self) -> None:
        """Fill in the tap's MAC and the addresses the stack configured on it."""
        tap = self.tap
        with tap.netns.iproute() as ipr:
            links = ipr.get_links(ifname=tap.name)
            if not links:
                raise LabError(f"{self.id} started, but there is no {tap.name} in {tap.netns}")
            tap.mac = links[0].get_attr("IFLA_ADDRESS")
            index = links[0]["index"]
            tap.addresses = [f"{a.get_attr('IFA_ADDRESS')}/{a['prefixlen']}" for a in ipr.get_addr(index=index) if a["scope"] == 0]

    def run(self, argv: Sequence[str], timeout: float = 30.0) -> subprocess.CompletedProcess:
        return run_in(self.tap.netns, argv, timeout=timeout, env=self.child_env())

    def spawn(self, argv: Sequence[str]) -> LabProcess:
        assert self.workdir is not None
        with open(self.workdir / "services.log", "ab") as log:
            return LabProcess(
                argv, netns=self.tap.netns, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=log, env=self.child_env()
            )
