"""The robustness suite's own logic without a stack: the memory fit, the reproducer file, the
seeds and the oracle's panic patterns."""

from __future__ import annotations

import os
import random

import pytest
from hypothesis import Phase
from hypothesis import strategies as st
from hypothesis.database import InMemoryExampleDatabase

from labkit.errors import LabError
from labkit.fuzz import memory
from labkit.fuzz.campaign import cell_seed
from labkit.fuzz.draws import Drawn, Stop, draw_batch, draw_reduced, reduced_example, run_hypothesis, stream
from labkit.fuzz.frames import Target
from labkit.fuzz.oracle import PANIC
from labkit.fuzz.replay import LINKTYPE_VNET, Sent, read_reproducer, write_reproducer
from labkit.net.plan import AddressPlan
from labkit.packet import pcapfile

MB = memory.MB


def samples(per_frame: float, frames: int = 40_000, step: int = 500, start: int = 80 * MB, noise: int = 0) -> list[tuple[int, int]]:
    rng = random.Random(7)
    return [(n, int(start + per_frame * n + rng.randint(-noise, noise))) for n in range(step, frames + 1, step)]


def test_a_steady_growth_over_the_limit_is_a_leak() -> None:
    found = memory.growth(samples(per_frame=2500))  # 250 MB per 100,000 frames
    assert found is not None and found.leaks, found
    assert found.per_100k == pytest.approx(2500 * memory.PER_FRAMES, rel=0.01)
    assert "over the 20 MB limit" in found.describe()


def test_growth_just_under_the_limit_is_not_a_leak() -> None:
    found = memory.growth(samples(per_frame=150))  # 15 MB per 100,000 frames
    assert found is not None and not found.leaks, found


def test_a_warm_up_then_a_plateau_is_not_a_leak() -> None:
    """A heap that grows to its size in the first frames (Go's, glibc's arenas), then stays."""
    warm = [(n, 80 * MB + min(n, 4000) * 5000) for n in range(500, 40_001, 500)]
    found = memory.growth(warm)
    assert found is not None and not found.leaks, found


def test_noise_without_growth_is_not_a_leak() -> None:
    found = memory.growth(samples(per_frame=0, noise=3 * MB))
    assert found is not None and not found.leaks, found


def test_a_steep_but_small_rise_over_few_frames_is_not_judged_a_leak() -> None:
    """4 MB over 8,000 frames extrapolates to 50 MB per 100,000, but is within the noise floor."""
    few = [(n, 80 * MB + n * 500) for n in range(500, 8001, 500)]
    found = memory.growth(few)
    assert found is not None and found.per_100k > memory.LIMIT and not found.leaks


def test_too_few_frames_after_the_warm_up_give_no_verdict() -> None:
    assert memory.growth([(100, MB), (200, 2 * MB)]) is None
    assert memory.growth([]) is None


def test_rss_reads_this_process_and_nothing_for_a_pid_that_is_gone() -> None:
    mine = memory.rss([os.getpid()])
    assert mine is not None and mine > MB
    assert memory.rss([2**22 + 12345]) is None


def test_a_reproducer_of_plain_frames_is_an_ethernet_pcap_and_reads_back() -> None:
    frames = [Sent(bytes(range(60)), kind="ipv4.options"), Sent(b"\xff" * 14 + b"x", kind="eth.short")]
    data = write_reproducer(frames)
    assert pcapfile.linktype(data) == pcapfile.LINKTYPE_ETHERNET
    assert [s.frame for s in read_reproducer(data)] == [f.frame for f in frames]


def test_a_reproducer_with_a_gso_frame_keeps_its_virtio_net_hdr() -> None:
    gso = Sent(b"\x01\x01" + bytes(8) + bytes(60), vnet=True, kind="gso.tcpv4")
    plain = Sent(bytes(range(64)), kind="udp.length")
    data = write_reproducer([plain, gso])
    assert pcapfile.linktype(data) == LINKTYPE_VNET
    back = read_reproducer(data)
    assert back == [Sent(plain.frame), Sent(gso.frame, vnet=True)]


def test_a_file_that_is_not_a_reproducer_is_refused_in_one_line() -> None:
    with pytest.raises(LabError, match=r"^x.pcap: not a pcap file .*allowed: ") as err:
        read_reproducer(b"hello, not a pcap at all, no no no", "x.pcap")
    assert "\n" not in str(err.value)
    other = pcapfile.write([(0.0, b"\x45" + bytes(30))], linktype=101)
    with pytest.raises(LabError, match=r"link type 101; allowed: 1 \(Ethernet\) or 147"):
        read_reproducer(other, "raw.pcap")


def test_each_stack_of_a_run_gets_its_own_seed_and_the_same_one_every_time() -> None:
    assert cell_seed(42, "gvisor") == cell_seed(42, "gvisor")
    assert cell_seed(42, "gvisor") != cell_seed(42, "linux")
    assert cell_seed(42, "gvisor") != cell_seed(43, "gvisor")


@pytest.mark.parametrize(
    "log",
    [
        b"I1202 01:02:03.000 1 x.go:1] ok\npanic: runtime error: index out of range [3] with length 3\n",
        b"fatal error: concurrent map writes\n",
        b"goroutine 17 [running]:\ngvisor.dev/gvisor/pkg/tcpip/stack.(*NIC).DeliverNetworkPacket(...)\n",
        b"slirp4netns: ../src/ip_input.c:200: ip_input: Assertion `m' failed.\n",
        b"*** stack smashing detected ***: terminated\n",
        b"passt: received signal SIGSEGV\n",
    ],
)
def test_the_panic_patterns_find_what_crashing_stacks_write(log: bytes) -> None:
    assert PANIC.search(log)


@pytest.mark.parametrize(
    "log",
    [
        b"D1202 01:02:03.000 1 sentry.go:1] recv: panicky name in a packet dump\n",
        b"slirp4netns: WARNING: bad packet dropped\n",
        b"I1202 01:02:03 1 x.go:1] [ 1: 1] Inject: 4 bytes\n",
    ],
)
def test_the_panic_patterns_leave_ordinary_log_lines_alone(log: bytes) -> None:
    assert PANIC.search(log) is None


def _target() -> Target:
    plan = AddressPlan()
    return Target(
        wire_mac="02:00:00:00:00:01", stack_mac="02:00:00:00:00:02",
        peer4=plan.peer4, stack4=plan.stack4, peer6=plan.peer6, stack6=plan.stack6,
        net4=str(plan.endpoints("ipv4").network), net6=str(plan.endpoints("ipv6").network),
    )  # fmt: skip


def test_a_seed_draws_the_same_stream_every_time_and_another_seed_another() -> None:
    first = stream(_target(), 11, 3)
    assert [[d.frames for d in b] for b in first] == [[d.frames for d in b] for b in stream(_target(), 11, 3)]
    assert [[d.frames for d in b] for b in first] != [[d.frames for d in b] for b in stream(_target(), 12, 3)]
    assert len(first) == 3 and all(len(b) == 32 for b in first)


def test_inputs_cut_from_a_batch_replay_in_the_reduced_form_exactly() -> None:
    """What the bisection keeps is handed to hypothesis's shrinker as an example of the reduced
    form: replayed, it must draw the very same inputs, or the shrinker would shrink something else."""
    target = _target()
    batches: list[list[Drawn]] = []

    def generate(data: st.DataObject) -> None:
        if len(batches) >= 4:
            raise Stop()
        batches.append(draw_batch(data, target, 32, None, False))

    run_hypothesis(generate, [Phase.generate], 5, InMemoryExampleDatabase())
    kept = [batches[3][i] for i in (2, 17, 30)]
    db = InMemoryExampleDatabase()
    db.save(b"any-key.secondary", reduced_example(kept))
    replayed: list[list[Drawn]] = []

    def shrink(data: st.DataObject) -> None:
        replayed.append(draw_reduced(data, target, None, False))
        raise Stop()  # "still breaks": hypothesis replays it, then tries smaller ones

    run_hypothesis(shrink, [Phase.reuse], 5, db)
    # The saved entry is under another test's key: nothing replays. Under the runner's own key it does.
    assert replayed == []
    key_db = InMemoryExampleDatabase()
    run_hypothesis(lambda data: (_ for _ in ()).throw(Stop()), [Phase.generate], 5, key_db)
    key = next(k for k in key_db.data if not k.endswith(b".secondary"))
    for value in list(key_db.fetch(key)):
        key_db.delete(key, value)
    key_db.save(key + b".secondary", reduced_example(kept))
    run_hypothesis(shrink, [Phase.reuse], 5, key_db)
    assert replayed, "hypothesis did not replay the reduced example"
    assert [d.fuzzed.frames for d in replayed[0]] == [d.fuzzed.frames for d in kept]
    assert [d.choices for d in replayed[0]] == [d.choices for d in kept]
