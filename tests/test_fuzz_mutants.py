"""The robustness suite is able to fail: a stack that dies on one marked frame among thousands is
caught and shrunk to that frame, and a stack whose memory grows with every frame is caught by the
leak check. Both are real Linux namespaces broken on purpose (examples/mutants.py)."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

from examples.mutants import MarkedFrameDeathLinux
from labkit.fuzz import memory
from labkit.fuzz.campaign import FuzzCampaign
from labkit.fuzz.draws import stream
from labkit.fuzz.frames import Target
from labkit.fuzz.replay import Sent, write_reproducer
from labkit.net.plan import AddressPlan
from labkit.stacks import StackSpec
from labkit.stacks.linux import LinuxStack
from tests.conftest import NEEDS_NFT, ROOT, run_pytest

SEED = 20261202
MARKED_BATCH = 45  # ~2,000 frames before it: one marked frame among thousands
MARKER_BYTES = 6


def choose_marker(plan: AddressPlan) -> tuple[int, int, bytes, bytes]:
    """A frame of the seed's stream, from batch MARKED_BATCH on, and bytes of it that no frame
    sent up to it has at that offset: (batch, offset, marker, the frame). Hypothesis may draw a
    batch twice in a row; such a batch has no bytes of its own, and the next one is taken."""
    target = Target(
        wire_mac="02:00:00:00:00:01", stack_mac="02:00:00:00:00:02",
        peer4=plan.peer4, stack4=plan.stack4, peer6=plan.peer6, stack6=plan.stack6,
        net4=str(plan.endpoints("ipv4").network), net6=str(plan.endpoints("ipv6").network), mtu=plan.mtu,
    )  # fmt: skip
    drawn = stream(target, SEED, MARKED_BATCH + 20)
    for batch in range(MARKED_BATCH, len(drawn)):
        sent = [f for b in drawn[: batch + 1] for d in b for f in d.frames]  # all the campaign sends until it breaks
        for candidate in drawn[batch]:
            if len(candidate.frames) != 1:
                continue
            frame = candidate.frames[0]
            for offset in range(14, len(frame) - MARKER_BYTES):
                marker = frame[offset : offset + MARKER_BYTES]
                if len(set(marker)) < 4:  # zeroes and fill bytes are everywhere
                    continue
                if sum(1 for f in sent if f[offset : offset + MARKER_BYTES] == marker) == 1:
                    return batch, offset, marker, frame
    raise AssertionError(f"no frame of batches {MARKED_BATCH} to {len(drawn) - 1} has bytes of its own")


@NEEDS_NFT
def test_a_stack_that_dies_on_one_marked_frame_is_caught_and_shrunk_to_it(no_leftovers: None) -> None:
    plan = AddressPlan()
    batch, offset, marker, _frame = choose_marker(plan)
    mutant = MarkedFrameDeathLinux.marked(offset, marker)
    said: list[str] = []
    result = FuzzCampaign(StackSpec(mutant, ""), plan, seed=SEED, seconds=60, shrink_seconds=100, say=said.append).run()
    try:
        finding = result.finding
        assert finding is not None, f"the mutant was not caught: {result.summary()}"
        assert finding.kind == "wedged", finding
        assert finding.batch == batch, f"it broke after batch {finding.batch}, the marked frame is in batch {batch}"
        assert finding.frames_before > 1500, finding.frames_before
        assert any("no answer" in p or "no echo reply" in p for p in finding.problems), finding.problems
        assert finding.history_needed == 0, finding
        assert len(finding.frames) == 1, [f.kind for f in finding.frames]
        assert finding.frames[0].frame[offset : offset + len(marker)] == marker
        assert finding.replays, finding
        assert finding.shrink["from_frames"] >= 32 and finding.shrink["to_frames"] == 1, finding.shrink
        assert result.evidence_bed is not None
    finally:
        if result.evidence_bed is not None:
            result.evidence_bed.down()
    # The same stream on the kernel itself: nothing found.
    clean = FuzzCampaign(StackSpec(LinuxStack, ""), plan, seed=SEED, seconds=6).run()
    if clean.evidence_bed is not None:
        clean.evidence_bed.down()
    assert clean.finding is None and clean.frames > 500, clean.summary()


@NEEDS_NFT
def test_labkit_replay_breaks_the_mutant_and_not_the_kernel(tmp_path: Path, no_leftovers: None) -> None:
    """The default mutant dies on its marker at byte 14: a one-frame reproducer holding it."""
    frame = bytes.fromhex("020000000002020000000001") + b"\x88\xb5" + MarkedFrameDeathLinux.marker + bytes(40)
    pcap = tmp_path / "x.reproducer.pcap"
    pcap.write_bytes(write_reproducer([Sent(frame)]))

    def replay(stack: str) -> subprocess.CompletedProcess:
        argv = [sys.executable, "-m", "labkit", "replay", str(pcap), "--stack", stack]
        return subprocess.run(argv, cwd=ROOT, capture_output=True, text=True, timeout=120)

    broke = replay("examples.mutants:MarkedFrameDeathLinux")
    assert broke.returncode == 1, broke.stdout + broke.stderr
    assert re.search(r"BROKE \(wedged\); 1 of 1 frame\(s\) sent: ARP for 198\.18\.0\.2: no answer", broke.stdout), broke.stdout
    survived = replay("linux")
    assert survived.returncode == 0 and "survived; 1 of 1 frame(s) sent" in survived.stdout, survived.stdout + survived.stderr
    bad = subprocess.run(
        [sys.executable, "-m", "labkit", "replay", str(tmp_path / "none.pcap"), "--stack", "linux"],
        cwd=ROOT, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert bad.returncode == 2 and len(bad.stderr.strip().splitlines()) == 1, bad.stderr


def test_a_stack_whose_memory_grows_per_frame_is_caught_by_the_leak_check(tmp_path: Path) -> None:
    """Through the suite, as a user runs it: the leaky Linux fails with a leak and its figures,
    the kernel beside it passes, and results.json records both campaigns with their seed."""
    done = run_pytest(
        "suites/robustness", "--stack", "linux,examples.mutants:LeakyLinux", "--fuzz-seconds", "30",
        "--fuzz-seed", str(SEED), "-n", "0", "-p", "no:randomly", "--lab-report", str(tmp_path),
        "--lab-evidence", str(tmp_path / "evidence"), timeout=400,
    )  # fmt: skip
    out = done.stdout
    assert done.returncode == 1, out[-3000:]
    assert re.search(r"\b1 failed, 1 passed\b", out.strip().splitlines()[-1]), out[-3000:]
    assert re.search(r"linux-leaky leak under malformed frames: its memory grew [\d.]+ MB per 100,000 frames \(over", out), out[
        -3000:
    ]
    results = {r["stack"]: r for r in json.loads((tmp_path / "results.json").read_text())["results"]}
    leaky, kernel = results["linux-leaky"], results["linux"]
    assert leaky["status"] == "failed" and kernel["status"] == "passed"
    assert leaky["fuzz"]["run_seed"] == SEED and kernel["fuzz"]["run_seed"] == SEED
    assert leaky["fuzz"]["finding"]["kind"] == "leak"
    assert leaky["fuzz"]["memory"]["per_100k_mb"] > memory.LIMIT / memory.MB
    assert kernel["fuzz"]["memory"] is None  # the kernel has no process of its own to weigh
    assert kernel["fuzz"]["frames"] > 1000
    assert any(p.endswith("linux-leaky.fuzz.txt") for p in leaky["evidence"]), leaky["evidence"]


def test_bad_fuzz_options_are_refused_in_one_line() -> None:
    done = run_pytest("suites/robustness", "--stack", "linux", "--fuzz-seconds", "0", timeout=60)
    assert done.returncode != 0
    assert "bad --fuzz-seconds 0; allowed: more than 0" in done.stdout + done.stderr
    done = run_pytest("suites/robustness", "--stack", "linux", "--fuzz-seed", "-3", timeout=60)
    assert done.returncode != 0
    said = [line for line in (done.stdout + done.stderr).splitlines() if "--fuzz-seed" in line]
    assert said == [line for line in said if "bad --fuzz-seed -3; allowed: 0 to 4294967295" in line] and said, (
        done.stdout + done.stderr
    )
