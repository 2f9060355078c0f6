"""The stack's side of the link in a failed check's evidence: the capture on the sandbox end of the
veth (labkit.packet.sandbox_capture) and the stack's own capture (runsc --pcap-log,
labkit.stacks.gvisor.pcaplog), on real testbeds, and the pcap window cutting on synthetic files."""

from __future__ import annotations

import os
import socket
import struct
import subprocess
import time
from pathlib import Path

import pytest
from scapy.layers.inet import ICMP, IP
from scapy.layers.l2 import Ether
from scapy.utils import rdpcap

from labkit.net.plan import AddressPlan
from labkit.packet import pcapfile
from labkit.packet.sandbox_capture import SandboxCapture
from labkit.packet.testbench import IcmpEcho
from labkit.stacks import GVisorStack, LinuxStack, StackSpec, programs
from labkit.stacks.gvisor import pcaplog
from labkit.testbed import Testbed
from labkit.testbed.evidence import EvidenceStore
from labkit.testbed.pool import TestbedPool
from labkit.uapi import PACKET_FANOUT, SOL_PACKET

gvisor = GVisorStack.availability()
NEEDS_RUNSC = pytest.mark.skipif(not gvisor.ok, reason=f"runsc unavailable: {gvisor.reason}; install: {gvisor.install}")
FOREIGN_MAC = "02:00:00:00:00:77"


# -- pcap files --------------------------------------------------------------------------------


def records(*stamps: float, magic: int = 0xA1B2C3D4, order: str = "<", nano: bool = False) -> bytes:
    out = struct.pack(f"{order}IHHiIII", magic, 2, 4, 0, 0, 65535, 101)
    for n, ts in enumerate(stamps):
        data = bytes([0x45, n]) + b"\0" * 18
        frac = round((ts % 1) * (1e9 if nano else 1e6))
        out += struct.pack(f"{order}IIII", int(ts), frac, len(data), len(data)) + data
    return out


def test_the_window_holds_the_checks_records_only_and_waits_for_a_partial_one(tmp_path):
    path = tmp_path / "netstack.pcap"
    path.write_bytes(records(100.1, 100.2))
    mark = pcapfile.records_end(path)
    assert mark == len(path.read_bytes())  # the check begins after the pool's records
    since = 200.0
    whole = records(100.1, 100.2, 150.5, 200.25, 200.5)  # 150.5: the last check's, flushed late
    path.write_bytes(whole + whole[-36:-10])  # and the writer is mid-record
    got = pcapfile.window(path, mark, since)
    assert got is not None and got[:24] == whole[:24]
    assert pcapfile.count(got) == 2 and got[24:] == whole[-72:], got
    assert pcapfile.records_end(path, mark) == len(whole)  # the partial record is left for later
    assert pcapfile.window(path, 0, 0.0)[24:] == whole[24:]  # since the start: every whole record


def test_the_window_reads_big_endian_and_nanosecond_files(tmp_path):
    path = tmp_path / "be.pcap"
    path.write_bytes(records(10.5, 20.000000123, magic=0xA1B23C4D, order=">", nano=True))
    got = pcapfile.window(path, 0, 20.0000001)
    assert pcapfile.count(got) == 1 and got[:4] == b"\xa1\xb2\x3c\x4d"


def test_a_file_the_build_left_empty_is_no_capture(tmp_path):
    empty = tmp_path / "empty.pcap"
    empty.write_bytes(b"")
    assert pcapfile.window(empty) is None and pcapfile.window(tmp_path / "missing.pcap") is None
    assert pcapfile.records_end(empty) == 0 and pcapfile.records_end(tmp_path / "missing.pcap") == 0
    assert pcapfile.count(b"not a pcap") == 0


def test_written_pcap_reads_back_in_scapy(tmp_path):
    frame = bytes(Ether(src="02:00:00:00:00:01", dst="02:00:00:00:00:02") / IP(src="198.18.0.1", dst="198.18.0.2") / ICMP())
    data = pcapfile.write([(1700000000.25, frame), (1700000001.5, frame)])
    (tmp_path / "w.pcap").write_bytes(data)
    got = rdpcap(str(tmp_path / "w.pcap"))
    assert [bytes(p) for p in got] == [frame, frame] and [float(p.time) for p in got] == [1700000000.25, 1700000001.5]


def test_gvisors_window_is_cut_from_its_mark_and_by_time(tmp_path):
    """The driver's side: the mark taken when the logs are (pool handout, reset) and the window
    of `own_capture`, on a file standing in for a build that writes one."""
    stack = GVisorStack()
    stack.netstack_pcap = tmp_path / "netstack.pcap"
    stack.netstack_pcap.write_bytes(records(100.0, 101.0))
    stack.mark_logs()
    stack.netstack_pcap.write_bytes(records(100.0, 101.0, 101.5, 300.0))
    got = stack.own_capture(since=200.0)
    assert got is not None and pcapfile.count(got) == 1
    assert pcapfile.count(stack.own_capture(since=0.0, since_start=True)) == 4
    stack.netstack_pcap = None
    assert stack.own_capture(since=0.0) is None


# -- the sandbox end of a real veth --------------------------------------------------------------


def kept(bed: Testbed, tmp_path: Path, check: str = "stackside/test_x.py::test_y", since_start: bool = False) -> dict[str, Path]:
    store = EvidenceStore(tmp_path / "evidence", "run1")
    return {p.name.split(".", 1)[1]: p for p in bed.save_evidence(store, check, since_start=since_start)}


def echoes(path: Path, ident: int) -> list[str]:
    """ "request"/"reply" for each ICMP echo of `ident` in a pcap, in order."""
    out = []
    for p in rdpcap(str(path)):
        if p.haslayer(ICMP) and p[ICMP].type in (0, 8) and p[ICMP].id == ident:
            out.append("reply" if p[ICMP].type == 0 else "request")
    return out


def exchange(bed: Testbed, ident: int) -> None:
    echo = IcmpEcho(bed.wire, bed.plan.endpoints("ipv4"), ident=ident)
    echo.send(1)
    bed.wire.expect(echo.reply(1), timeout=5)


@pytest.fixture
def linux():
    with Testbed(StackSpec(LinuxStack)) as bed:
        yield bed


def test_a_frame_the_stack_answers_is_in_both_pcaps(linux, tmp_path):
    exchange(linux, 0x5C1)
    files = kept(linux, tmp_path)
    assert echoes(files["pcap"], 0x5C1) == ["request", "reply"]
    assert echoes(files["sandbox.pcap"], 0x5C1) == ["request", "reply"]
    assert "netstack.pcap" not in files and "sandbox.drops.txt" not in files  # the kernel keeps no capture of its own
    # the stack's first frames too: the capture was open before the stack started
    assert_same_first_frames(files, linux.plan.stack_mac)


def assert_same_first_frames(files: dict[str, Path], mac: str) -> None:
    """The capture opened with the Wire, before the stack started: both have the stack's first frames."""
    first = {name: [bytes(p) for p in rdpcap(str(files[name])) if p.src == mac][:3] for name in ("pcap", "sandbox.pcap")}
    assert first["pcap"] and first["sandbox.pcap"] == first["pcap"], first


def test_a_frame_to_another_mac_reaches_the_stacks_end_and_is_not_answered(linux, tmp_path):
    echo = IcmpEcho(linux.wire, linux.plan.endpoints("ipv4"), ident=0x5C2)
    linux.wire.send(Ether(src=linux.wire.mac, dst=FOREIGN_MAC) / echo.request(1))
    linux.wire.expect_none(echo.reply(1), timeout=0.5)
    files = kept(linux, tmp_path)
    assert echoes(files["pcap"], 0x5C2) == ["request"]
    sandbox = [p for p in rdpcap(str(files["sandbox.pcap"])) if p.haslayer(ICMP) and p[ICMP].id == 0x5C2]
    assert [p.dst for p in sandbox] == [FOREIGN_MAC]  # it got there; the stack dropped it


def nft(bed: Testbed, script: str) -> None:
    done = subprocess.run(
        ["ip", "netns", "exec", bed.stack_end.ns.netns.name, "nft", "-f", "-"], input=script, capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr


@pytest.mark.skipif(not programs.locate("nft"), reason="apt-get install -y nftables")
def test_a_frame_dropped_at_the_stacks_ingress_shows_where_it_went(linux, tmp_path):
    """A netdev ingress rule in the stack's namespace drops echo requests of one id: the capture
    on the stack's end (packet taps come before the ingress hook) has the request, so a reader
    sees the frame reached the stack and went no further; the reply is in neither."""
    dev = linux.stack_end.name
    nft(
        linux,
        f"table netdev lab {{\n chain in {{\n  type filter hook ingress device {dev} priority 0\n  icmp id 0x5c3 drop\n }}\n}}\n",
    )
    echo = IcmpEcho(linux.wire, linux.plan.endpoints("ipv4"), ident=0x5C3)
    echo.send(1)
    linux.wire.expect_none(echo.reply(1), timeout=0.5)
    exchange(linux, 0x5C4)  # another id still passes
    files = kept(linux, tmp_path)
    assert echoes(files["pcap"], 0x5C3) == ["request"] and echoes(files["sandbox.pcap"], 0x5C3) == ["request"]
    assert echoes(files["sandbox.pcap"], 0x5C4) == ["request", "reply"]


def small_capture(bed: Testbed) -> SandboxCapture:
    """The testbed's capture replaced by one with the kernel's smallest buffer (a few frames)."""
    assert bed.sandbox is not None and bed.stack_end is not None and bed.stack_end.ns.netns is not None
    bed.sandbox.close()
    bed.sandbox = SandboxCapture(bed.stack_end.ns.netns, bed.stack_end.name, buffer=4096)
    return bed.sandbox


def flood(bed: Testbed, ident: int, n: int) -> None:
    """`n` echo requests to a MAC nobody has: the stack answers none, every capture sees each."""
    echo = IcmpEcho(bed.wire, bed.plan.endpoints("ipv4"), ident=ident)
    bed.wire.inject([bytes(Ether(src=bed.wire.mac, dst=FOREIGN_MAC) / echo.request(1))] * n)
    time.sleep(0.2)


def test_a_reset_testbeds_next_evidence_has_none_of_the_last_checks_frames(linux, tmp_path):
    """The last check filled the capture's queue (and its frames overflowed it); the reset reads it
    dry and forgets the drops, so the next check's frames are all there and nothing says dropped."""
    small_capture(linux)
    exchange(linux, 0x5C5)
    flood(linux, 0x5CA, 300)
    assert linux.sandbox.dropped() > 0
    linux.reset()
    exchange(linux, 0x5C6)
    files = kept(linux, tmp_path)
    for name in ("pcap", "sandbox.pcap"):
        assert echoes(files[name], 0x5C5) == echoes(files[name], 0x5CA) == [], name
        assert echoes(files[name], 0x5C6) == ["request", "reply"], name
    assert "sandbox.drops.txt" not in files


def test_a_check_that_made_its_wire_forget_gets_the_same_window_on_the_stacks_side(linux, tmp_path):
    exchange(linux, 0x5C7)
    linux.wire.forget()
    exchange(linux, 0x5C8)
    files = kept(linux, tmp_path, since_start=True)
    assert echoes(files["sandbox.pcap"], 0x5C7) == [] and echoes(files["sandbox.pcap"], 0x5C8) == ["request", "reply"]


def test_an_overflowing_capture_says_how_many_frames_the_kernel_dropped(linux, tmp_path):
    small_capture(linux)
    flood(linux, 0x5C9, 300)
    files = kept(linux, tmp_path)
    seen = len(echoes(files["sandbox.pcap"], 0x5C9))
    note = files["sandbox.drops.txt"].read_text()
    dropped = int(note.split("dropped ", 1)[1].split()[0])
    assert dropped > 0 and seen + dropped >= 300, (seen, note)
    assert seen < 300 and echoes(files["pcap"], 0x5C9) == ["request"] * 300  # the Wire's capture is whole


def test_the_capture_is_no_socket_or_process_the_looks_count(linux):
    """Inside the namespace the lab's capture is one more row of /proc/net/packet, which nothing
    reads; what the isolation's full look reads (addresses, routes, TCP/UDP sockets, processes)
    does not change with it."""
    assert linux.sandbox is not None
    inode = os.fstat(linux.sandbox.fileno()).st_ino
    listed = linux.stack.run(["cat", "/proc/net/packet"]).stdout
    assert str(inode) in listed  # shown there: explained in labkit.packet.sandbox_capture
    with_capture = linux.stack.state()
    linux.sandbox.close()
    linux.sandbox = None
    assert linux.stack.state() == with_capture and "packet" not in " ".join(with_capture)
    assert linux.stack.link_sockets() == []


# -- gVisor ------------------------------------------------------------------------------------


@pytest.fixture
def sandboxed():
    with Testbed(StackSpec(GVisorStack)) as bed:
        yield bed


@NEEDS_RUNSC
def test_gvisors_answer_is_in_both_pcaps_and_netstack_keeps_its_channels(sandboxed, tmp_path):
    stack = sandboxed.stack
    assert sandboxed.sandbox is not None
    mine = os.fstat(sandboxed.sandbox.fileno()).st_ino
    channels = stack.link_sockets()
    assert channels and mine not in {s.inode for s in channels}
    assert len({s.fanout.group for s in channels if s.fanout}) == 1 and all(s.fanout for s in channels)
    dup = socket.socket(fileno=os.dup(sandboxed.sandbox.fileno()))
    with dup:
        assert struct.unpack("i", dup.getsockopt(SOL_PACKET, PACKET_FANOUT, 4))[0] == 0  # in no group
    before = sum(stack.channel_counts().values())
    exchange(sandboxed, 0x5D1)
    assert sum(stack.channel_counts().values()) - before >= 1  # netstack still read the request
    files = kept(sandboxed, tmp_path)
    assert echoes(files["pcap"], 0x5D1) == ["request", "reply"]
    assert echoes(files["sandbox.pcap"], 0x5D1) == ["request", "reply"]  # netstack's own sends are seen too
    assert_same_first_frames(files, stack.mac)


@NEEDS_RUNSC
def test_a_pooled_gvisor_testbeds_next_evidence_starts_afresh(tmp_path):
    spec = StackSpec(GVisorStack)
    with TestbedPool(keep=1) as pool:
        bed = pool.acquire(spec, AddressPlan())
        exchange(bed, 0x5D2)
        assert pool.release(bed, reusable=True) == {}
        again = pool.acquire(spec, bed.plan)
        assert again is bed and pool.reused == 1
        exchange(again, 0x5D3)
        files = kept(again, tmp_path)
        for name in ("pcap", "sandbox.pcap"):
            assert echoes(files[name], 0x5D2) == [] and echoes(files[name], 0x5D3) == ["request", "reply"], name
        pool.release(again, reusable=False)


@NEEDS_RUNSC
def test_netstack_pcap_is_asked_for_and_only_where_the_build_writes_one(monkeypatch, tmp_path):
    """Not asked for, no sandbox gets --pcap-log (it would run another stack than the one judged).
    Asked for (LABKIT_NETSTACK_PCAP=1), Debian's runsc, which lists --pcap-log and writes nothing
    with AF_PACKET links, is probed and still runs without it; a build that writes one gets the
    flag, and its check's window is kept."""
    binary = programs.locate("runsc")
    assert binary is not None

    def flagged_and_kept(ident: int, folder: Path) -> tuple[bool, dict[str, Path]]:
        with Testbed(StackSpec(GVisorStack)) as bed:
            assert bed.stack is not None
            exchange(bed, ident)
            files = kept(bed, folder)
            return any(f"--{pcaplog.FLAG}=" in part for argv in bed.stack.command_lines() for part in argv), files

    monkeypatch.delenv(pcaplog.OPT_IN, raising=False)
    flagged, files = flagged_and_kept(0x5D4, tmp_path / "off")
    assert not flagged and "netstack.pcap" not in files
    monkeypatch.setenv(pcaplog.OPT_IN, "1")
    writes = pcaplog.writes(binary)
    assert writes == pcaplog.probe(binary)  # the remembered answer is the probe's (which gives one here)
    flagged, files = flagged_and_kept(0x5D6, tmp_path / "on")
    assert flagged == writes and ("netstack.pcap" in files) == writes
    if writes:
        assert pcapfile.count(files["netstack.pcap"].read_bytes()) >= 2


@NEEDS_RUNSC
def test_the_probe_sandbox_gets_the_flag_and_an_empty_file_is_no_evidence(tmp_path):
    class Flagged(GVisorStack):
        pcap_log = True

    with Testbed(StackSpec(Flagged)) as bed:
        exchange(bed, 0x5D5)
        assert any(part.startswith(f"--{pcaplog.FLAG}=") for part in bed.stack.command_lines()[0])
        path = bed.stack.netstack_pcap
        assert path is not None and path.parent == bed.stack.workdir
        files = kept(bed, tmp_path)
        assert ("netstack.pcap" in files) == (pcapfile.window(path) is not None)
