"""Is the stack still alive? Asked after every batch of malformed frames.

"Alive" is what a container behind the stack would notice: its neighbour protocol answers (ARP,
NDP), an echo comes back, and a TCP stream makes a round trip through it. Behind that, what an
operator would notice: the stack's processes still run and its logs hold no panic. A probe that
fails is asked once more with a longer wait before the stack is called dead: a stack that is
busy with the batch it just got is slow, not dead.

Before probing, the Wire announces the peer's addresses again, as a real peer's kernel would:
a fuzzed ARP or NDP frame may have taught the stack another MAC for them, and that is the
stack doing its job, not dying.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

from scapy.layers.inet6 import ICMPv6ND_NA
from scapy.layers.l2 import ARP

from labkit.errors import LabError
from labkit.fuzz import memory
from labkit.net.plan import Endpoints
from labkit.packet.testbench import IcmpEcho, TcpConnection
from labkit.packet.testbench.guest import Guest, announce
from labkit.packet.testbench.neighbours import announce as unasked
from labkit.packet.testbench.neighbours import ask
from labkit.stacks.base import ARP as CAN_ARP
from labkit.stacks.base import NDP as CAN_NDP
from labkit.stacks.base import TCP as CAN_TCP
from labkit.stacks.service import Service
from labkit.testbed import Testbed

WAIT = 1.0  # the first try of each probe
RETRY_WAIT = 3.0  # the second, longer one, before the stack is called dead
DYING = 1.0  # a stack that stopped answering may be on its way out: how long to wait for its exit
ROUND_TRIP = b"labkit-liveness-0123456789abcdef"
# What a crashing stack writes: Go's runtime (netstack), glibc and the sanitizers (libslirp,
# passt), the kernel's own words for a wedged task never reach these logs.
PANIC = re.compile(
    rb"^panic: |fatal error: |^goroutine \d+ \[running\]|SIGSEGV|SIGABRT|SIGBUS|[Aa]ssertion [`'\"].*failed|"
    rb"stack smashing detected|double free|AddressSanitizer|UndefinedBehaviorSanitizer",
    re.MULTILINE,
)
# A probe asks the stack once within a timeout: None when it answered, else what went wrong.
Probe = Callable[[float], "str | None"]
PANIC_CONTEXT = 400  # bytes of the log around a panic, in the finding


@dataclass
class Verdict:
    """What one look at the stack found: empty `problems` is alive."""

    problems: list[str] = field(default_factory=list)
    rss: int | None = None  # bytes held by the stack's own processes (None: the kernel, or gone)
    panic: str | None = None  # the log lines around a panic

    @property
    def alive(self) -> bool:
        return not self.problems

    def kind(self) -> str:
        """crash (a process is gone), panic (it logged one), or wedged (it stopped answering)."""
        text = " ".join(self.problems)
        if "process" in text:
            return "crash"
        return "panic" if self.panic else "wedged"


class Liveness:
    """The probes for one testbed; `start()` readies what they need (a TCP echo service inside
    a veth stack, or on the outside behind a tap stack, and the guest's addresses)."""

    def __init__(self, bed: Testbed) -> None:
        assert bed.stack is not None and bed.wire is not None
        self.bed, self.stack, self.wire = bed, bed.stack, bed.wire
        self.families = [f for f in ("ipv4", "ipv6") if self.stack.can(f)]
        self.echo: Service | None = None
        self.guests: dict[str, Guest] = {}
        self._log_seen: dict[Path, int] = {}
        self._seq = 0

    def start(self) -> Liveness:
        if self.bed.outside is not None:
            outside = self.bed.outside
            for family in self.families:
                me = Guest.of(self.bed.plan, family, outside.address(family), outside.address(family, "host"))
                announce(self.wire, me)
                self.guests[family] = me
            self.echo = outside.service("tcp-echo")
        elif self.stack.can(CAN_TCP):
            self.echo = self.stack.service("tcp-echo")
        self._log_seen = {p: p.stat().st_size for p in self.stack.logs().values()}
        return self

    # -- the look ---------------------------------------------------------------------------------

    def check(self) -> Verdict:
        verdict = Verdict()
        if self.echo is not None:
            self.echo.discard()
        ended = self.stack.ended()
        if ended is not None or not self.stack.healthy():
            verdict.problems.append(f"its process is gone: {ended or 'the driver says it is not running'}")
        verdict.panic = self._panic()
        if verdict.panic is not None:
            verdict.problems.append(f"its log has a panic: {verdict.panic.splitlines()[0][:200]}")
        if ended is None:
            try:
                self._reannounce()
            except OSError as exc:  # the link itself is gone (a tap goes with the stack that held it)
                verdict.problems.append(f"its link is gone: {exc.strerror}")
            for name, probe in self._probes():
                problem = self._twice(probe)
                if problem is not None:  # one probe that gets no answer twice settles it: the rest would wait too
                    verdict.problems.append(f"{name}: {problem}")
                    break
            if verdict.problems and (late := self.stack.ended(wait=DYING)) is not None:
                # The probes failed because it died: that is the finding, the first probe says how it showed.
                verdict.problems[:] = [f"its process is gone: {late}", *verdict.problems[:1]]
        verdict.rss = memory.rss(self.stack.own_pids())
        return verdict

    def _twice(self, probe: Probe) -> str | None:
        first = probe(WAIT)
        if first is None:
            return None
        second = probe(RETRY_WAIT)
        return None if second is None else f"{second}, asked twice"

    def _probes(self) -> list[tuple[str, Probe]]:
        probes: list[tuple[str, Probe]] = []
        plan = self.bed.plan
        tap = self.bed.outside is not None
        for family in self.families:
            ends = plan.endpoints(family)
            can_resolve = self.stack.can(CAN_ARP if family == "ipv4" else CAN_NDP)
            if can_resolve:
                what = "ARP" if family == "ipv4" else "NDP"
                probes.append((f"{what} for {self._gateway(ends)}", partial(self._resolve, ends)))
            probes.append((f"echo to {self._echo_target(ends)}", partial(self._ping, ends)))
            if self.echo is not None:
                where = "outside" if tap else "the stack"
                probes.append((f"TCP round trip ({family}, echo service on {where})", partial(self._round_trip, ends)))
        return probes

    def _gateway(self, ends: Endpoints) -> str:
        return self.guests[ends.family].gateway if ends.family in self.guests else ends.stack

    def _echo_target(self, ends: Endpoints) -> str:
        """A veth stack's own address; behind a tap stack, the outside (pasta answers no echo to
        its gateway address: a known deviation the oracle must not trip over)."""
        return self.guests[ends.family].outside if ends.family in self.guests else ends.stack

    def _reannounce(self) -> None:
        for family in self.families:
            source = self.guests[family].address if family in self.guests else self.bed.plan.endpoints(family).peer
            self.wire.send(unasked(self.wire.mac, source))

    def _resolve(self, ends: Endpoints, timeout: float) -> str | None:
        source = self.guests[ends.family].address if ends.family in self.guests else ends.peer
        target = self._gateway(ends)
        answer = ARP(op=2, psrc=target) if ends.family == "ipv4" else ICMPv6ND_NA(tgt=target)
        try:
            self.wire.send_and_expect(ask(self.wire.mac, source, target), answer, timeout=timeout)
        except (AssertionError, LabError, OSError) as exc:
            return f"no answer within {timeout:g}s ({_said(exc)})"
        return None

    def _ping(self, ends: Endpoints, timeout: float) -> str | None:
        self._seq = (self._seq + 1) & 0xFFFF
        if ends.family in self.guests:
            me = self.guests[ends.family]
            ends = me.towards(me.outside)
        try:
            IcmpEcho(self.wire, ends, ident=0x1AB5).ping(self._seq, ROUND_TRIP, timeout=timeout)
        except (AssertionError, LabError, OSError) as exc:
            return f"no echo reply within {timeout:g}s ({_said(exc)})"
        return None

    def _round_trip(self, ends: Endpoints, timeout: float) -> str | None:
        assert self.echo is not None
        if ends.family in self.guests:
            me = self.guests[ends.family]
            ends = me.towards(me.outside)
        conn = TcpConnection(self.wire, ends, port=self.echo.port)
        try:
            conn.connect(timeout=timeout)
            conn.send(ROUND_TRIP, flags="PA")
            got = conn.receive(len(ROUND_TRIP), timeout=timeout)
        except (AssertionError, LabError, OSError) as exc:
            return f"no round trip within {timeout:g}s ({_said(exc)})"
        finally:
            if conn.rcv_nxt is not None:
                conn.reset()
        return None if got == ROUND_TRIP else f"the echo service got back {got!r}, not {ROUND_TRIP!r}"

    def _panic(self) -> str | None:
        """The first panic written to a log of the stack's since the last look."""
        for path in self.stack.logs().values():
            start = self._log_seen.get(path, 0)
            try:
                with open(path, "rb") as f:
                    f.seek(start)
                    data = f.read()
            except OSError:
                continue
            whole = data.rfind(b"\n") + 1  # a line still being written is read whole next time
            data = data[:whole]
            self._log_seen[path] = start + whole
            found = PANIC.search(data)
            if found is not None:
                lo = max(0, found.start() - PANIC_CONTEXT // 4)
                return f"{path.name}: " + data[lo : found.start() + PANIC_CONTEXT].decode(errors="replace")
        return None


def _said(exc: BaseException) -> str:
    """What a failed probe said, on one line: a testbench error's first line names the
    connection, the next one what the Wire saw."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    return " ".join(lines[:2])[:240] or type(exc).__name__
