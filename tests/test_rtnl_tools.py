"""The tool runners of the rtnetlink suite without a stack: the corpus parser, what ip output is
normalised (and what is not), splitting one `ip -batch` run per command, and how two sides'
outcomes are compared (labkit.rtnetlink.ip_batch, labkit.rtnetlink.pyroute2_calls)."""

from __future__ import annotations

import sys
import textwrap
from pathlib import Path

import pytest

from labkit.errors import LabInputError
from labkit.net.plan import AddressPlan
from labkit.rtnetlink import ip_batch, pyroute2_calls

NAMES = ip_batch.values(AddressPlan())


def test_values_spell_the_plan():
    assert f"{NAMES['host4']}.50/{NAMES['len4']}" == "198.18.0.50/24"
    assert f"{NAMES['host6']}:50/{NAMES['len6']}" == "2001:db8::50/64"
    assert (NAMES["dev"], NAMES["peer4"], NAMES["peer6"], NAMES["unused4"]) == ("eth0", "198.18.0.1", "2001:db8::1", "198.18.0.3")


def test_corpus_batches_rows_and_names():
    corpus = textwrap.dedent(
        """\
        # a comment
        addr add $host4.50/$len4 dev $dev

        route get fibmatch 198.19.64.9   # row: route get fibmatch
        #! ip -6
        route show
        """
    )
    first, second = ip_batch.parse_corpus(corpus, NAMES)
    assert first.options == [] and second.options == ["-6"]
    assert [(c.line, c.row, c.source) for c in first.commands] == [
        ("addr add 198.18.0.50/24 dev eth0", "ip: addr add", 2),
        ("route get fibmatch 198.19.64.9", "ip: route get fibmatch", 4),
    ]
    assert second.describe(second.commands[0]) == "ip -6 route show"


def test_an_empty_batch_is_dropped():
    (only,) = ip_batch.parse_corpus("#! ip -4\n#! ip\nlink show\n", NAMES)
    assert only.options == [] and [c.line for c in only.commands] == ["link show"]


@pytest.mark.parametrize("line", ["route show $nosuch", "#! tc -s", "#! ip route"])
def test_corpus_mistakes_are_refused(line):
    with pytest.raises(LabInputError):
        ip_batch.parse_corpus(line, NAMES)


def test_the_corpus_files_parse():
    corpus = Path(__file__).parents[1] / "suites" / "rtnetlink" / "corpus"
    files = sorted(corpus.glob("*.ip"))
    assert len(files) >= 8
    for path in files:
        assert ip_batch.parse_corpus(path.read_text(), NAMES), path


def test_normalise_takes_out_indexes_netns_and_timers():
    kernel = (
        "100: eth0@if100: <BROADCAST,MULTICAST,UP,LOWER_UP> mtu 1500 qdisc noqueue state UP\n"
        "    link/ether 02:00:00:00:00:02 brd ff:ff:ff:ff:ff:ff link-netns labkit-1-peer\n"
        "7: eth0    inet 198.18.0.2/24 scope global eth0\\       valid_lft 3599sec preferred_lft 599sec\n"
        "198.19.64.9 via 198.18.0.1 dev eth0 \n    cache expires 593sec used 1/2/3\n"
    )
    assert ip_batch.normalise(kernel) == (
        "N: eth0@ifN: <BROADCAST,MULTICAST,UP,LOWER_UP> mtu 1500 qdisc noqueue state UP\n"
        "    link/ether 02:00:00:00:00:02 brd ff:ff:ff:ff:ff:ff link-netns PEER\n"
        "N: eth0    inet 198.18.0.2/24 scope global eth0\\       valid_lft Nsec preferred_lft Nsec\n"
        "198.19.64.9 via 198.18.0.1 dev eth0 \n    cache expires Nsec used N/N/N\n"
    )


def test_a_namespace_that_went_while_ip_named_the_peer_is_not_a_difference():
    """ip names a veth's peer namespace by asking the id of each one in /var/run/netns; another
    check's namespace deleted meanwhile makes it print the kernel's complaint and the bare id."""
    raced = "Error: Peer netns reference is invalid.\n"
    listing = "    link/ether 02:00:00:00:00:02 brd ff:ff:ff:ff:ff:ff link-netnsid 0\n"
    named = "    link/ether 02:00:00:00:00:02 brd ff:ff:ff:ff:ff:ff link-netns labkit-1-peer\n"
    assert ip_batch.normalise(raced + listing) == ip_batch.normalise(named)
    assert ip_batch.normalise("Error: Nexthop has invalid gateway.\n") == "Error: Nexthop has invalid gateway.\n"


@pytest.mark.parametrize(
    "text",
    [
        "0:\tfrom all lookup local\n1000:\tfrom 198.18.0.0/24 lookup 100\n",  # rule priorities are data
        "198.18.0.0/24 dev eth0 proto kernel scope link src 198.18.0.2 metric 256\n",
        "198.18.0.77 lladdr 02:00:00:00:00:77 PERMANENT\n",
        "N: eth0: <UP,LOWER_UP> mtu 1500 qlen 1000\n",
    ],
)
def test_normalise_keeps_what_means_something(text):
    assert ip_batch.normalise(text) == text


def test_split_stderr_per_command():
    marker = 'Cannot find device "lkmark0"\n'
    assert ip_batch.split_stderr("RTNETLINK answers: File exists\nCommand failed -:1\n", 1, 2) is None
    failed = "RTNETLINK answers: File exists\nCommand failed -:1\n" + marker + "Command failed -:2\n"
    assert ip_batch.split_stderr(failed, 1, 2) == ("RTNETLINK answers: File exists\n", "failed", "")
    assert ip_batch.split_stderr(marker + "Command failed -:4\nnext\n", 3, 4) == ("", "ok", "next\n")
    warned = "Warning: something\n" + marker + "Command failed -:4\n"  # said, but did not fail
    assert ip_batch.split_stderr(warned, 3, 4) == ("Warning: something\n", "ok", "")


FAKE_IP = """\
import sys
for number, line in enumerate(sys.stdin, 1):
    verb, _, rest = line.strip().partition(" ")
    if line.startswith("route show dev lkmark"):
        sys.stderr.write(f'Cannot find device "{line.split()[-1]}"\\n')
    elif verb == "echo":
        print(rest)
        sys.stdout.flush()
        continue
    elif verb == "exit":
        sys.stderr.write("dying\\n")
        sys.exit(int(rest))
    else:
        sys.stderr.write(rest + "\\n")
    sys.stderr.write(f"Command failed -:{number}\\n")
    sys.stderr.flush()
sys.exit(1)
"""


@pytest.fixture
def fake_ip(tmp_path: Path) -> str:
    """A stand-in for `ip -force -batch -` that speaks its protocol: a line in, output, then "Command failed -:N" on an error."""
    script = tmp_path / "fake_ip.py"
    script.write_text(FAKE_IP)
    wrapper = tmp_path / "ip"
    wrapper.write_text(f'#!/bin/sh\nexec {sys.executable} {script} "$@"\n')
    wrapper.chmod(0o755)
    return str(wrapper)


def test_run_batch_splits_output_per_command(fake_ip):
    got = ip_batch.run_batch([], ["echo one", "fail nope", "echo three"], timeout=5, ip=fake_ip)
    assert got["exit"] == 1
    assert got["commands"] == [
        {"line": "echo one", "status": "ok", "stdout": "one\n", "stderr": ""},
        {"line": "fail nope", "status": "failed", "stdout": "", "stderr": "nope\n"},
        {"line": "echo three", "status": "ok", "stdout": "three\n", "stderr": ""},
    ]


def test_run_batch_a_command_that_exits_ends_it(fake_ip):
    got = ip_batch.run_batch([], ["echo one", "exit 2", "echo never"], timeout=5, ip=fake_ip)
    assert got["exit"] == 2
    assert [(c["status"], c["stderr"]) for c in got["commands"]] == [("ok", ""), ("ip exited 2", "dying\n"), ("not run", "")]


def test_ip_compare_names_command_and_stream():
    (batch,) = ip_batch.parse_corpus("link show dev $dev\nroute get 198.19.64.9\n", NAMES)
    kernel = [
        {
            "options": [],
            "exit": 1,
            "commands": [
                {"line": "", "status": "ok", "stdout": "100: eth0@if100: <UP>\n", "stderr": ""},
                {"line": "", "status": "ok", "stdout": "x src 198.18.0.2\n", "stderr": ""},
            ],
        }
    ]
    stack = [
        {
            "options": [],
            "exit": 1,
            "commands": [
                {"line": "", "status": "ok", "stdout": "2: eth0@if7: <UP>\n", "stderr": ""},
                {"line": "", "status": "failed", "stdout": "", "stderr": "RTNETLINK answers: Operation not supported\n"},
            ],
        }
    ]
    found = ip_batch.compare([batch], kernel, stack)
    assert [(c.source, d.where, d.what) for c, d in found] == [
        (2, "line 2: ip route get 198.19.64.9", "status"),
        (2, "line 2: ip route get 198.19.64.9", "stdout"),
        (2, "line 2: ip route get 198.19.64.9", "stderr"),
    ]


def test_pyroute2_compare_outcomes_and_results():
    kernel = {
        "same": {"result": ["ack"]},
        "errno": {"raised": "NetlinkError", "errno": "EEXIST", "text": "(17, 'File exists')"},
        "crash": {"raised": "NetlinkError", "errno": "ENODEV", "text": "x"},
        "listed": {"result": ["a", "b"]},
        "text only": {"raised": "NetlinkError", "errno": "ENODEV", "text": "(19, 'No such device')"},
    }
    stack = {
        "same": {"result": ["ack"]},
        "errno": {"raised": "NetlinkError", "errno": "EOPNOTSUPP", "text": "(95, ...)"},
        "crash": {"raised": "error", "text": "unpack_from requires a buffer of at least 37 bytes"},
        "listed": {"result": ["a", "c"]},
        "text only": {"raised": "NetlinkError", "errno": "ENODEV", "text": "another wording"},
    }
    found = {d.where: d for d in pyroute2_calls.compare(kernel, stack)}
    assert set(found) == {"pyroute2 errno", "pyroute2 crash", "pyroute2 listed"}
    assert found["pyroute2 crash"].stack.startswith("error: unpack_from")
    assert (found["pyroute2 listed"].kernel, found["pyroute2 listed"].stack) == (["b"], ["c"])
    missing = pyroute2_calls.compare({"only kernel": {"result": []}}, {})
    assert [d.stack for d in missing] == ["not called: "]


class FakeMessage(dict):
    """Enough of a pyroute2 message for `summarise`."""

    def __init__(self, event: str, attrs: dict, **fields: object) -> None:
        super().__init__(event=event, **fields)
        self.attrs = attrs

    def get_attr(self, name: str) -> object:
        return self.attrs.get(name)


def test_summarise_names_links_and_keeps_what_a_program_reads():
    names = {7: "eth0"}
    route = FakeMessage(
        "RTM_NEWROUTE",
        {"RTA_DST": "198.19.64.0", "RTA_GATEWAY": "198.18.0.1", "RTA_OIF": 7, "RTA_TABLE": 254},
        family=2,
        dst_len=24,
        table=254,
        type=1,
        proto=3,
        scope=0,
    )
    assert pyroute2_calls.summarise(route, names) == (
        "route 198.19.64.0/24 family 2 table 254 type 1 proto 3 scope 0 via 198.18.0.1 dev eth0 src None metric None"
    )
    neigh = FakeMessage("RTM_NEWNEIGH", {"NDA_DST": "198.18.0.1", "NDA_LLADDR": "02:00:00:00:00:01"}, ifindex=7, state=0x04)
    assert pyroute2_calls.summarise(neigh, names) == "neigh 198.18.0.1 dev eth0 lladdr 02:00:00:00:00:01 dynamic"
    assert pyroute2_calls.summarise(FakeMessage("NLMSG_ERROR", {}, error=0), names) == "ack"
