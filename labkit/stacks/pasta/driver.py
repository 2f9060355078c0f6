"""pasta (passt) as a stack under test, on the far side of the namespace's tap.

pasta gets the plan's addresses: the namespace is .1 / ::1 and pasta answers as the gateway at
.2 / ::2 (the checks' "stack"). It maps the gateway to the host's loopback (its default), and
forwards no port unless told. Only what pasta answers itself is checked (ARP, NDP): anything
else sent to the gateway would leave through the host's own sockets.
"""

from __future__ import annotations

import shutil
from collections.abc import Mapping
from dataclasses import replace
from typing import Any, ClassVar

from labkit.net.plan import AddressPlan
from labkit.stacks import base
from labkit.stacks.pasta.launcher import Pasta, PastaOptions
from labkit.stacks.tap import TapStack

INSTALL = "apt-get install -y passt"


class PastaStack(TapStack):
    kind = "pasta"
    capabilities = frozenset({base.ARP, base.NDP, base.IPV4, base.IPV6, base.EXEC, base.SERVICES})
    option_defaults: ClassVar[Mapping[str, Any]] = {"rootless": False, "mtu": 1500}
    variants: ClassVar[Mapping[str, Mapping[str, Any]]] = {
        "": {},  # rootful (a named netns), MTU 1500
        "rootless": {"rootless": True},  # a user+net namespace, joined by pid
        "mtu65520": {"mtu": 65520},
    }

    @classmethod
    def plan_for(cls, variant: str, plan: AddressPlan) -> AddressPlan:
        return replace(plan, mtu=cls.variant_options(variant).get("mtu", 1500))

    def __init__(self, variant: str = "") -> None:
        super().__init__(variant)
        self.pasta: Pasta | None = None

    @classmethod
    def availability(cls) -> base.Availability:
        if shutil.which("pasta") is None:
            return base.Availability(False, "pasta is not installed", INSTALL)
        return base.Availability(True)

    def _start_stack(self) -> None:
        tap, workdir = self.tap, self.workdir
        assert workdir is not None
        gateway4 = str(tap.net4.network_address + 2)
        gateway6 = str(tap.net6.network_address + 2)
        options = PastaOptions(
            f"{tap.peer4}/{tap.net4.prefixlen}", gateway4, f"{tap.peer6}/{tap.net6.prefixlen}", gateway6,
            mtu=tap.mtu, ifname=tap.name,
        )  # fmt: skip
        self.pasta = Pasta(tap.netns, options, workdir=workdir, pid=self.holder_pid).start()

    def _stop_stack(self) -> None:
        if self.pasta is not None:
            self.pasta.stop()
            self.pasta = None

    def healthy(self) -> bool:
        return super().healthy() and self.pasta is not None and self.pasta.running()
