"""The gVisor driver: a real runsc sandbox whose network is copied from the lab's namespace.

With `--network=sandbox`, runsc reads the namespace's interfaces, addresses and routes, moves the
addresses into netstack (the host side keeps the veth, without addresses) and gives netstack
AF_PACKET sockets on each interface: the channels. The lab's Wire on the veth peer then talks to
netstack, not to the kernel.

Starting a sandbox costs ~250 ms and killing one ~1.5 s, so the driver is `reuse`-able: the
testbed pool keeps a started sandbox for the next check of the same variant.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, ClassVar

from labkit.errors import LabError
from labkit.lifecycle.pids import alive
from labkit.lifecycle.process import LabProcess, kill_pids, run_in
from labkit.net.netns import NetNS
from labkit.packet.sockets import PacketSocket, packet_sockets, packet_statistics
from labkit.stacks import base
from labkit.stacks.gvisor import bundle
from labkit.stacks.gvisor.runsc import Runsc
from labkit.stacks.gvisor.variants import DEFAULTS, VARIANTS, network_flags, options

INSTALL = "apt-get install -y runsc"
LOGGED_COMMANDS = "create,start,boot,gofer"  # not exec: every exec would add a log file


def _repo_root() -> Path:
    return Path(__file__).resolve().parents[3]


class GVisorStack(base.Stack):
    kind = "gvisor"
    capabilities = (base.CAPABILITIES - {base.SYSCTL}) | {base.NETNS_COPY, base.AF_PACKET}
    variants: ClassVar[Mapping[str, Mapping[str, Any]]] = VARIANTS
    option_defaults: ClassVar[Mapping[str, Any]] = DEFAULTS
    reuse = True
    start_timeout = 30.0

    def __init__(self, variant: str = "") -> None:
        super().__init__(variant)
        self.options = options(self.options)
        self.runsc: Runsc | None = None
        self.cid: str | None = None
        self.sandbox_pid: int | None = None
        self.started_in = 0.0

    @classmethod
    def capabilities_for(cls, variant: str) -> frozenset[str]:
        if cls.variant_options(variant).get("network") == "none":
            return frozenset({base.EXEC, base.SERVICES})
        return cls.capabilities

    @classmethod
    def availability(cls) -> base.Availability:
        binary = shutil.which("runsc")
        if binary is None:
            return base.Availability(False, "runsc is not installed", INSTALL)
        try:
            out = subprocess.run([binary, "--version"], capture_output=True, text=True, timeout=10).stdout
        except (OSError, subprocess.TimeoutExpired) as exc:
            return base.Availability(False, f"runsc --version failed: {exc}", INSTALL)
        version = out.splitlines()[0].split()[-1] if out.strip() else None
        return base.Availability(True, version=version)

    # -- lifecycle ----------------------------------------------------------------------------

    def flags(self) -> list[str]:
        assert self.workdir is not None
        return [
            "--platform=ptrace",
            "--ignore-cgroups",
            "--net-raw",
            "--TESTONLY-allow-packet-endpoint-write",
            "--debug",
            f"--debug-log={self.workdir / 'logs'}/",
            f"--debug-command={LOGGED_COMMANDS}",
            "--log-packets",
            *network_flags(self.options),
        ]

    def _start(self) -> None:
        assert self.workdir is not None and self.link is not None and self.link.ns.netns is not None
        netns: NetNS = self.link.ns.netns
        (self.workdir / "logs").mkdir()
        self.runsc = Runsc(self.workdir / "root", self.flags())
        visible = [Path(sys.prefix), Path(sys.executable).parent, _repo_root()]
        spec_dir = bundle.write(self.workdir / "bundle", bundle.spec(str(netns.path), ["sleep", "infinity"], visible))
        self.cid = self.workdir.name
        log = self.workdir / "runsc.log"
        began = time.perf_counter()
        self.runsc.create(self.cid, spec_dir, log, self.start_timeout)
        self.runsc.start(self.cid, netns, log, self.start_timeout)
        self.started_in = time.perf_counter() - began  # for the benchmark: runsc's own share
        self.sandbox_pid = int(self.runsc.state(self.cid)["pid"])

    def _processes(self) -> list[int]:
        """The sandbox and its gofer: every host process started for this bundle."""
        assert self.workdir is not None
        marker = str(self.workdir).encode()
        pids = []
        for entry in os.scandir("/proc"):
            if entry.name.isdigit():
                try:
                    if marker in Path(f"/proc/{entry.name}/cmdline").read_bytes():
                        pids.append(int(entry.name))
                except OSError:
                    continue
        return pids

    def _stop(self) -> None:
        # SIGKILL and a bounded wait beat `runsc delete -force` (which also polls); the state
        # root lives in the workdir and goes with it, so nothing may outlive this.
        self.runsc = self.cid = self.sandbox_pid = None
        if self.workdir is None:
            return
        # A zombie sandbox (dead, waiting for its parent to reap it) is gone; a sandbox whose
        # leader thread exited while others run is not (labkit.lifecycle.pids).
        left = kill_pids(self._processes(), timeout=10.0).left
        survivors = sorted(set(left) | {p for p in self._processes() if alive(p)})
        if survivors:
            raise LabError(f"{self.id}: runsc processes {survivors} survived SIGKILL for 10s; `labkit clean` will retry")

    def healthy(self) -> bool:
        return self.sandbox_pid is not None and alive(self.sandbox_pid)

    # -- inside the sandbox -------------------------------------------------------------------

    def _inside_env(self) -> dict[str, str]:
        env = self.child_env()
        keep = {k: v for k, v in env.items() if k.startswith("LABKIT_") or k in ("PYTHONPATH", "PYTHONUNBUFFERED")}
        keep["PATH"] = f"{Path(sys.executable).parent}:{bundle.PATH}"
        return keep

    def _exec_argv(self, argv: Sequence[str]) -> list[str]:
        if self.runsc is None or self.cid is None:
            raise LabError(f"{self.id} is not running")
        return self.runsc.exec_argv(self.cid, argv, self._inside_env())

    def run(self, argv: Sequence[str], timeout: float = 30.0) -> subprocess.CompletedProcess:
        return run_in(None, self._exec_argv(argv), timeout=timeout)

    def spawn(self, argv: Sequence[str]) -> LabProcess:
        assert self.workdir is not None
        # runsc exec does not pass SIGTERM on: LabProcess.close() ends the process by closing stdin.
        with open(self.workdir / "services.log", "ab") as log:
            return LabProcess(self._exec_argv(argv), stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=log)

    def processes(self) -> frozenset[str]:
        """`runsc ps`: every process in the sandbox but its init (pid 1, `sleep infinity`)."""
        if self.runsc is None or self.cid is None:
            raise LabError(f"{self.id} is not running")
        return frozenset(f"{p.command} (pid {p.pid})" for p in self.runsc.ps(self.cid) if p.pid != 1)

    # -- evidence -----------------------------------------------------------------------------

    def logs(self) -> dict[str, Path]:
        if self.workdir is None:
            return {}
        found = dict(super().logs())
        for path in sorted((self.workdir / "logs").glob("runsc.log.*.txt")):
            command = path.name.rsplit(".", 2)[-2]
            name = f"runsc-{command}.log"
            if name in found:
                name = f"runsc-{command}-{path.name.split('.')[2]}.log"
            if path.stat().st_size:
                found[name] = path
        return found

    def link_sockets(self) -> list[PacketSocket]:
        if self.sandbox_pid is None:
            raise LabError(f"{self.id} is not running")
        return packet_sockets(self.sandbox_pid)

    def channel_statistics(self) -> dict[int, tuple[int, int]]:
        pid = self.sandbox_pid
        if pid is None:
            raise LabError(f"{self.id} is not running")
        return {s.fd: packet_statistics(pid, s.fd) for s in self.link_sockets() if s.fd is not None}
