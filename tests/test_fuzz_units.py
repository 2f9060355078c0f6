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
from labkit.fuzz.oracle import PANIC, Verdict
from labkit.fuzz.replay import LINKTYPE_VNET, Sent, read_reproducer, write_reproducer
from labkit.fuzz.shrink import Shrinker
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


STREAM_DIGEST = """
import hashlib, sys
sys.path.insert(0, sys.argv[1])
from hypothesis import given, settings
from labkit.fuzz.draws import stream
from labkit.fuzz.frames import Target, frames
t = Target(wire_mac="02:00:00:00:00:01", stack_mac="02:00:00:00:00:02", peer4="198.18.0.1", stack4="198.18.0.2",
           peer6="2001:db8::1", stack6="2001:db8::2", net4="198.18.0.0/24", net6="2001:db8::/64")
for name in sys.argv[2:]:
    if name == "--another-hypothesis-test-first":
        given(frames(t))(settings(max_examples=100, database=None)(lambda f: None))()
    else:
        __import__(name)
print(hashlib.sha256(b"".join(f for batch in stream(t, 20261202, 40) for d in batch for f in d.frames)).hexdigest())
"""


def test_a_seed_sends_the_same_frames_whatever_else_the_process_imported() -> None:
    """Hypothesis draws literals it finds in the project's own modules: unless the lab turns that
    off, a pytest worker that imported more of the project would send other frames for a seed."""
    import subprocess
    import sys

    from tests.conftest import ROOT

    def digest(*modules: str) -> str:
        done = subprocess.run(
            [sys.executable, "-c", STREAM_DIGEST, str(ROOT), *modules], capture_output=True, text=True, timeout=120, cwd=ROOT
        )
        assert done.returncode == 0, done.stderr[-2000:]
        return done.stdout.strip()

    plain = digest()
    assert plain == digest("examples.mutants", "tests.test_fuzz_mutants", "reports.html", "labkit.agent")
    # A hypothesis test that ran first in the worker (unpatched) fills hypothesis's cache of constants.
    assert plain == digest("examples.mutants", "--another-hypothesis-test-first")


# -- the shrinker, on a pretend stack: it breaks when given the frames the test says -------------


class FakeBed:
    def __init__(self) -> None:
        self.up = True

    def down(self) -> None:
        self.up = False


class FakeProbe:
    def check(self) -> Verdict:
        return Verdict()


class FakeBench:
    """A "stack" that breaks (wedged) when the frames it is given contain `needs` in that order,
    anywhere; `trouble`: the numbers (from 1) of the testbeds the lab fails to bring up."""

    def __init__(self, needs: list[bytes], trouble: frozenset[int] = frozenset()) -> None:
        self.needs, self.trouble = needs, trouble
        self.beds: list[FakeBed] = []

    def testbed(self) -> tuple[FakeBed, FakeProbe]:
        if len(self.beds) + 1 in self.trouble:
            self.beds.append(FakeBed())
            raise LabError("the testbed did not come up")
        bed = FakeBed()
        self.beds.append(bed)
        return bed, FakeProbe()

    def replay(self, bed: FakeBed, probe: FakeProbe, frames: list[Sent]) -> tuple[Verdict, Verdict]:
        sent = iter(f.frame for f in frames)
        broken = all(any(f == want for f in sent) for want in self.needs)
        return Verdict(), Verdict(problems=["echo: no echo reply"] if broken else [])

    def send_reduced(self, *args: object) -> tuple[list[Drawn], Verdict]:
        raise AssertionError("not in these tests: hypothesis's step needs the real strategies")


def items(*frames: bytes) -> list[Drawn]:
    from labkit.fuzz.frames import Fuzzed

    return [Drawn(Fuzzed("udp.datagram", (f,)), 0, (n,)) for n, f in enumerate(frames)]


def shrinker(bench: FakeBench) -> Shrinker:
    return Shrinker(bench, 1, InMemoryExampleDatabase(), seconds=30)  # type: ignore[arg-type]


def test_bisection_finds_the_one_input_among_equal_ones() -> None:
    batch = items(*[b"A"] * 20, b"X", *[b"A"] * 11)
    bench = FakeBench([b"X"])
    done = shrinker(bench).shrink([items(b"B") * 3, batch], Verdict(problems=["echo: no echo reply"]))
    assert [f.frame for f in done.frames] == [b"X"]
    assert done.history_needed == 0 and done.replays
    assert done.stats["after_bisection"] == 1 and done.stats["candidates"] <= 16, done.stats
    assert all(not bed.up for bed in bench.beds if bed is not done.evidence)
    assert done.evidence is not None and done.evidence.up


def test_bisection_finds_the_earlier_batch_a_finding_needs_and_cuts_it_too() -> None:
    history = [items(b"C", b"D"), items(b"E", b"P", b"F"), items(b"G"), items(b"H", b"X", b"I")]
    bench = FakeBench([b"P", b"X"])
    done = shrinker(bench).shrink(history, Verdict(problems=["echo: no echo reply"]))
    assert done.history_needed == 2
    assert [f.frame for f in done.frames] == [b"P", b"X"]


def test_the_lab_failing_on_a_candidate_is_not_the_stack_breaking() -> None:
    batch = items(b"A", b"B", b"X", b"C")
    bench = FakeBench([b"X"], trouble=frozenset({2, 3}))  # the first halves: [A, B] and [X, C]
    done = shrinker(bench).shrink([batch], Verdict(problems=["echo: no echo reply"]))
    assert [f.frame for f in done.frames] == [b"X"]  # found by the quarters
    assert done.stats["lab_errors"] == 2


def test_a_finding_no_fresh_stack_repeats_is_reported_as_not_reproduced() -> None:
    bench = FakeBench([b"never sent"])
    done = shrinker(bench).shrink([items(b"A"), items(b"B")], Verdict(problems=["echo: no echo reply"]))
    assert done.frames == [] and done.history_needed is None and done.stats["reproduced"] is False
    assert all(not bed.up for bed in bench.beds)


def test_replay_refuses_a_pcap_with_an_address_outside_the_lab_in_one_line() -> None:
    from scapy.layers.inet import ICMP, IP, UDP, IPerror, UDPerror
    from scapy.layers.l2 import ARP, Ether

    good = bytes(Ether() / IP(src="198.18.0.1", dst="198.18.0.2") / UDP())
    quoted = bytes(
        Ether() / IP(src="198.18.0.1", dst="198.18.0.2") / ICMP(type=3) / IPerror(src="198.18.0.2", dst="8.8.8.8") / UDPerror()
    )
    arp = bytes(Ether() / ARP(psrc="10.0.0.1", pdst="198.18.0.2"))
    assert [s.frame for s in read_reproducer(write_reproducer([Sent(good)]))] == [good]
    for bad, address in ((quoted, "8.8.8.8"), (arp, "10.0.0.1")):
        with pytest.raises(
            LabError, match=rf"^r.pcap: frame 1 carries {address}, not a lab address; allowed: 198\.18\.0\.0/15"
        ) as err:
            read_reproducer(write_reproducer([Sent(good), Sent(bad)]), "r.pcap")
        assert "\n" not in str(err.value)


def test_a_gzipped_reproducer_reads_as_the_plain_one() -> None:
    import gzip

    frames = [Sent(bytes(Ether_frame())), Sent(bytes(Ether_frame()) + b"x")]
    assert read_reproducer(gzip.compress(write_reproducer(frames))) == [Sent(f.frame) for f in frames]


def Ether_frame() -> bytes:
    from scapy.layers.inet import IP
    from scapy.layers.l2 import Ether

    return bytes(Ether() / IP(src="198.18.0.1", dst="198.18.0.2"))
