"""Each family of rtnetlink checks fails on a Linux whose NETLINK_ROUTE is broken the way the
family guards against (examples/mutants.py; most break it through examples/netlink_shim, which
makes the Python programs' netlink sockets misbehave, since a namespace cannot break the
kernel's). The unbroken kernel passes the same checks in the same run."""

import pytest

from .conftest import run_pytest


@pytest.mark.parametrize(
    "mutant, targets, failing, evidence",
    [
        (
            "ExtAckBlindLinux",
            ["suites/rtnetlink/test_socket.py::test_socket_option"],
            1,
            "NETLINK_EXT_ACK",
        ),
        (
            "GrouplessNetlinkLinux",
            [
                "suites/rtnetlink/test_notifications.py::test_notification",
                "suites/rtnetlink/test_notifications.py::test_subscription_by_membership",
                "suites/rtnetlink/test_socket.py::test_a_listener_that_overruns_is_told_once",
            ],
            13,
            "lets no listener join",
        ),
        (
            "GatewayDroppingLinux",
            ["suites/rtnetlink/test_attributes.py::test_every_attribute"],
            4,
            "RTA_GATEWAY",
        ),
        (
            "GatewayDroppingLinux",
            ["suites/rtnetlink/test_pyroute2_api.py::test_pyroute2_call_as_on_the_kernel"],
            4,
            "via 198.18.0.1",
        ),
        (
            "ShortErrorLinux",
            [
                "suites/rtnetlink/test_protocol.py::test_error_quotes_the_whole_request_unless_capped",
                "suites/rtnetlink/test_pyroute2_api.py::test_pyroute2_call_as_on_the_kernel",
            ],
            7,
            "unpack_from requires a buffer of at least 37 bytes",  # pyroute2's crash inside gVisor, on Linux
        ),
        (
            "RuleBlindLinux",
            ["suites/rtnetlink/test_other_messages.py::test_rule_dump"],
            2,
            "errno kernel None, stack 95",
        ),
        (
            "LossyDumpLinux",
            ["suites/rtnetlink/test_large_dumps.py::test_large_dump_across_reads"],
            6,
            "via 198.18.0.1 kernel 1, stack 0",
        ),
        (
            "WrongRouteLinux",
            ["suites/rtnetlink/test_iproute2.py::test_ip_batch_as_on_the_kernel"],
            4,
            "ip route get 198.19.64.9",
        ),
    ],
    ids=[
        "socket-options",
        "notifications",
        "every-attribute",
        "pyroute2-api",
        "error-quote",
        "other-messages",
        "large-dumps",
        "iproute2-corpus",
    ],
)
def test_rtnetlink_family_fails_on_a_mutant(mutant, targets, failing, evidence):
    done = run_pytest(*targets, "--stack", f"linux,examples.mutants:{mutant}", "-p", "no:randomly")
    assert done.returncode == 1, done.stdout[-3000:]
    assert f"{failing} failed" in done.stdout, done.stdout[-3000:]
    assert evidence in done.stdout, done.stdout[-3000:]
    failed = [line for line in done.stdout.splitlines() if line.startswith("FAILED")]
    assert failed and all("[linux-" in line for line in failed), failed  # the kernel itself passes them all
