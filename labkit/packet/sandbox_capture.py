"""The stack's side of the link: a recording packet socket on the sandbox end of the veth.

The Wire records the peer end. When an expected frame never shows there, a reader wants to know
which side lost it: did the Wire's frame reach the stack's end (and the stack ignored it), did the
stack send its answer (and it was lost on the way)? A capture on the stack's end says so.

It must cost nothing the checks can notice. The lab opens it in the stack's namespace before the
stack starts (so it has the stack's first frames), and never reads it while a check runs: the
kernel queues each frame's copy, stamped on arrival, and the lab reads the queue only when a
failed check's evidence is saved, or drains it when a pooled testbed is reset for the next
check. The queue is bounded (`BUFFER`): a bulk check overflows it, and then the kernel counts
what it dropped (PACKET_STATISTICS), which the evidence says. The socket never sends, never joins
a fanout group (so it takes nothing from a stack's AF_PACKET channels: each socket outside a
group gets its own copy of every frame), and is held by the lab, not by a process of the stack,
so nothing that lists the stack's sockets or processes counts it; only the namespace's own
table of packet sockets (`/proc/net/packet`, `ss -0` inside the namespace) shows one more row,
and no look of the lab reads that table whole.
"""

from __future__ import annotations

import socket
import struct
import time

from labkit.lifecycle import janitor
from labkit.net.netns import NetNS
from labkit.packet import pcapfile
from labkit.packet.frames import READ_BATCH, Frame, open_packet_socket, read_frames
from labkit.uapi import PACKET_STATISTICS, SO_RCVBUFFORCE, SOL_PACKET

BUFFER = 1 << 20  # SO_RCVBUFFORCE (the kernel doubles it): a few thousand small frames


PULL_PASSES = 8  # batches of READ_BATCH frames read at most per pull (the buffer holds far fewer)
PULL_SECONDS = 1.0


class SandboxCapture:
    """Frames on `ifname` in `ns` (the stack's end), both directions, recorded by the kernel."""

    def __init__(self, ns: NetNS, ifname: str, buffer: int = BUFFER) -> None:
        self.ns = ns
        self.ifname = ifname
        self._sock = open_packet_socket(ns, ifname, record=True)
        try:
            self._sock.setsockopt(socket.SOL_SOCKET, SO_RCVBUFFORCE, buffer)
        except BaseException:
            self._sock.close()
            raise
        self._frames: list[Frame] = []
        self._since = 0.0  # frames stamped before this belong to an earlier check
        self._dropped = 0
        janitor.track(self)

    def __repr__(self) -> str:
        return f"SandboxCapture({self.ns.name}:{self.ifname})"

    def fileno(self) -> int:
        return self._sock.fileno()

    def _pull(self, keep: bool = True) -> None:
        """Read what is queued. Bounded: a stack still sending (a bulk check cut short) refills
        the queue as it is read, so this stops after PULL_PASSES batches or PULL_SECONDS, the
        frames that came later being no part of the window being saved or dropped."""
        deadline = time.monotonic() + PULL_SECONDS
        for _ in range(PULL_PASSES):
            n = 0
            for frame in read_frames(self._sock):
                n += 1
                if keep and frame.ts >= self._since:
                    self._frames.append(frame)
            if n < READ_BATCH or time.monotonic() > deadline:
                return

    def _statistics(self) -> tuple[int, int]:
        """(frames, drops) the kernel counted since the last read, which resets them."""
        packets, drops = struct.unpack_from("II", self._sock.getsockopt(SOL_PACKET, PACKET_STATISTICS, 8))
        return packets, drops

    def keep_from(self, since: float) -> None:
        """Keep only frames stamped from `since` on (the moment the Wire began to listen)."""
        self._since = since

    def forget(self) -> None:
        """Drop what was recorded so far (the queue is read dry, the drop count reset): a reused
        testbed's next check starts a capture of its own."""
        self._since = time.time()
        self._pull(keep=False)
        self._frames.clear()
        self._statistics()
        self._dropped = 0

    def frames(self, since: float = 0.0, until: float = float("inf")) -> list[Frame]:
        """What was recorded since the last `forget`, stamped from `since` up to `until`."""
        self._pull()
        return [f for f in self._frames if since <= f.ts <= until]

    def dropped(self) -> int:
        """Frames the kernel could not queue (the buffer was full) since the last `forget`."""
        self._dropped += self._statistics()[1]
        return self._dropped

    def pcap(self, since: float = 0.0, until: float = float("inf")) -> bytes:
        return pcapfile.write((f.ts, f.data) for f in self.frames(since, until))

    def close(self) -> None:
        janitor.untrack(self)
        self._sock.close()

    def __enter__(self) -> SandboxCapture:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
