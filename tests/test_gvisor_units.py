"""gVisor's pieces that need no runsc: variant options and flags, the OCI bundle, runsc's argv and logs."""

import os
import platform
import select
import subprocess
import sys
from pathlib import Path

import pytest

from labkit.errors import LabError, LabInputError
from labkit.lifecycle import owner, pids
from labkit.lifecycle.process import LabProcess
from labkit.net.netns import NetNS
from labkit.net.topology import Topology
from labkit.stacks.gvisor import bundle
from labkit.stacks.gvisor.driver import GVisorStack
from labkit.stacks.gvisor.runsc import Runsc, last_error
from labkit.stacks.gvisor.variants import DEFAULTS, VARIANTS, network_flags, options
from labkit.uapi import MS_BIND, check, libc

# -- variants ------------------------------------------------------------------------------------


def test_options_fill_defaults():
    assert options({}) == dict(DEFAULTS)
    opts = options({"channels": 4})
    assert opts["channels"] == 4
    assert opts["gso"] is True and opts["qdisc"] == "fifo" and opts["network"] == "sandbox"


def test_every_variant_is_valid():
    for name, overrides in VARIANTS.items():
        opts = options(overrides)
        assert set(opts) == set(DEFAULTS), name
        assert {k: opts[k] for k in overrides} == dict(overrides), name


def test_unknown_option_is_refused_by_name():
    with pytest.raises(LabInputError) as err:
        options({"chanels": 2})
    msg = str(err.value)
    assert "'chanels'" in msg
    assert "allowed: network, channels, gso, software_gso, tx_checksum, rx_checksum, qdisc" in msg
    assert "\n" not in msg


@pytest.mark.parametrize(
    "key, value, allowed",
    [
        ("channels", 0, "allowed: 1-16"),
        ("channels", 17, "allowed: 1-16"),
        ("channels", "4", "allowed: 1-16"),
        ("channels", True, "allowed: 1-16"),  # bool == 1, but is not a channel count
        ("channels", 2.0, "allowed: 1-16"),
        ("gso", 1, "allowed: (True, False)"),  # 1 == True, but is not a bool
        ("gso", "yes", "allowed: (True, False)"),
        ("qdisc", "pfifo", "allowed: ('fifo', 'none')"),
        ("network", "host", "allowed: ('sandbox', 'none')"),
    ],
)
def test_bad_option_value_is_refused_by_name(key, value, allowed):
    with pytest.raises(LabInputError) as err:
        options({key: value})
    msg = str(err.value)
    assert msg.startswith(f"bad gvisor option {key}={value!r}; ")
    assert msg.endswith(allowed)
    assert "\n" not in msg


def flags_of(variant):
    return network_flags(options(VARIANTS[variant]))


def test_default_variant_flags_are_explicit():
    assert flags_of("") == [
        "--network=sandbox",
        "--num-network-channels=1",
        "--gso=true",
        "--software-gso=true",
        "--tx-checksum-offload=false",
        "--rx-checksum-offload=true",
        "--qdisc=fifo",
    ]


@pytest.mark.parametrize(
    "variant, flags",
    [
        (
            "ch4",
            [
                "--network=sandbox",
                "--num-network-channels=4",
                "--gso=true",
                "--software-gso=true",
                "--tx-checksum-offload=false",
                "--rx-checksum-offload=true",
                "--qdisc=fifo",
            ],
        ),
        (
            "nogso",
            [
                "--network=sandbox",
                "--num-network-channels=1",
                "--gso=false",
                "--software-gso=false",
                "--tx-checksum-offload=false",
                "--rx-checksum-offload=true",
                "--qdisc=fifo",
            ],
        ),
        (
            "swgso",
            [
                "--network=sandbox",
                "--num-network-channels=1",
                "--gso=false",
                "--software-gso=true",
                "--tx-checksum-offload=false",
                "--rx-checksum-offload=true",
                "--qdisc=fifo",
            ],
        ),
        (
            "txcsum",
            [
                "--network=sandbox",
                "--num-network-channels=1",
                "--gso=true",
                "--software-gso=true",
                "--tx-checksum-offload=true",
                "--rx-checksum-offload=true",
                "--qdisc=fifo",
            ],
        ),
        (
            "norxcsum",
            [
                "--network=sandbox",
                "--num-network-channels=1",
                "--gso=true",
                "--software-gso=true",
                "--tx-checksum-offload=false",
                "--rx-checksum-offload=false",
                "--qdisc=fifo",
            ],
        ),
        (
            "noqdisc",
            [
                "--network=sandbox",
                "--num-network-channels=1",
                "--gso=true",
                "--software-gso=true",
                "--tx-checksum-offload=false",
                "--rx-checksum-offload=true",
                "--qdisc=none",
            ],
        ),
        ("none", ["--network=none"]),
    ],
)
def test_variant_flags(variant, flags):
    assert flags_of(variant) == flags


# -- bundle --------------------------------------------------------------------------------------


def network_entries(content):
    return [ns for ns in content["linux"]["namespaces"] if ns["type"] == "network"]


def test_spec_joins_the_given_netns():
    content = bundle.spec("/run/netns/labkit-x", ["sleep", "infinity"])
    assert network_entries(content) == [{"type": "network", "path": "/run/netns/labkit-x"}]
    assert content["process"]["args"] == ["sleep", "infinity"]


def test_spec_without_netns_path_gets_a_new_namespace():
    content = bundle.spec(None, ["true"])
    assert network_entries(content) == [{"type": "network"}]


def test_spec_root_is_host_root_read_only():
    content = bundle.spec(None, ["true"], hostname="box")
    assert content["root"] == {"path": "/", "readonly": True}
    assert content["hostname"] == "box"


def test_spec_binds_only_shadowed_paths_read_only_in_place(tmp_path):
    under_tmp = tmp_path.resolve() / "venv"
    content = bundle.spec(None, ["true"], [under_tmp, Path("/usr/lib"), Path("/dev/labkit-none"), Path("/tmpx")])
    binds = [m for m in content["mounts"] if m["type"] == "bind"]
    assert binds == [
        {"destination": "/dev/labkit-none", "type": "bind", "source": "/dev/labkit-none", "options": ["rbind", "ro"]},
        {"destination": str(under_tmp), "type": "bind", "source": str(under_tmp), "options": ["rbind", "ro"]},
    ]


def test_spec_binds_a_path_once(tmp_path):
    under_tmp = tmp_path.resolve() / "repo"
    content = bundle.spec(None, ["true"], [under_tmp, str(under_tmp), under_tmp / "sub" / ".."])
    assert [m["source"] for m in content["mounts"] if m["type"] == "bind"] == [str(under_tmp)]


@pytest.mark.parametrize(
    "path, expected",
    [
        ("/tmp", False),  # the mount point itself: binding it would hide the tmpfs
        ("/dev", False),
        ("/tmp/ci/checkout", True),
        ("/dev/shm", True),
        ("/proc/self", True),
        ("/tmpfoo", False),
        ("/devices", False),
        ("/usr/lib/python3", False),
        ("/", False),
    ],
)
def test_needs_bind(path, expected):
    assert bundle.needs_bind(Path(path)) is expected


def test_write_puts_config_json(tmp_path):
    import json

    content = bundle.spec("/run/netns/x", ["true"])
    d = bundle.write(tmp_path / "b", content)
    assert d == tmp_path / "b"
    assert json.loads((d / "config.json").read_text()) == content


# -- runsc ---------------------------------------------------------------------------------------


def log_with(tmp_path, text):
    p = tmp_path / "runsc.log"
    p.write_text(text)
    return p


def test_last_error_takes_msg_of_the_last_json_line(tmp_path):
    log = log_with(
        tmp_path,
        'I0101 starting\n{"level":"info","msg":"early"}\n{"level":"error","msg":"creating container: no such file"}\n\n',
    )
    assert last_error(log) == "creating container: no such file"


def test_last_error_takes_the_last_plain_error_line(tmp_path):
    log = log_with(tmp_path, "booting\nW0101 error: cannot open /dev/kvm\nsome trailing noise\n")
    assert last_error(log) == "W0101 error: cannot open /dev/kvm"


def test_last_error_falls_back_to_last_line(tmp_path):
    log = log_with(tmp_path, "one\n  two  \n")
    assert last_error(log) == "two"


def test_last_error_on_empty_and_missing_logs(tmp_path):
    empty = log_with(tmp_path, "\n\n")
    assert last_error(empty) == f"(empty log {empty})"
    missing = tmp_path / "nope.log"
    assert last_error(missing) == f"(no log at {missing})"


def test_argv_puts_global_flags_before_the_subcommand(tmp_path):
    r = Runsc(tmp_path / "root", ["--network=none", "--debug"], binary="/usr/bin/runsc")
    assert (tmp_path / "root").is_dir()
    assert r.argv("state", "cid1") == [
        "/usr/bin/runsc",
        f"--root={tmp_path / 'root'}",
        "--network=none",
        "--debug",
        "state",
        "cid1",
    ]


def test_exec_argv_puts_env_pairs_before_the_container_id(tmp_path):
    r = Runsc(tmp_path / "root", ["--debug"])
    argv = r.exec_argv("cid1", ["ip", "addr"], {"A": "1", "PATH": "/bin:/usr/bin"})
    assert argv == [
        "runsc",
        f"--root={tmp_path / 'root'}",
        "--debug",
        "exec",
        "-env",
        "A=1",
        "-env",
        "PATH=/bin:/usr/bin",
        "cid1",
        "ip",
        "addr",
    ]
    assert r.exec_argv("cid1", ["true"]) == ["runsc", f"--root={tmp_path / 'root'}", "--debug", "exec", "cid1", "true"]


# -- liveness ------------------------------------------------------------------------------------

# The main thread ends itself with the raw exit syscall (SYS_exit: only the calling thread ends)
# while a second thread runs on: the leader shows state Z, the process lives. The leader first
# names a word for the kernel to zero (and futex-wake) when it exits (set_tid_address(2)), so the
# second thread knows when to say so: no polling of /proc.
ZOMBIE_LEADER = """
import ctypes, sys, threading
libc = ctypes.CDLL(None, use_errno=True)
SYS_futex, SYS_set_tid_address, SYS_exit, FUTEX_WAIT = 202, 218, 60, 0
word = ctypes.c_int(1)

def outlive_the_leader():
    while word.value:
        libc.syscall(SYS_futex, ctypes.byref(word), FUTEX_WAIT, 1, None, None, 0)
    print("leader gone", flush=True)
    sys.stdin.read()

libc.syscall(SYS_set_tid_address, ctypes.byref(word))
threading.Thread(target=outlive_the_leader).start()
libc.syscall(SYS_exit, 0)
"""


@pytest.mark.skipif(platform.machine() != "x86_64", reason="the syscall numbers are x86_64's")
def test_a_process_whose_leader_exited_while_a_thread_runs_is_alive():
    child = subprocess.Popen([sys.executable, "-c", ZOMBIE_LEADER], stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    stack = GVisorStack()
    try:
        assert select.select([child.stdout], [], [], 20)[0], "the child's main thread did not exit within 20s"
        assert child.stdout.readline() == b"leader gone\n"
        state = Path(f"/proc/{child.pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        assert state == "Z" and len(os.listdir(f"/proc/{child.pid}/task")) == 2, state
        stack.sandbox_pid = child.pid
        assert stack.healthy(), "the driver calls a process with a zombie leader and a live thread dead"
        assert owner.Owner(owner.run_id(), child.pid).alive(), "the owner check calls it dead"
        assert pids.alive(child.pid)
    finally:
        child.stdin.close()  # the reading thread returns, the last thread exits, the process ends
        child.stdout.close()
        child.wait(20)
    assert not stack.healthy() and not pids.alive(child.pid)


# -- runsc start's private mount namespace, with a stand-in for runsc ------------------------------

# Reports where `runsc start` runs and what it sees: its network and mount namespaces, its death
# signal, and whether rmem_default (runsc's "root netns" marker) shows from inside the lab netns.
FAKE_RUNSC = """#!/usr/bin/env python3
import ctypes, os, subprocess
sig = ctypes.c_int(-1)
ctypes.CDLL(None).prctl(2, ctypes.byref(sig))  # PR_GET_PDEATHSIG
marker = subprocess.run(["nsenter", "--net=" + os.environ["LAB"], "--", "test", "-e", "/proc/sys/net/core/rmem_default"])
print("net", os.stat("/proc/self/ns/net").st_ino)
print("mnt", os.stat("/proc/self/ns/mnt").st_ino)
print("pdeathsig", sig.value)
print("marker", "visible" if marker.returncode == 0 else "hidden")
"""


@pytest.fixture
def fake_runsc(tmp_path):
    path = tmp_path / "runsc"
    path.write_text(FAKE_RUNSC)
    path.chmod(0o755)
    return str(path)


def report(log: Path) -> dict[str, str]:
    return dict(line.split(" ", 1) for line in log.read_text().splitlines() if " " in line)


def test_start_hides_the_marker_in_a_private_mount_namespace_only(fake_runsc, tmp_path, monkeypatch):
    topo = Topology()
    lab = topo.namespace("lab")
    with topo:
        monkeypatch.setenv("LAB", str(lab.netns.path))
        log = tmp_path / "runsc.log"
        Runsc(tmp_path / "root", [], binary=fake_runsc).start("cid", lab.netns, log)
        seen = report(log)
        assert seen["marker"] == "hidden", f"runsc start would see rmem_default from the lab netns: {seen}"
        assert int(seen["net"]) == os.stat("/proc/thread-self/ns/net").st_ino, "runsc start left the caller's netns"
        assert int(seen["mnt"]) != os.stat("/proc/self/ns/mnt").st_ino, "runsc start ran in the lab's own mount namespace"
        assert seen["pdeathsig"] == "9", seen
        # The tmpfs stayed in runsc's mount namespace: the lab still sees the file, in both netns.
        assert Path("/proc/sys/net/core/rmem_default").exists()
        with lab.netns.entered():
            assert Path("/proc/sys/net/core/rmem_default").exists()


def test_a_failed_start_step_is_named(fake_runsc, tmp_path):
    not_a_netns = NetNS(owner.new_name("uts"))
    not_a_netns.path.touch()
    try:
        check(libc.mount(b"/proc/self/ns/uts", bytes(not_a_netns.path), None, MS_BIND, None), "bind a uts namespace")
        with pytest.raises(LabError, match=r"runsc start failed \(exit 122\): setup step setns\(lab netns\) \(nsenter --net\) failed"):
            Runsc(tmp_path / "root", [], binary=fake_runsc).start("cid", not_a_netns, tmp_path / "runsc.log")
    finally:
        not_a_netns.delete()


@pytest.mark.skipif(platform.machine() != "x86_64", reason="the syscall numbers are x86_64's")
def test_a_namespace_still_finds_a_process_whose_leader_exited():
    """Its leader's ns link cannot be read any more; its threads' can. Teardown must still find
    it, kill it, and only then drop the namespace."""
    topo = Topology()
    ns = topo.namespace("zl")
    with topo:
        child = LabProcess([sys.executable, "-c", ZOMBIE_LEADER], netns=ns.netns, stdin=subprocess.PIPE, stdout=subprocess.PIPE)
        try:
            assert select.select([child.popen.stdout], [], [], 20)[0], "the child's main thread did not exit within 20s"
            assert child.popen.stdout.readline() == b"leader gone\n"
            assert child.pid in ns.netns.pids(), "a process whose leader exited is not seen in its namespace"
        finally:
            child.close()
