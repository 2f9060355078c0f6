"""Malformed frames against every stack, judged by whether the stack lives through them.

A sandboxed stack faces untrusted frames from the container's side: a frame that panics
netstack, or wedges slirp4netns or pasta, takes every container behind it offline. Each stack
gets batches of malformed frames from hypothesis's strategies (labkit.fuzz.frames: every layer
from Ethernet to TCP, fragments, segments into a live connection, and GSO super-frames where
the stack reads virtio_net_hdr), and after every batch the liveness oracle asks it for ARP/NDP,
an echo and a TCP round trip, looks at its processes and logs, and reads its memory
(labkit.fuzz.oracle). When it breaks, the frames are shrunk to the fewest that break a fresh
stack, written as a pcap with the command that replays it (labkit.fuzz.campaign).

The conformance run gives each stack a smoke of --fuzz-seconds (8 s); `tox -e fuzz` and the
nightly give it minutes. --fuzz-seed replays a run's frames.
"""

from __future__ import annotations

import json
import shlex
from collections.abc import Callable

import pytest
from scapy.layers.l2 import Ether

from labkit.fuzz.campaign import Finding, FuzzCampaign, FuzzResult, cell_seed
from labkit.fuzz.replay import Sent, write_reproducer
from labkit.net.plan import AddressPlan
from labkit.packet.layers.virtio_net import VirtioNetHdr
from labkit.pytest_plugin.fixtures import require
from labkit.pytest_plugin.hooks import check_id, evidence_store
from labkit.pytest_plugin.options import LabSettings
from labkit.stacks import StackSpec
from labkit.testbed import Testbed
from labkit.testbed.evidence import Piece, note_piece, pcap_frames

# GSO super-frames reach a stack that reads virtio_net_hdr: its verdict may differ with it.
pytestmark = [pytest.mark.varies_with("gso")]
SHOWN = 6  # reproducer frames decoded in the failure message


def test_survives_malformed_frames(
    request: pytest.FixtureRequest,
    stack_spec: StackSpec,
    plan: AddressPlan,
    lab_settings: LabSettings,
    keep_evidence: Callable[[Testbed, list[Piece]], None],
) -> None:
    require(request, stack_spec)
    if not {"ipv4", "ipv6"} & stack_spec.capabilities:
        pytest.skip(f"{stack_spec.id} lacks capabilities: ipv4, ipv6 (it has no network to send frames to)")
    seed = cell_seed(lab_settings.fuzz_seed, stack_spec.id)
    campaign = FuzzCampaign(
        stack_spec, plan, seed=seed, seconds=lab_settings.fuzz_seconds, shrink_seconds=lab_settings.fuzz_shrink_seconds
    )
    result = campaign.run()
    if result.evidence_bed is not None:  # from here on the fixture takes it down, whatever happens
        keep_evidence(result.evidence_bed, [])
    record = {**result.as_dict(), "run_seed": lab_settings.fuzz_seed}
    request.node.user_properties.append(("fuzz", json.dumps(record)))
    print(result.summary())
    finding = result.finding
    if finding is None:
        assert result.frames > 0, f"{stack_spec.id}: no fuzzed frame was sent in {result.seconds:.1f}s"
        return
    again = shlex.join(
        ["pytest", "suites/robustness", "--stack", stack_spec.id, "--fuzz-seed", str(lab_settings.fuzz_seed),
         "--fuzz-seconds", f"{lab_settings.fuzz_seconds:g}"]
    )  # fmt: skip
    store = evidence_store(request.config)
    pcap = store.folder(check_id(request.node)) / f"{store.prefix(stack_spec.id)}.reproducer.pcap"
    replay = shlex.join(["labkit", "replay", str(pcap), "--stack", stack_spec.id])
    if result.evidence_bed is not None:
        pieces = [note_piece("fuzz", json.dumps({**record, "rss_samples": result.samples}, indent=1) + "\n")]
        if finding.frames:
            pieces += [reproducer_piece(stack_spec.id, finding.frames), note_piece("replay", f"{replay}\n{again}\n")]
        keep_evidence(result.evidence_bed, pieces)
    pytest.fail(describe(result, finding, replay, again), pytrace=False)


def describe(result: FuzzResult, finding: Finding, replay: str, again: str) -> str:
    """The first line says what happened (the report groups findings by it); then the reproducer,
    decoded, and how to get it again."""
    lines = [f"{result.stack} {finding.kind} under malformed frames: {finding.problems[0]}"]
    lines += [f"  also: {p}" for p in finding.problems[1:3]]
    lines.append(f"after batch {finding.batch} ({finding.frames_before:,} frames before it); seed {result.seed}")
    if finding.kind == "leak":
        lines.append(result.summary())
        lines.append(f"again: {again}")
        return "\n".join(lines)
    if finding.history_needed is None:
        lines.append("no fresh stack broke on the run's frames (its state came from elsewhere, or it breaks by chance)")
    else:
        shrink = finding.shrink
        capped = ", budget spent" if shrink.get("capped") else ""
        lines.append(
            f"reproducer: {len(finding.frames)} frame(s), shrunk from {shrink.get('from_frames')} on "
            f"{shrink.get('candidates')} fresh stacks in {shrink.get('seconds')}s{capped}"
            + (f"; it needs {finding.history_needed} earlier batch(es)" if finding.history_needed else "")
        )
        first = max(0, len(finding.frames) - SHOWN)
        lines += [f"  {first + n}: {decoded(f)}" for n, f in enumerate(finding.frames[first:])]
        if finding.replays:
            lines.append(f"replay: {replay}")
        else:
            lines.append(
                f"the pcap alone did not break a fresh stack again (a live connection, or timing); replay the run: {again}"
            )
    if finding.panic:
        lines.append("panic: " + finding.panic[:600])
    return "\n".join(lines)


def reproducer_piece(stack: str, frames: list[Sent]) -> Piece:
    """The reproducer as `<stack>.reproducer.pcap`, never gzipped and never shared with another
    stack's equal one (the evidence store keeps equal pieces once): the failure message names
    this very file for `labkit replay`."""
    data = write_reproducer(frames)
    return Piece("reproducer.pcap", data, stack.encode() + b"\0" + pcap_frames(data))


def decoded(sent: Sent) -> str:
    try:
        pkt = VirtioNetHdr(sent.frame) if sent.vnet else Ether(sent.frame)
        return f"[{sent.kind}] {pkt.summary()} ({len(sent.frame)} bytes)"
    except Exception:  # a frame scapy cannot take apart is still worth naming
        return f"[{sent.kind}] {len(sent.frame)} bytes: {sent.frame[:32].hex()}"
