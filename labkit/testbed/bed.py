"""A testbed: the standard topology, a started stack behind it and a Wire in front of it.

This is the unit a conformance check runs against. Building and tearing down is one call each,
and teardown removes everything even when the stack failed to start.
"""

from __future__ import annotations

import json
import shlex
import time
from collections.abc import Callable, Iterable
from pathlib import Path

from scapy.layers.l2 import ARP, Ether

from labkit.errors import LabInputError
from labkit.net import layouts
from labkit.net.layouts import End, TapEnd
from labkit.net.plan import AddressPlan
from labkit.net.topology import Link, Topology
from labkit.packet.sandbox_capture import SandboxCapture
from labkit.packet.wire import Wire
from labkit.stacks import Stack, StackSpec
from labkit.testbed import isolation
from labkit.testbed.evidence import (
    EvidenceStore,
    Piece,
    commands_piece,
    expectations_piece,
    log_piece,
    note_piece,
    pcap_piece,
    read_window,
)
from labkit.testbed.outside import Outside

# A layout declares a topology from an address plan: (topology, the stack's end, the Wire's end).
Layout = Callable[[AddressPlan], tuple[Topology, Link, Link]]


def standard_layout(plan: AddressPlan) -> tuple[Topology, Link, Link]:
    return plan.build()


def prebuild_tap(plan: AddressPlan) -> tuple[Topology, TapEnd]:
    """The tap layout of `plan`, up: about a second, most of it the uplink's veth waiting for the
    kernel to count it up (linkwatch), so the pool builds the next one while a check runs."""
    topology, end, _ = layouts.tap(plan)
    topology.up()
    return topology, end


class Testbed:
    """`layout` replaces the standard topology for checks about the topology itself; the Wire
    sits on the returned peer end and answers for the plan's peer addresses."""

    __test__ = False  # not a pytest test class, despite the name

    def __init__(
        self,
        spec: StackSpec,
        plan: AddressPlan | None = None,
        layout: Layout = standard_layout,
        prebuilt: tuple[Topology, TapEnd] | None = None,
    ) -> None:
        """`prebuilt`: a tap layout of this plan already up (`prebuild_tap`), for a stack that
        makes its own link; the testbed owns it from here on."""
        self.spec = spec
        self.plan = spec.driver.plan_for(spec.variant, plan or AddressPlan())
        self.layout = layout
        self._prebuilt = prebuilt
        self.topology: Topology | None = None
        self.stack: Stack | None = None
        self.wire: Wire | None = None
        self.stack_end: End | None = None  # a Link, or a TapEnd for a stack that makes its own link
        self.peer_end: End | None = None
        self.outside: Outside | None = None  # a tap stack's world behind it (labkit.testbed.outside)
        # The stack's end of the veth, recorded from inside its namespace (none for a tap stack:
        # the Wire already sits on the tap the stack reads).
        self.sandbox: SandboxCapture | None = None
        # What the driver read inside when the pool first handed the testbed out (the full look).
        self.inside_at_handout: dict[str, frozenset[str]] = {}
        # What a check adds to this testbed's evidence (a robustness finding's reproducer).
        self.extra_evidence: list[Piece] = []

    def up(self) -> Testbed:
        if self.topology is not None:
            return self  # already up (`with Testbed(...).up()` must not build a second one)
        makes_link = self.spec.driver.makes_link
        if makes_link and self.layout is not standard_layout:
            name = getattr(self.layout, "__name__", self.layout)
            raise LabInputError(
                f"{self.spec.id} makes its own link (a tap); layout {name} does not apply; allowed: the standard layout"
            )
        try:
            self._up_on_tap() if makes_link else self._up_on_veth()
        except BaseException:
            self.down()
            raise
        return self

    def _up_on_veth(self) -> None:
        self.topology, stack_end, peer_end = self.layout(self.plan)
        self.stack_end, self.peer_end = stack_end, peer_end
        self.topology.up()
        assert peer_end.ns.netns is not None and peer_end.mac is not None
        # The Wire listens before the stack starts, so the pcap has the stack's first frames;
        # so does the capture on the stack's end. That one opens first and keeps what came from
        # when the Wire listens: the kernel's own frames on the link just brought up (an MLD
        # report) are then in both captures or in neither, whenever they come.
        if stack_end.ns.netns is not None:
            self.sandbox = SandboxCapture(stack_end.ns.netns, stack_end.name)
        self.wire = Wire(peer_end.ns.netns, peer_end.name, mac=peer_end.mac, far_mac=stack_end.mac)
        if self.sandbox is not None:
            self.sandbox.keep_from(time.time())
        self._own_peer_addresses()
        self.stack = self.spec.create()
        self.stack.start(self.topology, stack_end)  # if this fails, down() still stops it

    def _up_on_tap(self) -> None:
        """A stack that makes its own link: start it, then put the Wire on its tap; the stack's
        MAC is what its driver says or, if it cannot say, what the stack answers to ARP."""
        if self._prebuilt is not None:
            (self.topology, end), self._prebuilt = self._prebuilt, None
        else:
            self.topology, end = prebuild_tap(self.plan)
        self.stack_end = self.peer_end = end
        self.stack = self.spec.create()
        self.stack.start(self.topology, end)
        assert end.mac is not None, f"{self.stack.id} did not report its tap's MAC"
        assert self.stack.workdir is not None
        self.outside = Outside(
            end,
            log=self.stack.workdir / "outside.log",
            faults=getattr(self.stack, "outside_faults", {}),
            rules=getattr(self.stack, "outside_rules", ""),
        )
        self.wire = Wire(end.netns, end.name, mac=end.mac, far_mac=end.stack_mac)
        self._own_peer_addresses()
        if end.stack_mac is None:
            reply = self.wire.send_and_expect(
                Ether(src=end.mac, dst="ff:ff:ff:ff:ff:ff") / ARP(op=1, hwsrc=end.mac, psrc=self.plan.peer4, pdst=self.plan.stack4),
                ARP(op=2, psrc=self.plan.stack4),
                timeout=3,
            )
            end.stack_mac = self.wire.far_mac = reply[ARP].hwsrc

    def _own_peer_addresses(self) -> None:
        assert self.wire is not None and self.peer_end is not None
        self.wire.disown_all()
        if not self.peer_end.addresses:  # a kernel peer (or the kernel behind a tap) answers for itself
            self.wire.own(self.plan.peer4)
            self.wire.own(self.plan.peer6)

    def reset(self) -> Testbed:
        """Ready a reused testbed for the next check: no services, no old frames, fresh log marks,
        and the Wire answering as the peer again (a check may have made it answer otherwise)."""
        assert self.stack is not None and self.wire is not None
        self.stack.reset()
        if self.outside is not None:
            self.outside.reset()
        self.wire.forget()
        if self.sandbox is not None:
            self.sandbox.forget()
        self._own_peer_addresses()
        return self

    def remember_inside(self) -> None:
        """Read the stack's inside (addresses, routes, sockets, processes) as later looks compare it."""
        assert self.stack is not None
        self.inside_at_handout = self.stack.state()

    def changes(self, full: bool) -> dict[str, str]:
        """What differs from when the testbed was handed out, kind -> how (labkit.testbed.isolation);
        `full` also compares the inside read by `remember_inside`."""
        before = isolation.handed_out(self, self.inside_at_handout if full else {})
        return isolation.differences(before, isolation.look(self, full))

    def healthy(self) -> bool:
        return self.stack is not None and self.wire is not None and self.stack.healthy()

    def save_evidence(self, store: EvidenceStore, check: str, since_start: bool = False) -> list[Path]:
        """Keep what a person needs to debug `check`'s failure on this testbed, in `store`: the
        Wire's pcap and what the check expected of it, the stack's side of the link (the capture on
        its end of the veth, and its own capture where it keeps one), the uplink's pcaps, the
        stack's options and command lines, and the lines its logs got in the check's window
        (labkit.testbed.evidence).

        The window begins where the stack's logs were marked: at the pool's handout (a reused or
        newly started pooled stack: its boot is the pool's, not the check's), or, `since_start`,
        where its logs begin (a stack started for this check alone: a `fresh` one, one the check
        made itself, one that is never pooled)."""
        spec = self.spec.id
        pieces: list[Piece] = []
        until = time.time()  # the stack's side is cut where the Wire's pcap is read: the same window
        if self.wire is not None:
            pieces.append(pcap_piece("", self._pcap(store, check, self.wire)))
            if self.wire.expectations:
                tmp = store.scratch(check, spec, "expects.json")
                try:
                    pieces.append(expectations_piece(self.wire.write_expectations(tmp).read_bytes()))
                finally:
                    tmp.unlink(missing_ok=True)
        pieces += self._stack_side(since_start, until)
        if self.outside is not None:  # what the stack's host sockets put on the uplink
            for n, watch in enumerate(self.outside.watches):
                pieces.append(pcap_piece(f"uplink{n or ''}", self._pcap(store, check, watch)))
        if self.stack is not None:
            pieces.append(commands_piece(self._commands()))
            for name, path in self.stack.logs().items():
                window = read_window(path, 0 if since_start else self.stack.log_offset(path))
                if window:
                    pieces.append(log_piece(name, window))
        pieces += self.extra_evidence
        return store.keep(check, spec, pieces)

    def _stack_side(self, since_start: bool, until: float) -> list[Piece]:
        """The link as the stack's side saw it in the Wire's window (from the Wire's last forget,
        also one the check asked for, to when its pcap was read): the capture on the stack's end
        of the veth, with a note of what the kernel dropped there, and the stack's own capture
        where it keeps one (from `since` on: it may write a record late)."""
        since = self.wire.since if self.wire is not None else 0.0
        pieces = []
        if self.sandbox is not None:
            pieces.append(pcap_piece("sandbox", self.sandbox.pcap(since, until)))
            if lost := self.sandbox.dropped():
                pieces.append(
                    note_piece(
                        "sandbox.drops",
                        f"The kernel dropped {lost} frame(s) at the lab's capture on {self.sandbox.ifname} (its receive "
                        "buffer was full; PACKET_STATISTICS): sandbox.pcap misses them. They reached the stack's end of "
                        "the link all the same; the capture is the lab's, not the stack's.\n",
                    )
                )
        own = getattr(self.stack, "own_capture", None)
        if own is not None:
            data = own(since, since_start)
            if data is not None:
                pieces.append(pcap_piece("netstack", data))
        return pieces

    def _pcap(self, store: EvidenceStore, check: str, wire: Wire) -> bytes:
        tmp = store.scratch(check, self.spec.id, "pcap")
        try:
            return wire.write_pcap(tmp).read_bytes()
        finally:
            tmp.unlink(missing_ok=True)

    def _commands(self) -> str:
        """The stack's id, options and the command lines that started it: what it takes to start
        it again by hand."""
        assert self.stack is not None
        lines = [f"# {self.stack.id}", f"options: {json.dumps(self.stack.options, sort_keys=True, default=str)}"]
        lines += [shlex.join(argv) for argv in self.stack.command_lines()]
        return "\n".join(lines) + "\n"

    def down(self) -> None:
        errors: list[BaseException] = []
        for step in (
            self.outside.close if self.outside else None,
            self.wire.close if self.wire else None,
            self.sandbox.close if self.sandbox else None,
            self.stack.stop if self.stack else None,
            self.topology.down if self.topology else None,
        ):
            if step is None:
                continue
            try:
                step()
            except Exception as exc:  # finish the teardown, then report the first failure
                errors.append(exc)
        self.wire = self.stack = None
        self.sandbox = None
        self.outside = None
        self.topology = None
        if errors:
            raise errors[0]

    close = down

    def __enter__(self) -> Testbed:
        return self.up()

    def __exit__(self, *exc: object) -> None:
        self.down()


def down_all(beds: Iterable[Testbed]) -> None:
    """Take every testbed down, each even when one before it fails; then raise the first failure."""
    errors: list[Exception] = []
    for bed in beds:
        try:
            bed.down()
        except Exception as exc:  # tear down the others all the same
            errors.append(exc)
    if errors:
        raise errors[0]
