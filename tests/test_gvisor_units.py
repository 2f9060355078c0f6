"""gVisor's pieces that need no runsc: variant options and flags, the OCI bundle, runsc's argv and logs."""

from pathlib import Path

import pytest

from labkit.errors import LabInputError
from labkit.stacks.gvisor import bundle
from labkit.stacks.gvisor.runsc import Runsc, last_error
from labkit.stacks.gvisor.variants import DEFAULTS, VARIANTS, network_flags, options

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
