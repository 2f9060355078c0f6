"""The one interface every stack driver implements.

A stack is "a network stack attached behind the sandbox end of a veth". The lab builds the
topology and hands the driver that end; the driver brings its stack up there, runs commands and
services inside it, and keeps its own logs. Suites only ever talk to this interface.
"""

from __future__ import annotations

import abc
import os
import shutil
import subprocess
import tempfile
from collections.abc import Mapping, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

from labkit.errors import LabError, LabInputError
from labkit.lifecycle import janitor, owner
from labkit.lifecycle.process import LabProcess
from labkit.net.layouts import End
from labkit.net.plan import AddressPlan
from labkit.net.topology import Link, Topology
from labkit.packet.sockets import PacketSocket
from labkit.stacks import programs
from labkit.stacks import state as stack_state
from labkit.stacks.agent import SocketAgent
from labkit.stacks.forwarding import PortForward
from labkit.stacks.service import Service, service_argv

# Capability flags: what checks a driver can take part in.
ARP = "arp"
NDP = "ndp"
IPV4 = "ipv4"
IPV6 = "ipv6"
ICMP = "icmp"
UDP = "udp"
TCP = "tcp"
SERVICES = "services"  # can run the lab's services inside
EXEC = "exec"  # can run arbitrary commands inside
SYSCTL = "sysctl"
RTNETLINK = "rtnetlink"  # answers NETLINK_ROUTE for its own links, addresses and routes, inside
ADDR_CONFIG = "addr-config"  # `ip addr add` run inside gives the stack itself a new address
AGENT = "agent"  # runs the socket agent (labkit.agent) on the stack under test: its sockets are the stack's
CAPABILITIES = frozenset({ARP, NDP, IPV4, IPV6, ICMP, UDP, TCP, SERVICES, EXEC, SYSCTL, RTNETLINK, ADDR_CONFIG, AGENT})
# Sandbox-only traits, which the network-setup checks are about:
NETNS_COPY = "netns-copy"  # builds its own stack from the namespace's links, addresses and routes
AF_PACKET = "af-packet"  # reaches its link through AF_PACKET sockets the lab can inspect
# Tap-stack traits (user-mode networking: the container's traffic leaves through host sockets):
OUTSIDE = "outside"  # carries the container's traffic to the lab's outside world (labkit.testbed.outside)
FORWARD = "port-forward"  # forwards ports of its host namespace into the container (labkit.stacks.forwarding)
FORWARD_API = "forward-api"  # adds, lists and removes forwards while it runs (slirp4netns's API; pasta's are fixed at start)
DHCP = "dhcp"  # leases the container an address over DHCP
DNS = "dns"  # forwards DNS queries sent to an address of its own to the host's resolver


@dataclass(frozen=True)
class Availability:
    ok: bool
    reason: str = ""
    install: str | None = None
    version: str | None = None
    binary: str | None = None  # the file the driver runs (labkit.stacks.programs), for a driver that runs one
    digest: str | None = None  # a short sha256 of it: tells two builds apart


class Stack(abc.ABC):
    """Base of all drivers. Subclasses set `kind`, `capabilities`, `variants` and the hooks.

    `variants` maps a variant name ("" is the default) to the options it sets; the id of a
    driver instance is `kind` or `kind-variant` (e.g. `linux`, `gvisor-ch4-gso`).
    """

    kind: ClassVar[str] = ""
    capabilities: ClassVar[frozenset[str]] = frozenset()
    variants: ClassVar[Mapping[str, Mapping[str, Any]]] = {"": {}}
    # Every option a variant may set, with its value when the variant does not: the variant axes.
    # A check declares the axes its outcome depends on (`@pytest.mark.varies_with`), and the
    # plugin runs it on one variant per distinct value of them.
    option_defaults: ClassVar[Mapping[str, Any]] = {}
    # A started instance may serve several checks in a row (when starting one is slow); the
    # testbed pool then calls reset() between checks and healthy() before handing it out.
    reuse: ClassVar[bool] = False
    # The stack makes the link the Wire sits on (a tap in the namespace: slirp4netns, pasta);
    # it is started on a layouts.TapEnd and fills in its MAC. Layouts of veth ends do not apply.
    makes_link: ClassVar[bool] = False
    # The program the driver runs ("" for none: the kernel), found on PATH unless a build names
    # a binary of its own (labkit.stacks.builds), and the command that installs it.
    program: ClassVar[str] = ""
    install: ClassVar[str | None] = None

    @classmethod
    def plan_for(cls, variant: str, plan: AddressPlan) -> AddressPlan:
        """The addresses the checks see for this stack: the lab's plan, or the stack's own
        variation of it (slirp4netns puts the namespace at .100)."""
        return plan

    def __init__(self, variant: str = "", binary: str | None = None) -> None:
        """`binary`: the build's file (an absolute path) to run instead of `program` on PATH."""
        self.variant = variant
        self.binary = binary or self.program
        self.build_label = ""  # a build's label (StackSpec.create sets it): part of the id, `gvisor@nightly`
        self.options: dict[str, Any] = dict(self.variant_options(variant))
        self.topology: Topology | None = None
        self.link: End | None = None  # a veth end, or (a stack that makes its link) a tap's end
        self.workdir: Path | None = None
        self._services: list[Service] = []
        self._agent: SocketAgent | None = None
        self._log_marks: dict[Path, int] = {}
        self._channel_totals: dict[int, tuple[int, int]] = {}

    @classmethod
    def options_for(cls, variant: str) -> dict[str, Any]:
        """Every option of a variant, defaults filled in: where it stands on each axis."""
        return {**cls.option_defaults, **cls.variant_options(variant)}

    @classmethod
    def variant_options(cls, variant: str) -> Mapping[str, Any]:
        """The options of a named variant, or of named variants joined by '+' (`ch4+txcsum`).

        A combination may not set one option to two values (`nogso+swgso` is refused).
        """
        if variant in cls.variants:
            return cls.variants[variant]
        parts = variant.split("+")
        allowed = ", ".join(cls.id_for(v) for v in cls.variants)
        bad = [p for p in parts if not p or p not in cls.variants]
        if len(parts) < 2 or bad:
            what = f"{bad[0]!r} in {variant!r}" if len(parts) > 1 and bad else repr(variant)
            raise LabInputError(
                f"unknown variant {what} of stack {cls.kind!r}; allowed: {allowed}, or named variants joined by '+'"
            )
        if len(set(parts)) < len(parts):
            raise LabInputError(f"variant {variant!r} of stack {cls.kind!r} names a variant twice; allowed: each at most once")
        merged: dict[str, Any] = {}
        origin: dict[str, str] = {}
        for part in parts:
            for key, value in cls.variants[part].items():
                if key in merged and merged[key] != value:
                    raise LabInputError(
                        f"variants {origin[key]!r} and {part!r} of stack {cls.kind!r} conflict on {key} "
                        f"({merged[key]!r} vs {value!r}); allowed: variants that set different options"
                    )
                merged[key], origin[key] = value, part
        return merged

    @classmethod
    def id_for(cls, variant: str) -> str:
        return f"{cls.kind}-{variant}" if variant else cls.kind

    @property
    def id(self) -> str:
        name = self.id_for(self.variant)
        return f"{name}@{self.build_label}" if self.build_label else name

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.id}>"

    @classmethod
    def availability(cls, binary: str | None = None) -> Availability:
        """Whether this stack can run on this machine, with `binary` (a build's file) or its
        `program` from PATH: the file, the version it reports (or its package's) and its digest."""
        if not cls.program:
            return Availability(True)
        name = binary or cls.program
        path = programs.locate(name)
        install = cls.install if binary is None else None  # a build's file is not apt's to install
        if path is None:
            why = f"{cls.program} is not installed" if binary is None else f"{binary} is not an executable file"
            return Availability(False, why, install)
        try:
            found = programs.identify(path, cls.printed_version)
        except LabError as exc:
            return Availability(False, str(exc), install, binary=path)
        return Availability(True, version=found.version, binary=path, digest=found.digest)

    @classmethod
    def printed_version(cls, path: str) -> str | None:
        """The version the binary at `path` reports of itself (None: it prints none, and its
        package's is used); raises LabError when it cannot be asked."""
        return programs.first_line_version(path)

    @classmethod
    def refusal(cls, variant: str, binary: str) -> str | None:
        """Why the file `binary` (absolute) cannot run `variant`: a flag it lacks. The check then
        skips with this reason instead of failing to start; None when it can."""
        return None

    @classmethod
    def capabilities_for(cls, variant: str) -> frozenset[str]:
        """What a variant can take part in; a variant that removes a feature overrides this."""
        return cls.capabilities

    def can(self, *capabilities: str) -> bool:
        return set(capabilities) <= self.capabilities_for(self.variant)

    # -- lifecycle ----------------------------------------------------------------------------

    def start(self, topology: Topology, link: End) -> None:
        """Bring the stack up behind `link` (the sandbox end of a veth in a built topology)."""
        self.topology, self.link = topology, link
        self.workdir = Path(tempfile.mkdtemp(prefix=f"{owner.new_name('stack')}-"))
        janitor.track(self)  # Ctrl-C or SIGTERM before stop(): the janitor stops it
        self._start()
        self.mark_logs()  # the boot is the pool's: a pooled check's window begins after it

    @abc.abstractmethod
    def _start(self) -> None: ...

    def reset(self) -> None:
        """Make a reused stack ready for the next check: its services end, the socket agent's
        sockets close (the agent itself stays: it is slow to start), its logs start afresh."""
        self._close_services()
        if self._agent is not None:
            if self._agent.running:
                self._agent.reset()
            else:
                self._close_agent()
        self.mark_logs()

    def healthy(self) -> bool:
        """Whether a started stack is still fit to be reused."""
        return self.workdir is not None

    def ended(self, wait: float = 0.0) -> str | None:
        """How the stack's own process ended ("killed by SIGBUS; its log: ..."), waiting up to
        `wait` for one that is dying; None while it runs, or for a stack with no process of its own."""
        return None

    def _close_services(self) -> None:
        services, self._services = self._services, []
        errors = []
        for service in services:
            try:
                service.close()
            except Exception as exc:  # close the others all the same
                errors.append(exc)
        if errors:
            raise errors[0]

    def _close_agent(self) -> None:
        agent, self._agent = self._agent, None
        if agent is not None:
            agent.close()

    def stop(self) -> None:
        """End services and the stack and remove its workdir, whatever fails on the way."""
        try:
            try:
                self._close_agent()
                self._close_services()
            finally:
                self._stop()
        finally:
            if self.workdir is not None:
                shutil.rmtree(self.workdir, ignore_errors=True)
                self.workdir = None
            janitor.untrack(self)

    close = stop

    def _stop(self) -> None:  # noqa: B027 - optional hook, most drivers have nothing to stop
        """Driver-specific teardown; the topology itself is removed by whoever built it."""

    # -- what the stack looks like from outside -------------------------------------------------

    @property
    def mac(self) -> str:
        assert isinstance(self.link, Link) and self.link.mac is not None
        return self.link.mac

    @property
    def ipv4(self) -> list[str]:
        assert isinstance(self.link, Link)
        return [str(a.ip) for a in self.link.ipv4]

    @property
    def ipv6(self) -> list[str]:
        assert isinstance(self.link, Link)
        return [str(a.ip) for a in self.link.ipv6_addresses]

    # -- inside the stack ---------------------------------------------------------------------

    @abc.abstractmethod
    def run(self, argv: Sequence[str], timeout: float = 30.0) -> subprocess.CompletedProcess:
        """Run a command inside the stack to completion; output captured."""

    @abc.abstractmethod
    def spawn(self, argv: Sequence[str]) -> LabProcess:
        """Start a long-running command inside the stack, stdin and stdout piped to the lab.

        The lab holds the only write end of stdin: closing it is how a service learns to stop.
        """

    def service(self, kind: str, port: int = 0, *, family: str = "any", **options: Any) -> Service:
        """Start one of the lab's services inside the stack and wait until it is ready."""
        svc = Service(kind, self.spawn(service_argv(kind, port, family, options)))
        self._services.append(svc)
        return svc

    def sysctl(self, key: str, value: object) -> None:
        """Set a sysctl of the stack's own (a timer a check shortens: `net.ipv4.ipfrag_time`).
        Only a stack with the `sysctl` capability has them; a check that uses this declares
        `@pytest.mark.changes("sysctls")`, so the testbed is not handed on."""
        raise LabError(f"{self.id} has no sysctls the lab can set (it lacks the {SYSCTL!r} capability)")

    # -- port forwarding (stacks with the `port-forward` capability) ----------------------------

    def forward_refusal(self, forward: PortForward) -> str | None:
        """Why this stack cannot express `forward`, or None when it can: a check skips with it."""
        return f"{self.id} forwards no ports (it lacks the {FORWARD!r} capability)"

    def forward(self, forward: PortForward) -> AbstractContextManager[None]:
        """`forward` in place for the body of the `with`, gone after it."""
        raise LabError(self.forward_refusal(forward) or f"{self.id} cannot forward {forward}")

    def listed_forwards(self) -> list[PortForward] | None:
        """The forwards the stack itself says are in place, one per port (what an engine's
        `port ls` shows), or None when it has no way to say."""
        return None

    def forwarded_source(self, forward: PortForward, client: str) -> str:
        """The source address a service in the container sees for a forwarded connection from
        `client`, as the stack documents it."""
        raise LabError(f"{self.id} forwards no ports")

    def dns_address(self, family: str = "ipv4") -> str:
        """The address in the container's network whose DNS queries the stack forwards upstream."""
        raise LabError(f"{self.id} forwards no DNS (it lacks the {DNS!r} capability)")

    def dns_offered(self, family: str = "ipv4") -> str:
        """The DNS server the stack's DHCP (NDP, DHCPv6) hands the container, as it documents it."""
        return self.dns_address(family)

    def dhcp_range(self) -> list[str]:
        """The IPv4 addresses the stack's DHCP server may lease, as the stack documents it."""
        raise LabError(f"{self.id} leases no addresses (it lacks the {DHCP!r} capability)")

    def agent(self) -> SocketAgent:
        """The socket agent inside the stack, started on first use and kept while the stack runs."""
        if not self.can(AGENT):
            raise LabError(f"{self.id} cannot run the socket agent (it lacks the {AGENT!r} capability)")
        if self._agent is None or not self._agent.running:
            self._close_agent()
            self._agent = SocketAgent.start(self)
        return self._agent

    def logs(self) -> dict[str, Path]:
        """The stack's own log files (kept with the pcap when a test fails)."""
        if self.workdir is None:
            return {}
        return {p.name: p for p in sorted(self.workdir.glob("*.log")) if p.stat().st_size}

    def mark_logs(self) -> None:
        """Remember how long each log is, so evidence holds only what came after."""
        self._log_marks = {p: p.stat().st_size for p in self.logs().values()}

    def log_offset(self, path: Path) -> int:
        return self._log_marks.get(path, 0)

    def command_lines(self) -> list[list[str]]:
        """The command lines that started the stack's own processes, kept with its evidence:
        what a person needs to start it again by hand (none for the kernel)."""
        return []

    # -- state a later check could notice (labkit.testbed.isolation) ---------------------------

    def state(self) -> dict[str, frozenset[str]]:
        """Addresses, routes, bound sockets and processes inside, as `labkit.stacks.state` reads
        them; empty kinds where the stack cannot exec. Costs an exec or two: the pool's full look."""
        found: dict[str, frozenset[str]] = {}
        if self.can(EXEC):
            done = self.run(stack_state.ARGV, timeout=10.0)
            if done.returncode != 0 and "@@" not in done.stdout:
                raise LabError(f"{self.id}: reading its state inside failed ({done.returncode}): {done.stderr.strip()[-200:]}")
            found.update(stack_state.parse(done.stdout))
        # The agent belongs to the testbed (started once, its sockets closed between checks).
        mine = f"(pid {self._agent.pid})" if self._agent is not None else None
        found["processes"] = frozenset(p for p in self.processes() if mine is None or not p.endswith(mine))
        return found

    def processes(self) -> frozenset[str]:
        """Commands running inside the stack other than its own (none for a driver that cannot tell)."""
        return frozenset()

    def own_pids(self) -> list[int]:
        """The host processes that are the stack itself (runsc's sandbox and gofer, slirp4netns,
        pasta): whose memory the robustness suite watches. None for the kernel."""
        return []

    def link_sockets(self) -> list[PacketSocket]:
        """The AF_PACKET sockets through which the stack reaches its link (none for a kernel stack)."""
        return []

    def channel_counts(self) -> dict[int, int]:
        """Frames each link socket (by fd) has received since the stack started; empty for a
        kernel stack. A check compares two readings: the totals are the lab's, not the kernel's."""
        return {fd: packets for fd, (packets, _drops) in self.channel_totals().items()}

    def channel_drops(self) -> dict[int, int]:
        """Frames the kernel dropped at each link socket (its queue was full) since the stack started."""
        return {fd: drops for fd, (_packets, drops) in self.channel_totals().items()}

    def channel_totals(self) -> dict[int, tuple[int, int]]:
        """(packets, drops) per link socket since the stack started. The kernel resets its
        counters on every read (PACKET_STATISTICS), so the driver's reads are summed here and no
        reading takes anything from the next one."""
        for fd, (packets, drops) in self.channel_statistics().items():
            seen, lost = self._channel_totals.get(fd, (0, 0))
            self._channel_totals[fd] = (seen + packets, lost + drops)
        return dict(self._channel_totals)

    def channel_statistics(self) -> dict[int, tuple[int, int]]:
        """The driver's read of the kernel's per-socket counters since its last read (which resets them)."""
        return {}

    @staticmethod
    def child_env() -> dict[str, str]:
        """Environment for lab commands inside the stack: labkit importable, owner tagged."""
        from labkit.lifecycle.process import lab_env

        root = str(Path(__file__).resolve().parents[2])
        path = os.environ.get("PYTHONPATH", "")
        return lab_env({"PYTHONPATH": f"{root}:{path}" if path else root, "PYTHONUNBUFFERED": "1"})
