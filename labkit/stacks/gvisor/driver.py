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
from labkit.packet import pcapfile
from labkit.packet.sockets import PacketSocket, packet_sockets, packet_statistics
from labkit.stacks import base, programs
from labkit.stacks.gvisor import bundle, pcaplog
from labkit.stacks.gvisor import flags as runsc_flags
from labkit.stacks.gvisor.runsc import Runsc
from labkit.stacks.gvisor.variants import DEFAULTS, VARIANTS, needed_flags, network_flags, options

INSTALL = "apt-get install -y runsc"
LOGGED_COMMANDS = "create,start,boot,gofer"  # not exec: every exec would add a log file
# Every sandbox's (the debug log's place and commands follow, with values of the sandbox's own).
FIXED_FLAGS = (
    "--platform=ptrace",
    "--ignore-cgroups",
    "--net-raw",
    "--TESTONLY-allow-packet-endpoint-write",
)


def _repo_root() -> Path:
    return Path(__file__).resolve().parents[3]


class GVisorStack(base.Stack):
    kind = "gvisor"
    capabilities = (base.CAPABILITIES - {base.SYSCTL}) | {base.NETNS_COPY, base.AF_PACKET}
    variants: ClassVar[Mapping[str, Mapping[str, Any]]] = VARIANTS
    option_defaults: ClassVar[Mapping[str, Any]] = DEFAULTS
    reuse = True
    start_timeout = 30.0
    program = "runsc"
    install = INSTALL
    # netstack's own capture (`--pcap-log`, labkit.stacks.gvisor.pcaplog): None when asked for
    # (LABKIT_NETSTACK_PCAP=1) and the build writes one (probed once per build), True always (the
    # probe's own sandbox), False never.
    pcap_log: bool | None = None
    # runsc's debug log with every packet in it: a failed check's evidence. It costs netstack most
    # of its speed (tcp_tx_1 about 0.25 Gbit/s with it), so a speed measurement (labkit.perf)
    # runs the stack without it.
    evidence_logs: bool = True

    def __init__(self, variant: str = "", binary: str | None = None) -> None:
        super().__init__(variant, binary)
        self.options = options(self.options)
        self.runsc: Runsc | None = None
        self.cid: str | None = None
        self.sandbox_pid: int | None = None
        self.started_in = 0.0
        self.netstack_pcap: Path | None = None  # the sandbox's --pcap-log, when its build writes one
        self._pcap_mark = 0  # where the current check's records begin in it (a record boundary)

    @classmethod
    def capabilities_for(cls, variant: str) -> frozenset[str]:
        if cls.variant_options(variant).get("network") == "none":
            return frozenset({base.EXEC, base.SERVICES})
        return cls.capabilities

    @classmethod
    def refusal(cls, variant: str, binary: str) -> str | None:
        """The first flag the variant needs that this runsc does not list (`runsc flags`)."""
        listed = runsc_flags.known(binary)
        if listed is None:
            return None
        needed = dict.fromkeys(map(runsc_flags.name_of, FIXED_FLAGS), "the lab's sandbox setup")
        needed.update(dict.fromkeys(("root", "debug", "log-packets", "debug-log", "debug-command"), "the lab's sandbox setup"))
        overrides = cls.variant_options(variant)
        for flag, key in needed_flags(overrides).items():
            needed[flag] = f"variant {cls.id_for(variant)} ({key}={overrides.get(key, DEFAULTS.get(key))!r})"
        lacking = [flag for flag in needed if flag not in listed]
        if not lacking:
            return None
        flag = lacking[0]
        return f"{binary} has no -{flag} flag (its `runsc flags` does not list it), which {needed[flag]} needs"

    # -- lifecycle ----------------------------------------------------------------------------

    def flags(self) -> list[str]:
        """runsc's global flags for this variant. One that only restates the lab's default is left
        out when this binary does not list it; one the variant needs is refused (a LabError), as
        the check would have skipped had it asked `availability` first."""
        assert self.workdir is not None
        logs = ["--debug", "--log-packets", f"--debug-log={self.workdir / 'logs'}/", f"--debug-command={LOGGED_COMMANDS}"]
        wanted = [*FIXED_FLAGS, *(logs if self.evidence_logs else []), *network_flags(self.options)]
        if self.netstack_pcap is not None:
            wanted.append(f"--{pcaplog.FLAG}={self.netstack_pcap}")
        path = programs.locate(self.binary)
        listed = runsc_flags.known(path) if path is not None else None
        if path is None or listed is None:
            return wanted
        if (why := self.refusal(self.variant, path)) is not None:
            raise LabError(f"{self.id}: {why}")
        return [f for f in wanted if runsc_flags.name_of(f) in listed]

    def _start(self) -> None:
        assert self.workdir is not None and self.link is not None and self.link.ns.netns is not None
        netns: NetNS = self.link.ns.netns
        (self.workdir / "logs").mkdir()
        self._pcap_mark = 0
        if self._keeps_pcap():
            self.netstack_pcap = self.workdir / pcaplog.FILE
        self.runsc = Runsc(self.workdir / "root", self.flags(), binary=self.binary)
        visible = [Path(sys.prefix), Path(sys.executable).parent, _repo_root()]
        spec_dir = bundle.write(self.workdir / "bundle", bundle.spec(str(netns.path), ["sleep", "infinity"], visible))
        self.cid = self.workdir.name
        log = self.workdir / "runsc.log"
        began = time.perf_counter()
        self.runsc.create(self.cid, spec_dir, log, self.start_timeout)
        self.runsc.start(self.cid, netns, log, self.start_timeout)
        self.started_in = time.perf_counter() - began  # for the benchmark: runsc's own share
        self.sandbox_pid = int(self.runsc.state(self.cid)["pid"])

    def _keeps_pcap(self) -> bool:
        """Whether this sandbox gets `--pcap-log`: on a build that writes it, with a link to capture."""
        if self.pcap_log is not None:
            return self.pcap_log
        if not pcaplog.wanted() or self.options.get("network") == "none":
            return False
        path = programs.locate(self.binary)
        return path is not None and pcaplog.writes(path)

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

    def own_pids(self) -> list[int]:
        return self._processes() if self.workdir is not None else []

    def _stop(self) -> None:
        # SIGKILL and a bounded wait beat `runsc delete -force` (which also polls); the state
        # root lives in the workdir and goes with it, so nothing may outlive this.
        self.runsc = self.cid = self.sandbox_pid = None
        self.netstack_pcap = None
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

    def mark_logs(self) -> None:
        """The logs' marks, and where the next check's records begin in netstack's capture."""
        super().mark_logs()
        if self.netstack_pcap is not None:
            self._pcap_mark = pcapfile.records_end(self.netstack_pcap, self._pcap_mark)

    def own_capture(self, since: float, since_start: bool = False) -> bytes | None:
        """netstack's capture (`--pcap-log`) in the check's window: the records written since
        the logs were marked (or, `since_start`, all of them) and stamped at or after `since`.
        None when the sandbox keeps none (its build writes nothing)."""
        if self.netstack_pcap is None:
            return None
        return pcapfile.window(self.netstack_pcap, 0 if since_start else self._pcap_mark, since)

    def command_lines(self) -> list[list[str]]:
        """`runsc create` and `runsc start` with the sandbox's global flags (the start runs
        behind a private mount namespace: labkit.stacks.gvisor.runsc)."""
        if self.runsc is None or self.cid is None or self.workdir is None:
            return []
        return [self.runsc.argv("create", "--bundle", str(self.workdir / "bundle"), self.cid), self.runsc.argv("start", self.cid)]

    def link_sockets(self) -> list[PacketSocket]:
        if self.sandbox_pid is None:
            raise LabError(f"{self.id} is not running")
        return packet_sockets(self.sandbox_pid)

    def channel_statistics(self) -> dict[int, tuple[int, int]]:
        pid = self.sandbox_pid
        if pid is None:
            raise LabError(f"{self.id} is not running")
        return {s.fd: packet_statistics(pid, s.fd) for s in self.link_sockets() if s.fd is not None}
