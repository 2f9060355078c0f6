"""Evidence within a budget (labkit.testbed.evidence): one folder per check, logs cut to the
check's window and gzipped, identical files of two variants stored once, also when workers race."""

from __future__ import annotations

import gzip
import json
import multiprocessing
import os
import shutil
import struct
import textwrap
from pathlib import Path

import pytest

from labkit.testbed.evidence import (
    EvidenceStore,
    check_folder,
    commands_piece,
    expectations_piece,
    gzipped,
    log_piece,
    normalised_log,
    note_piece,
    pcap_frames,
    pcap_piece,
    read_window,
    totals,
)

from .conftest import run_pytest

NEEDS_RUNSC = pytest.mark.skipif(shutil.which("runsc") is None, reason="apt-get install -y runsc")


def pcap(*frames: tuple[float, bytes]) -> bytes:
    out = struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 65535, 1)
    for ts, data in frames:
        out += struct.pack("<IIII", int(ts), int((ts % 1) * 1e6), len(data), len(data)) + data
    return out


ARP = bytes.fromhex("ffffffffffff020000000001080600010800060400010200000000010a000001000000000000" + "0a000002")


# -- names ----------------------------------------------------------------------------------


def test_a_check_folder_reads_like_the_check():
    assert check_folder("transport/test_window.py::test_zero_window[ipv6]") == "transport.test_window.test_zero_window-ipv6"
    assert check_folder("linkdispatch/test_arp.py::test_answers") == "linkdispatch.test_arp.test_answers"


def test_a_folder_name_that_lost_characters_or_length_carries_a_hash():
    spaced = check_folder("rtnetlink/test_clients.py::test_tool[ip route]")
    underscored = check_folder("rtnetlink/test_clients.py::test_tool[ip_route]")
    assert (
        spaced.startswith("rtnetlink.test_clients.test_tool-ip_route-")
        and underscored == "rtnetlink.test_clients.test_tool-ip_route"
    )
    long = check_folder("s/test_x.py::test_" + "y" * 300)
    assert len(long) <= 120 and long != check_folder("s/test_x.py::test_" + "y" * 299)
    assert "/" not in check_folder("../../tmp/x/test_a.py::test_b[a/b]")


# -- what is stored --------------------------------------------------------------------------


def test_gzip_is_deterministic_and_nameless():
    data = b"line\n" * 1000
    assert gzipped(data) == gzipped(data) and gzip.decompress(gzipped(data)) == data
    assert gzipped(data)[4:8] == b"\0\0\0\0"  # mtime 0
    assert not gzipped(data)[3] & 0x08  # no file name


def test_a_window_holds_only_what_came_after_the_mark(tmp_path):
    log = tmp_path / "x.log"
    log.write_bytes(b"BEFORE the check\n")
    mark = log.stat().st_size
    with open(log, "ab") as f:
        f.write(b"IN the check\n")
    assert read_window(log, mark) == b"IN the check\n"
    assert read_window(log, 0) == b"BEFORE the check\nIN the check\n"
    assert read_window(log, 10_000) == log.read_bytes()  # the log was replaced: all of it is new


def test_a_window_over_the_limit_keeps_head_and_tail_and_says_so(tmp_path):
    log = tmp_path / "x.log"
    log.write_bytes(b"H" * 100 + b"M" * 1000 + b"T" * 100)
    window = read_window(log, 0, limit=200)
    assert window.startswith(b"H" * 100) and window.endswith(b"T" * 100)
    assert b"1000 bytes of this window left out" in window and b"M" not in window


def test_log_normalisation_blanks_times_pids_pointers_and_lab_names_only():
    a = (
        b"D1201 19:52:41.997581    3843 client.go:400] send [channel 0xc0003de090] WalkReq{DirFD: 1}\n"
        b"I1201 19:52:41.853285    3843 main.go:217] Args: [runsc --root=/tmp/labkit-212bf1-1935-36-stack-_c5kidxx/root]\n"
        b"took 1.5ms, PID: 3843\n"
    )
    b = (
        b"D1202 07:01:02.000001    9999 client.go:400] send [channel 0xc0001aa000] WalkReq{DirFD: 1}\n"
        b"I1202 07:01:02.100000    9999 main.go:217] Args: [runsc --root=/tmp/labkit-0a0a0a-77-3-stack-zz9/root]\n"
        b"took 2.25ms, PID: 17\n"
    )
    assert normalised_log(a) == normalised_log(b)
    assert normalised_log(a) != normalised_log(a.replace(b"DirFD: 1", b"DirFD: 2"))  # the stack's doing stays


def test_pcaps_compare_by_their_frames_not_their_times():
    assert pcap_frames(pcap((1.5, ARP))) == pcap_frames(pcap((9999.25, ARP)))
    assert pcap_frames(pcap((1.5, ARP))) != pcap_frames(pcap((1.5, ARP[:-1] + b"\x03")))
    assert pcap_frames(pcap((1.5, ARP), (1.6, ARP))) != pcap_frames(pcap((1.5, ARP)))
    assert pcap_frames(b"not a pcap") == b"not a pcap"


def test_a_big_pcap_is_gzipped_and_a_small_one_is_not():
    small, big = pcap((1.0, ARP)), pcap(*[(1.0, bytes(1500))] * 1000)
    assert pcap_piece("", small).name == "pcap" and pcap_piece("", small).data == small
    piece = pcap_piece("uplink", big)
    assert piece.name == "uplink.pcap.gz" and gzip.decompress(piece.data) == big and len(piece.data) < len(big) / 10


def test_the_stacks_side_is_named_after_the_wires_pcap_and_a_note_compares_without_noise():
    assert pcap_piece("sandbox", pcap((1.0, ARP))).name == "sandbox.pcap"
    assert pcap_piece("netstack", pcap(*[(1.0, bytes(1500))] * 1000)).name == "netstack.pcap.gz"
    a = note_piece("sandbox.drops", "dropped 12 frame(s) at 23:01:02.5 on labkit-0a0a0a-77-3-sb\n")
    b = note_piece("sandbox.drops", "dropped 12 frame(s) at 07:00:00.1 on labkit-1b1b1b-88-4-sb\n")
    assert a.name == "sandbox.drops.txt" and a.key == b.key and a.data != b.data
    assert a.key != note_piece("sandbox.drops", "dropped 13 frame(s)\n").key


# -- stored once ----------------------------------------------------------------------------


def cell(ts: float, log: bytes, started: float) -> list:
    expects = json.dumps(
        [{"kind": "expect", "template": "ARP", "timeout": 1, "started": started, "outcome": "timeout", "frame": None}]
    )
    return [pcap_piece("", pcap((ts, ARP))), expectations_piece(expects.encode()), log_piece("runsc-boot.log", log)]


def test_identical_evidence_of_two_variants_is_stored_once(tmp_path):
    store = EvidenceStore(tmp_path, "run1")
    check = "transport/test_x.py::test_y[ipv4]"
    first = store.keep(check, "gvisor", cell(1.0, b"I1201 10:00:00.1 7 x.go:1] dropped\n", 1.0))
    second = store.keep(check, "gvisor-ch2", cell(2.0, b"I1201 10:00:05.9 8 x.go:1] dropped\n", 2.0))
    assert first == second and all(p.exists() for p in first)
    assert sorted(p.name for p in store.folder(check).iterdir()) == [
        "gvisor.expects.json",
        "gvisor.pcap",
        "gvisor.runsc-boot.log.gz",
    ]
    third = store.keep(check, "gvisor-ch4", cell(3.0, b"I1201 10:00:07.0 9 x.go:1] sent a RST\n", 3.0))
    assert third[:2] == first[:2] and third[2] == store.folder(check) / "gvisor-ch4.runsc-boot.log.gz"  # its log differs
    other = store.keep("transport/test_x.py::test_z", "gvisor", cell(1.0, b"I1201 10:00:00.1 7 x.go:1] dropped\n", 1.0))
    assert all(p.parent.name == "transport.test_x.test_z" for p in other)  # never points into another check's folder
    store.finish()
    assert not (tmp_path / ".index").exists() and all(p.exists() for p in first + third + other)


def test_an_earlier_runs_files_of_the_stack_are_replaced_and_its_index_not_used(tmp_path):
    check = "s/test_x.py::test_y"
    EvidenceStore(tmp_path, "run1").keep(check, "gvisor", [*cell(1.0, b"old\n", 1.0), commands_piece("# gvisor\n")])
    EvidenceStore(tmp_path, "run1").keep(check, "gvisor-ch2", cell(1.0, b"old\n", 1.0))  # points at gvisor's
    store = EvidenceStore(tmp_path, "run2")
    store.keep(check, "gvisor", [pcap_piece("", pcap((1.0, ARP)))])
    names = sorted(p.name for p in store.folder(check).iterdir())
    assert names == ["gvisor.pcap"], names  # gvisor-ch2 stored nothing of its own: nothing left of it
    again = store.keep(check, "gvisor-ch2", cell(1.0, b"old\n", 1.0))
    assert all(p.exists() for p in again) and again[0].name == "gvisor.pcap" and again[2].name == "gvisor-ch2.runsc-boot.log.gz"


def _race(root: str, stack: str, barrier, results) -> None:
    barrier.wait(timeout=30)  # all at once: the stores find no index entry and write side by side
    kept = EvidenceStore(Path(root), "race").keep("s/test_r.py::test_r", stack, cell(float(os.getpid()), b"same\n", 0.5))
    results.put([str(p) for p in kept])


def test_racing_workers_store_a_content_once_and_all_name_that_file(tmp_path):
    ctx = multiprocessing.get_context("fork")
    stacks = [f"gvisor-v{n}" for n in range(8)]
    barrier, queue = ctx.Barrier(len(stacks)), ctx.SimpleQueue()
    workers = [ctx.Process(target=_race, args=(str(tmp_path), s, barrier, queue)) for s in stacks]
    for w in workers:
        w.start()
    for w in workers:
        w.join(timeout=60)
        if w.is_alive():  # stuck: a failure, not a leftover
            w.kill()
            w.join(5)
    assert all(w.exitcode == 0 for w in workers), [w.exitcode for w in workers]
    results = [queue.get() for _ in stacks]
    assert all(r == results[0] for r in results), results
    folder = tmp_path / "s.test_r.test_r"
    assert sorted(p.name for p in folder.iterdir()) == sorted(Path(p).name for p in results[0])  # no copies, no temporaries left
    assert all(Path(p).exists() for p in results[0])


def test_totals_count_each_file_once(tmp_path):
    (tmp_path / "a").write_bytes(b"x" * 10)
    (tmp_path / "b").write_bytes(b"y" * 5)
    paths = [str(tmp_path / "a"), str(tmp_path / "a"), str(tmp_path / "b"), str(tmp_path / "gone")]
    assert totals(paths) == {"evidence bytes": 15, "evidence files": 2}


# -- a real run -------------------------------------------------------------------------------

CHECKS = textwrap.dedent(
    """
    import sys

    import pytest
    from scapy.layers.l2 import ARP, Ether

    def log_line(stack, text):
        # A line in the stack's services.log (a spawned command's stderr), written before this returns.
        code = f"import sys; sys.stderr.write({text!r} + '\\\\n'); sys.stderr.flush(); print('ok', flush=True); sys.stdin.read()"
        with stack.spawn([sys.executable, "-c", code]) as proc:
            assert proc.read_line(timeout=20) == "ok\\n"

    @pytest.mark.varies_with("channels")
    def test_a_before(testbed):
        log_line(testbed.stack, "BEFORE-THE-CHECK")

    @pytest.mark.varies_with("channels")
    def test_b_deviates(testbed):
        plan = testbed.plan
        log_line(testbed.stack, "IN-THE-CHECK")
        wire = testbed.wire
        wire.forget()  # only the exchange below: a late router solicitation of the boot's is no part of it
        wire.send_and_expect(
            Ether(src=wire.mac, dst="ff:ff:ff:ff:ff:ff") / ARP(op=1, hwsrc=wire.mac, psrc=plan.peer4, pdst=plan.stack4),
            ARP(op=2, psrc=plan.stack4), timeout=5,
        )
        assert False, "deviates on purpose"

    @pytest.mark.fresh
    @pytest.mark.stacks("gvisor")
    def test_c_fresh_fails(testbed):
        assert False, "fails on purpose"
    """
)
MANIFEST = textwrap.dedent(
    """
    [[deviation]]
    stack = "gvisor*"
    check = "*::test_b_deviates"
    reason = "deviates on purpose, alike on every variant"
    """
)


@pytest.fixture(scope="module")
def real_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("evidence-run")
    (root / "test_kept.py").write_text(CHECKS)
    (root / "deviations.toml").write_text(MANIFEST)
    done = run_pytest(
        str(root / "test_kept.py"), "--rootdir", str(root), "--stack", "linux,gvisor,gvisor-ch2",
        "--deviations", str(root / "deviations.toml"), "--lab-order", "given", "-p", "no:randomly", "-n", "0",
        "--lab-evidence", str(root / "evidence"), "--lab-report", str(root / "report"),
    )  # fmt: skip
    assert done.returncode == 1, done.stdout[-4000:] + done.stderr[-2000:]
    results = json.loads((root / "report" / "results.json").read_text())
    cells = {(r["check"].split("::")[-1], r["stack"]): r for r in results["results"]}
    return root / "evidence", cells, results["run"]


def folder_of(evidence: Path, test: str) -> Path:
    (found,) = [p for p in evidence.iterdir() if p.is_dir() and p.name.endswith(f".{test}")]
    return found


@NEEDS_RUNSC
def test_a_run_keeps_one_folder_per_check_and_only_what_failed(real_run):
    evidence, cells, run = real_run
    assert cells[("test_b_deviates", "gvisor")]["status"] == "known deviation"
    assert cells[("test_b_deviates", "gvisor-ch2")]["status"] == "known deviation"
    assert cells[("test_b_deviates", "linux")]["status"] == "failed"
    assert sorted(p.name for p in evidence.iterdir()) == sorted(
        [folder_of(evidence, "test_b_deviates").name, folder_of(evidence, "test_c_fresh_fails").name]
    )  # nothing for the passing check, no index left behind
    paths = [p for r in cells.values() for p in r["evidence"]]
    assert paths and all(Path(p).is_file() and Path(p).parent.parent == evidence for p in paths)
    assert run["evidence files"] == len(set(paths)) and run["evidence bytes"] == sum(Path(p).stat().st_size for p in set(paths))
    assert run["evidence bytes"] < 2_000_000, run


@NEEDS_RUNSC
def test_a_pooled_checks_logs_hold_its_window_only_gzipped(real_run):
    _, cells, _ = real_run
    for stack in ("gvisor", "gvisor-ch2"):
        logs = {
            Path(p).name.split(".", 1)[1]: Path(p) for p in cells[("test_b_deviates", stack)]["evidence"] if p.endswith(".log.gz")
        }
        services = gzip.decompress(logs["services.log.gz"].read_bytes())
        assert b"IN-THE-CHECK" in services and b"BEFORE-THE-CHECK" not in services, services[-2000:]
        boot = gzip.decompress(logs["runsc-boot.log.gz"].read_bytes())  # the sandbox's: its execs, its packets
        assert b"IN-THE-CHECK" in boot and b"sniffer.go" in boot and b"BEFORE-THE-CHECK" not in boot, boot[-2000:]
        assert b"Args: [" not in boot and b"Version " not in boot  # the pool's boot is not the check's
    commands = {
        s: Path(next(p for p in cells[("test_b_deviates", s)]["evidence"] if p.endswith(".commands.txt")))
        for s in ("gvisor", "gvisor-ch2")
    }
    assert commands["gvisor"] != commands["gvisor-ch2"]  # they differ in the channels flag
    assert "--num-network-channels=2" in commands["gvisor-ch2"].read_text() and " create " in commands["gvisor"].read_text()


@NEEDS_RUNSC
def test_a_fresh_checks_window_holds_its_stacks_start(real_run):
    _, cells, _ = real_run
    (boot,) = [Path(p) for p in cells[("test_c_fresh_fails", "gvisor")]["evidence"] if p.endswith("runsc-boot.log.gz")]
    assert b"Args: [" in gzip.decompress(boot.read_bytes())


@NEEDS_RUNSC
def test_two_variants_that_deviate_alike_share_the_pcap_and_expectations(real_run):
    evidence, cells, _ = real_run
    kept = {
        s: {Path(p).name.split(".", 1)[1]: p for p in cells[("test_b_deviates", s)]["evidence"]} for s in ("gvisor", "gvisor-ch2")
    }
    for piece in ("pcap", "expects.json", "sandbox.pcap"):
        assert kept["gvisor-ch2"][piece] == kept["gvisor"][piece], (piece, kept)
    folder = folder_of(evidence, "test_b_deviates")
    assert not (folder / "gvisor-ch2.pcap").exists() and not (folder / "gvisor-ch2.expects.json").exists()
    assert not (folder / "gvisor-ch2.sandbox.pcap").exists()
    assert (folder / "linux.pcap").exists() or kept["gvisor"]["pcap"] in cells[("test_b_deviates", "linux")]["evidence"]
