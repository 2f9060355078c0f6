"""What the drivers of user-space stacks behind a tap share (slirp4netns, pasta).

Such a stack makes the namespace's tap itself and answers on its far side; the lab's namespace
keeps its kernel, which owns the namespace's address, and the lab's services run there, as a
container would. The Wire sits on the tap (see Testbed), so checks talk to the stack across it.
"""

from __future__ import annotations

import subprocess
from collections.abc import Sequence

from ..errors import LabError
from ..layouts import TapEnd
from ..process import LabProcess, run_in
from . import base


class TapStack(base.Stack):
    makes_link = True

    @property
    def tap(self) -> TapEnd:
        if not isinstance(self.link, TapEnd):
            raise LabError(f"{self.id} runs on a tap layout (labkit.layouts.tap), not on {self.link!r}")
        return self.link

    @property
    def mac(self) -> str:
        assert self.tap.stack_mac is not None, f"{self.id}: the stack's MAC is not known yet"
        return self.tap.stack_mac

    def read_tap(self) -> None:
        """Fill in the tap's MAC and the addresses the stack configured on it."""
        tap = self.tap
        with tap.ns.iproute() as ipr:
            links = ipr.get_links(ifname=tap.name)
            if not links:
                raise LabError(f"{self.id} started, but there is no {tap.name} in {tap.ns.netns}")
            tap.mac = links[0].get_attr("IFLA_ADDRESS")
            index = links[0]["index"]
            tap.addresses = [f"{a.get_attr('IFA_ADDRESS')}/{a['prefixlen']}" for a in ipr.get_addr(index=index) if a["scope"] == 0]

    def run(self, argv: Sequence[str], timeout: float = 30.0) -> subprocess.CompletedProcess:
        return run_in(self.tap.ns.netns, argv, timeout=timeout, env=self.child_env())

    def spawn(self, argv: Sequence[str]) -> LabProcess:
        assert self.workdir is not None
        with open(self.workdir / "services.log", "ab") as log:
            return LabProcess(
                argv, netns=self.tap.ns.netns, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=log, env=self.child_env()
            )
