"""How large a burst each stack absorbs: of one burst of datagrams, how many reach a service,
as a ratio to what the kernel reference delivers of a burst like it in the same run.

The conformance check (linkdispatch/test_fanout.py::test_a_burst_within_the_kernels_backlog_is_absorbed)
sends only bursts the stack's link queue holds while the stack reads nothing, so its verdict does
not depend on how fast the stack is scheduled. What a stack takes beyond that, by reading while
the burst comes, does: that is this figure. gVisor's channels are PACKET_RX_RINGs of 32 frames
each, so the rest of a burst is what its dispatcher drains meanwhile.

Each repeat sends BURST frames (FLOWS flows of PER_FLOW numbered datagrams, interleaved, within
netdev_max_backlog) to the kernel and then to each stack; the figure is the median of REPEAT
per-repeat ratios. Bounded: a burst is over when the service reports nothing for QUIET seconds.
"""

from __future__ import annotations

import statistics

from labkit.packet.sockets import netdev_max_backlog
from labkit.packet.testbench import NumberedFlows
from labkit.stacks import GVisorStack, StackSpec, resolve
from labkit.testbed import Testbed

from .common import Figure

FLOWS, PER_FLOW = 64, 8
BURST = FLOWS * PER_FLOW
REPEAT = 5
QUIET = 0.5
# One per distinct receive path (channels, GSO, RX checksum), and txcsum, the variant issue 13 saw.
VARIANTS = ("gvisor", "gvisor-ch2", "gvisor-ch4", "gvisor-nogso", "gvisor-norxcsum", "gvisor-txcsum")
SINK_RCVBUF = 4 << 20


class _Bed:
    """A started testbed with a UDP sink, sending bursts to it."""

    def __init__(self, spec: StackSpec) -> None:
        self.bed = Testbed(spec).up()
        assert self.bed.stack is not None and self.bed.wire is not None
        self.stack, self.wire = self.bed.stack, self.bed.wire
        self.sink = self.stack.service("udp-sink", rcvbuf=SINK_RCVBUF)

    def burst(self) -> tuple[int, int]:
        """(datagrams delivered, frames the kernel dropped at the stack's channels) of one burst."""
        flows = NumberedFlows(self.wire, self.bed.plan.endpoints("ipv4"), self.sink.port, FLOWS, PER_FLOW)
        drops = self.stack.channel_drops()
        self.wire.inject(flows.frames())
        flows.collect(self.sink, len(flows), timeout=QUIET)
        self.wire.forget()  # the Wire's record is not needed here
        dropped = sum(n - drops.get(fd, 0) for fd, n in self.stack.channel_drops().items())
        return len(flows) - sum(map(len, flows.lost().values())), dropped

    def close(self) -> None:
        self.bed.down()


def run() -> list[Figure]:
    if not GVisorStack.availability().ok:
        print(f"burst benchmarks skipped: runsc unavailable; install: {GVisorStack.availability().install}")
        return []
    kernel = _Bed(resolve("linux")[0])
    figures = []
    try:
        assert kernel.bed.stack_end is not None
        backlog = netdev_max_backlog(kernel.bed.stack_end.ns.netns)
        figures.append(Figure("input backlog (netdev_max_backlog), the kernel's link queue", backlog, "frames"))
        for name in VARIANTS:
            bed = _Bed(resolve(name)[0])
            try:
                channels = bed.stack.link_sockets()
                ring = min(s.rx_ring.frame_nr if s.rx_ring else 0 for s in channels)
                delivered, ratios, drops = [], [], []
                for _ in range(REPEAT):
                    base, _ = kernel.burst()
                    got, dropped = bed.burst()
                    delivered.append(got)
                    drops.append(dropped)
                    ratios.append(got / base if base else 0.0)
            finally:
                bed.close()
            figures += [
                Figure(f"{name}: RX ring slots per channel ({len(channels)})", ring, "frames"),
                Figure(f"{name}: of a {BURST}-frame burst delivered", statistics.median(delivered), "datagrams"),
                Figure(f"{name}: of it dropped at the channels", statistics.median(drops), "frames"),
                Figure(f"{name}: burst absorbed / linux", statistics.median(ratios), "x"),
            ]
    finally:
        kernel.close()
    return figures
