"""What the drivers of user-space stacks behind a tap share (slirp4netns, pasta).

Such a stack makes the namespace's tap itself and answers on its far side; the lab's namespace
keeps its kernel, which owns the namespace's address, and the lab's services run there, as a
container would. The Wire sits on the tap (see Testbed), so checks talk to the stack across it.

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
from collections.abc import Sequence

from labkit.errors import ExpectTimeout, LabError
from labkit.lifecycle import owner
from labkit.lifecycle.process import LabProcess, run_in
from labkit.net.layouts import TapEnd
from labkit.net.netns import NetNS
from labkit.stacks import base

# Holds the user+net namespace: reports its pid once inside, lives until its stdin closes.
_HOLDER = "import os, sys; print(os.getpid(), flush=True); sys.stdin.read()"


class TapStack(base.Stack):
    makes_link = True

    def __init__(self, variant: str = "") -> None:
        super().__init__(variant)
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
