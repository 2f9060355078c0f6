"""A fuzzing campaign against one stack: batches of malformed frames, the liveness oracle after
each, and, when the stack breaks, the smallest sequence of frames that still breaks a fresh one
(labkit.fuzz.shrink).

Generation is hypothesis's: a batch is one hypothesis example, drawn from `labkit.fuzz.frames`
with the campaign's seed (labkit.fuzz.draws), so the same seed sends the same frames (to the
fresh stack's MACs and, for segments into the live connection, its sequence numbers). The stack
is not restarted between batches: state that builds up over many frames is what breaks stacks
in production, and the shrinker finds out how much of that history a finding needs.

Memory is judged after the run: the resident set of the stack's processes after every batch,
fitted over the frames after the warm-up (labkit.fuzz.memory).
"""

from __future__ import annotations

import time
import zlib
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from hypothesis import Phase
from hypothesis import strategies as st
from hypothesis.database import InMemoryExampleDatabase
from scapy.layers.inet import TCP as TCPLayer

from labkit.errors import LabError
from labkit.fuzz import memory
from labkit.fuzz.draws import BATCH, Drawn, Stop, draw_batch, draw_reduced, run_hypothesis, sent_of
from labkit.fuzz.frames import Live, Target
from labkit.fuzz.oracle import Liveness, Verdict
from labkit.fuzz.replay import Injector, Sent, replay
from labkit.fuzz.shrink import Shrinker
from labkit.net.plan import AddressPlan
from labkit.packet.testbench import TcpConnection
from labkit.stacks import StackSpec
from labkit.stacks.base import AF_PACKET, TCP
from labkit.testbed import Layout, Testbed, standard_layout

SHRINK_SECONDS = 300.0  # per finding: bisection and hypothesis's shrinking together
LIVE_PORT = 47000  # the Wire's port of the live connection (+ batch number): replays use the same
LIVE_ISN = 0x4C41424B  # and its initial sequence number ("LABK")
# Batches kept for the shrinker's bisection over the history (~5,000-10,000 frames): a finding
# that needs more of what came before is reported as not reproduced, with its seed to run again.
HISTORY = 200


def cell_seed(master: int, stack: str) -> int:
    """The seed of one stack's campaign: the run's seed and the stack's id, so `--fuzz-seed`
    replays every stack of a run, and two stacks of one run get different frames."""
    return zlib.crc32(f"{master}:{stack}".encode())


@dataclass
class Finding:
    """What broke the stack, and the smallest sequence of frames that breaks a fresh one."""

    kind: str  # crash, panic, wedged (the oracle), or leak (memory)
    problems: list[str]
    batch: int  # the batch after which the oracle failed (0-based)
    frames_before: int  # frames the stack had taken before that batch
    frames: list[Sent] = field(default_factory=list)  # the reproducer (none for a leak or one not reproduced)
    history_needed: int | None = None  # batches before the failing one the reproducer needs; None: not reproduced
    replays: bool = False  # the reproducer's frames alone, sent as the pcap has them, broke a fresh stack
    shrink: dict[str, Any] = field(default_factory=dict)
    panic: str | None = None

    def as_dict(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "problems": self.problems,
            "batch": self.batch,
            "frames_before": self.frames_before,
            "reproducer_frames": len(self.frames),
            "reproducer_kinds": sorted({f.kind for f in self.frames}),
            "history_needed": self.history_needed,
            "replays": self.replays,
            "shrink": self.shrink,
        }


@dataclass
class FuzzResult:
    stack: str
    seed: int
    seconds_asked: float
    seconds: float = 0.0  # fuzzing (the shrinking's time is the finding's)
    total_seconds: float = 0.0  # with the shrinking
    frames: int = 0  # sent: taken by the lab's kernel
    batches: int = 0
    refused: Counter[str] = field(default_factory=Counter)  # frames the lab's kernel would not send, by kind and errno
    kinds: Counter[str] = field(default_factory=Counter)  # draws by Fuzzed.kind
    flaws: Counter[str] = field(default_factory=Counter)
    samples: list[tuple[int, int]] = field(default_factory=list)  # (frames so far, RSS bytes)
    growth: memory.Growth | None = None
    finding: Finding | None = None
    # The testbed the reproducer last broke, kept up for the evidence (the caller takes it down).
    evidence_bed: Testbed | None = None

    def as_dict(self) -> dict[str, Any]:
        """The "fuzz" record of results.json."""
        return {
            "stack": self.stack,
            "seed": self.seed,
            "seconds_asked": self.seconds_asked,
            "seconds": round(self.seconds, 1),
            "total_seconds": round(self.total_seconds, 1),
            "frames": self.frames,
            "batches": self.batches,
            "refused": dict(self.refused),
            "kinds": dict(sorted(self.kinds.items())),
            "memory": None
            if self.growth is None
            else {"per_100k_mb": round(self.growth.per_100k / memory.MB, 2), "rise_mb": round(self.growth.rise / memory.MB, 2)},
            "rss_mb": [round(r / memory.MB, 1) for _, r in self.samples[-1:]],
            "finding": None if self.finding is None else self.finding.as_dict(),
        }

    def summary(self) -> str:
        mem = (
            self.growth.describe()
            if self.growth is not None
            else "memory not judged (too few frames after the warm-up, or no process of its own)"
        )
        refused = sum(self.refused.values())
        return (
            f"{self.stack}: {self.frames:,} frames in {self.batches:,} batches over {self.seconds:.1f}s (seed {self.seed})"
            + (f", {refused} refused by the lab's kernel" if refused else "")
            + f"; {mem}"
        )


class FuzzCampaign:
    """`run()` fuzzes `spec` for `seconds` on a standard testbed (or `layout`) and returns a
    FuzzResult; a finding is shrunk within `shrink_seconds`."""

    def __init__(
        self,
        spec: StackSpec,
        plan: AddressPlan | None = None,
        *,
        seed: int,
        seconds: float,
        batch: int = BATCH,
        shrink_seconds: float = SHRINK_SECONDS,
        layout: Layout = standard_layout,
        say: Callable[[str], None] | None = None,
    ) -> None:
        self.spec, self.plan, self.layout = spec, plan or AddressPlan(), layout
        self.seed, self.seconds, self.batch, self.shrink_seconds = seed, seconds, batch, shrink_seconds
        self.say = say or (lambda _text: None)
        # GSO super-frames go to a stack that reads the virtio_net_hdr the kernel rebuilds for them.
        self.gso = AF_PACKET in spec.capabilities and bool(spec.driver.options_for(spec.variant).get("gso"))
        self.result = FuzzResult(spec.id, seed, seconds)
        self._db = InMemoryExampleDatabase()
        self._stop: Exception | None = None
        self._history: list[list[Drawn]] = []
        self._broken: Verdict | None = None

    # -- testbeds and batches (also the shrinker's: labkit.fuzz.shrink.Bench) -----------------------

    def testbed(self) -> tuple[Testbed, Liveness]:
        """A new testbed of the stack, its probes ready; torn down again if they cannot be."""
        bed = Testbed(self.spec, self.plan, self.layout).up()
        try:
            return bed, Liveness(bed).start()
        except BaseException:
            bed.down()
            raise

    def _target(self, bed: Testbed, probe: Liveness) -> Target:
        """Who is who on this testbed's link; behind a tap stack the Wire is the guest, and the
        outside is one more destination."""
        assert bed.wire is not None and bed.stack is not None
        plan = bed.plan
        v4, v6 = "ipv4" in probe.families, "ipv6" in probe.families
        g4, g6 = probe.guests.get("ipv4"), probe.guests.get("ipv6")
        return Target(
            wire_mac=bed.wire.mac,
            stack_mac=bed.wire.far_mac or bed.stack.mac,
            peer4=(g4.address if g4 else plan.peer4) if v4 else None,
            stack4=plan.stack4 if v4 else None,
            peer6=(g6.address if g6 else plan.peer6) if v6 else None,
            stack6=plan.stack6 if v6 else None,
            net4=str(plan.endpoints("ipv4").network) if v4 else None,
            net6=str(plan.endpoints("ipv6").network) if v6 else None,
            mtu=plan.mtu,
            also4=(g4.outside,) if g4 else (),
            also6=(g6.outside,) if g6 else (),
        )

    def _live(self, bed: Testbed, probe: Liveness, number: int) -> TcpConnection | None:
        """A TCP connection the Wire holds open for the batch (to the echo service: inside a veth
        stack, on the outside behind a tap stack); None where there is none or it does not open."""
        assert bed.wire is not None and bed.stack is not None
        if probe.echo is None or not (bed.stack.can(TCP) or probe.guests):
            return None
        family = probe.families[0]
        ends = bed.plan.endpoints(family)
        if family in probe.guests:
            ends = probe.guests[family].towards(probe.guests[family].outside)
        conn = TcpConnection(bed.wire, ends, port=probe.echo.port, local_port=LIVE_PORT + number % 10000, isn=LIVE_ISN)
        try:
            conn.connect(timeout=2.0)
        except (AssertionError, LabError, OSError):
            return None
        return conn

    @staticmethod
    def _live_of(conn: TcpConnection | None) -> Live | None:
        if conn is None or conn.rcv_nxt is None:
            return None
        return Live(
            conn.ends.family, conn.ends.peer, conn.ends.stack, conn.local_port, int(conn.port or 0), conn.snd_nxt, conn.rcv_nxt
        )

    def _send(self, bed: Testbed, probe: Liveness, frames: Sequence[Sent], conn: TcpConnection | None) -> tuple[Injector, Verdict]:
        injector = Injector(bed)
        try:
            injector.send(frames)
        finally:
            injector.close()
        if conn is not None:
            try:
                self._abort(bed, conn)
            except OSError:
                pass  # the link went with the stack: the oracle says so
        return injector, probe.check()

    @staticmethod
    def _abort(bed: Testbed, conn: TcpConnection) -> None:
        """Reset the live connection where the stack now expects the Wire's next byte: a fuzzed
        segment it accepted moved that on, and a RST anywhere else only gets a challenge ACK
        (RFC 5961), leaving the connection (and its echo's thread) behind for the next batch."""
        assert bed.wire is not None
        expected = conn.snd_nxt
        for frame in bed.wire.drain():
            if frame.outgoing:
                continue
            tcp = frame.packet.getlayer(TCPLayer)
            if tcp is not None and tcp.sport == conn.port and tcp.dport == conn.local_port and int(tcp.flags) & 0x10:
                expected = int(tcp.ack)
        conn.send(flags="R", seq=expected)
        if expected != conn.snd_nxt:
            conn.send(flags="R")

    def send_batch(self, data: st.DataObject, bed: Testbed, probe: Liveness, number: int) -> tuple[list[Drawn], int, Verdict]:
        """Draw and send one batch, then look: (the inputs, how many frames the kernel took, the verdict)."""
        target = self._target(bed, probe)
        conn = self._live(bed, probe, number)
        items = draw_batch(data, target, self.batch, self._live_of(conn), self.gso)
        injector, verdict = self._send(bed, probe, sent_of(items), conn)
        self.result.refused.update(injector.refused)
        return items, injector.sent, verdict

    def replay(self, bed: Testbed, probe: Liveness, frames: Sequence[Sent]) -> tuple[Verdict, Verdict]:
        return replay(bed, frames, probe)

    def send_reduced(
        self, data: st.DataObject, bed: Testbed, probe: Liveness, preamble: Sequence[Sent], live: bool
    ) -> tuple[list[Drawn], Verdict]:
        """A shrink candidate: the preamble as it was sent, then the reduced batch hypothesis draws."""
        injector = Injector(bed)
        try:
            injector.send(preamble)
        finally:
            injector.close()
        conn = self._live(bed, probe, self.result.batches - 1) if live else None
        items = draw_reduced(data, self._target(bed, probe), self._live_of(conn), self.gso)
        return items, self._send(bed, probe, sent_of(items), conn)[1]

    # -- the campaign ---------------------------------------------------------------------------------

    def run(self) -> FuzzResult:
        started = time.monotonic()
        bed: Testbed | None
        bed, probe = self.testbed()
        evidence: Testbed | None = None
        try:
            before = probe.check()
            if not before.alive:
                raise LabError(f"{self.spec.id} is not alive before any fuzzed frame: {'; '.join(before.problems)}")
            self._generate(bed, probe, started + self.seconds)
            self.result.seconds = time.monotonic() - started
            if self._broken is not None:
                self.say(
                    f"{self.spec.id}: broke after batch {self.result.batches - 1}: {'; '.join(self._broken.problems)}; shrinking"
                )
                try:
                    self.result.finding, evidence = self._shrink(self._broken)
                except Exception as exc:  # the finding stands unshrunk; the broken stack is its evidence
                    self.result.finding = self._unshrunk(self._broken)
                    self.result.finding.shrink = {"error": f"{type(exc).__name__}: {exc}"}
                if evidence is None:  # nothing reproduced it: the broken stack itself is the evidence
                    evidence, bed = bed, None
            else:
                self.result.growth = memory.growth(self.result.samples)
                if self.result.growth is not None and self.result.growth.leaks:
                    self.result.finding = Finding(
                        "leak", [f"its memory grew {self.result.growth.describe()}"], self.result.batches - 1, self.result.frames
                    )
                    evidence, bed = bed, None
        except BaseException:
            if evidence is not None and evidence is not bed:
                evidence.down()
            raise
        finally:
            self.result.total_seconds = time.monotonic() - started
            if bed is not None:
                bed.down()
        self.result.evidence_bed = evidence
        return self.result

    def _generate(self, bed: Testbed, probe: Liveness, deadline: float) -> None:
        """Batches until `deadline` or until the stack breaks, one hypothesis example each."""

        def generate(data: st.DataObject) -> None:
            if self._stop is not None:
                raise self._stop
            if time.monotonic() >= deadline:
                self._stop = Stop("time is up")
                raise self._stop
            try:
                items, taken, verdict = self.send_batch(data, bed, probe, self.result.batches)
            except Exception as exc:  # the lab's side failed, not the stack: stop, and say so after
                self._stop = exc
                raise
            self._history.append(items)
            del self._history[:-HISTORY]
            self.result.batches += 1
            self.result.frames += taken
            self.result.kinds.update(item.fuzzed.kind for item in items)
            self.result.flaws.update(flaw for item in items for flaw in item.fuzzed.flaws)
            if verdict.rss is not None:
                self.result.samples.append((self.result.frames, verdict.rss))
            if not verdict.alive:  # the Wire keeps this batch and the failed probes: the evidence
                self._broken = verdict
                self._stop = Stop("the stack broke")
                raise self._stop
            assert bed.wire is not None
            bed.wire.forget()  # the Wire's memory stays bounded; the history has what was sent
            if bed.sandbox is not None:
                bed.sandbox.forget()

        run_hypothesis(generate, [Phase.generate], self.seed, self._db)
        if self._stop is not None and not isinstance(self._stop, Stop):
            raise self._stop

    def _unshrunk(self, broken: Verdict) -> Finding:
        frames_before = self.result.frames - len(sent_of(self._history[-1]))
        return Finding(broken.kind(), list(broken.problems), self.result.batches - 1, frames_before, panic=broken.panic)

    def _shrink(self, broken: Verdict) -> tuple[Finding, Testbed | None]:
        finding = self._unshrunk(broken)
        shrunk = Shrinker(self, self.seed, self._db, self.shrink_seconds).shrink(self._history, broken)
        finding.shrink = shrunk.stats
        finding.history_needed = shrunk.history_needed
        if shrunk.frames:
            finding.frames = shrunk.frames
            finding.problems = list(shrunk.verdict.problems)
            finding.panic = shrunk.verdict.panic or finding.panic
            finding.replays = shrunk.replays
        return finding, shrunk.evidence
