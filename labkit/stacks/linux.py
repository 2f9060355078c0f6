"""The reference: the Linux kernel's own stack, in the sandbox namespace.

Nothing is started: the namespace's kernel stack already owns the addresses the topology gave
it. The driver only applies its sysctls and its offload setting and runs things in the
namespace. A variant that changes a sysctl is a subclass with a `sysctls` dict:

    class ArpIgnoreLinux(LinuxStack):
        kind = "linux-arpignore"
        sysctls = {"net.ipv4.conf.all.arp_ignore": 8}
"""

from __future__ import annotations

import platform
import subprocess
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, ClassVar

from labkit.lifecycle.process import LabProcess, run_in
from labkit.net.ethtool import set_tx_checksum
from labkit.net.topology import Namespace
from labkit.stacks import base


class LinuxStack(base.Stack):
    kind = "linux"
    capabilities = base.CAPABILITIES
    # tx_checksum off: the kernel finishes checksums itself, as on a NIC without offload, so the
    # Wire sees final checksums. `txcsum` keeps veth's offload (frames arrive CHECKSUM_PARTIAL).
    # TSO needs TX checksumming, so `gso` follows it: declared for the checks that expect it.
    option_defaults: ClassVar[Mapping[str, Any]] = {"tx_checksum": False, "gso": False}
    variants: ClassVar[Mapping[str, Mapping[str, Any]]] = {
        "": {"tx_checksum": False, "gso": False},
        "txcsum": {"tx_checksum": True, "gso": True},
    }
    sysctls: ClassVar[Mapping[str, object]] = {}

    @classmethod
    def availability(cls, binary: str | None = None) -> base.Availability:
        """Always there; its version is the running kernel's release."""
        return base.Availability(True, version=platform.release())

    @property
    def _ns(self) -> Namespace:
        """The sandbox namespace."""
        assert self.link is not None
        return self.link.ns

    def _start(self) -> None:
        assert self.link is not None and self._ns.netns is not None
        for key, value in self.sysctls.items():
            self._ns.sysctl(key, value)
        set_tx_checksum(self._ns.netns, self.link.name, bool(self.options.get("tx_checksum")))

    def sysctl(self, key: str, value: object) -> None:
        self._ns.sysctl(key, value)

    def run(self, argv: Sequence[str], timeout: float = 30.0) -> subprocess.CompletedProcess:
        return run_in(self._ns.netns, argv, timeout=timeout, env=self.child_env())

    def processes(self) -> frozenset[str]:
        """Every process in the sandbox namespace: the lab's services, or what a check left."""
        assert self._ns.netns is not None
        found = set()
        for pid in self._ns.netns.pids():
            try:
                found.add(f"{Path(f'/proc/{pid}/comm').read_text().strip()} (pid {pid})")
            except OSError:  # ended meanwhile
                continue
        return frozenset(found)

    def spawn(self, argv: Sequence[str]) -> LabProcess:
        assert self.workdir is not None
        with open(self.workdir / "services.log", "ab") as log:  # the child keeps its own copy of the fd
            return LabProcess(
                argv, netns=self._ns.netns, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=log, env=self.child_env()
            )
