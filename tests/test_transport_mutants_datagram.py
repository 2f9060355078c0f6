"""The listen-queue, UDP and ICMP families of suites/transport fail on a Linux broken in the way
each check guards against, while the unbroken Linux passes them in the same run."""

import importlib
import shutil

import pytest

from .conftest import run_pytest

NFT = pytest.mark.skipif(
    not shutil.which("nft"), reason="the mutant loads an nftables ruleset; install: apt-get install -y nftables"
)
LISTEN = "suites/transport/test_listen.py::"
UDP = "suites/transport/test_udp.py::"
ICMP = "suites/transport/test_icmp.py::"


@pytest.mark.parametrize(
    "mutant, targets, failing, evidence",
    [
        pytest.param(
            "examples.mutants:SmallAcceptQueueLinux",
            [LISTEN + "test_a_syn_is_ignored_while_the_accept_queue_is_full"],
            2,
            "connection 2 of the backlog + 1 = 2 the accept queue holds (listen(1)) was not established",
            id="accept-queue-size",
        ),
        pytest.param(
            "examples.mutants:AbortOnOverflowLinux",
            [LISTEN + "test_the_final_ack_is_dropped_while_the_accept_queue_is_full"],
            2,
            "the final ACK met a full accept queue and the stack answered R seq=",
            id="accept-queue-overflow",
        ),
        pytest.param(
            "examples.mutants:AlwaysSynCookiesLinux",
            [LISTEN + "test_a_listener_keeps_backlog_plus_one_handshakes_before_using_cookies"],
            2,
            "SYN-ACKs were sent [1, 1] times",
            id="syn-queue-size",
        ),
        pytest.param(
            "examples.mutants:NoSynCookiesLinux",
            [LISTEN + "test_a_syn_cookie_completes_the_connection_from_the_final_ack_alone"],
            2,
            "a SYN over a full SYN queue got no SYN-ACK (want one carrying a cookie)",
            id="syn-cookies",
        ),
        pytest.param(
            "examples.mutants:RstDeafLinux",
            [LISTEN + "test_a_connection_reset_before_accept_is_accepted_and_reports_the_reset"],
            2,
            "the read after the data failed with TIMEOUT; want ECONNRESET",
            marks=NFT,
            id="reset-before-accept",
        ),
        pytest.param(
            "examples.mutants:RstMuteLinux",
            [LISTEN + "test_closing_a_listener_resets_the_connections_it_never_accepted"],
            2,
            "closing the listener sent no RST to the connection it never accepted",
            marks=NFT,
            id="listener-close",
        ),
        pytest.param(
            "examples.mutants:UnreachableBlindLinux",
            [
                UDP + "test_port_unreachable_fails_the_next_call_on_a_connected_socket",
                UDP + "test_port_unreachable_is_queued_with_its_origin_on_the_error_queue",
            ],
            6,
            "after port unreachable the socket polls []; want POLLERR",
            marks=NFT,
            id="udp-icmp-error",
        ),
        pytest.param(
            "examples.mutants:MulticastSourceLinux",
            [UDP + "test_a_datagram_from_a_multicast_source_is_discarded"],
            2,
            "a datagram from multicast 224.0.0.1 was delivered",
            marks=NFT,
            id="multicast-source",
        ),
        pytest.param(
            "examples.mutants:EmptyDatagramLosingLinux",
            [UDP + "test_an_empty_datagram_is_sent_and_delivered"],
            2,
            "the empty datagram the socket sent never reached the Wire",
            marks=NFT,
            id="empty-datagram",
        ),
        pytest.param(
            "examples.mutants:BadTxChecksumLinux",
            [UDP + "test_sendto_leaves_with_the_sockets_port_and_a_valid_checksum"],
            2,
            "bad checksums in the datagram: ['UDP.chksum: 0x1234",
            marks=NFT,
            id="udp-checksum",
        ),
        pytest.param(
            "examples.mutants:EchoReplyDeafLinux",
            [ICMP + "test_an_echo_socket_sends_requests_and_delivers_replies"],
            2,
            "the echo socket delivered no reply (TIMEOUT)",
            marks=NFT,
            id="echo-socket",
        ),
        pytest.param(
            "examples.mutants:SilentPortLinux",
            [ICMP + "test_a_datagram_to_a_closed_port_gets_port_unreachable"],
            2,
            "got no port unreachable",
            marks=NFT,
            id="port-unreachable",
        ),
        pytest.param(
            "examples.mutants:PmtuBlindLinux",
            [
                ICMP + "test_a_too_big_error_refuses_larger_datagrams_on_a_connected_udp_socket",
                ICMP + "test_a_connected_udp_socket_reports_the_path_mtu",
                ICMP + "test_a_too_big_error_shrinks_the_tcp_segments_that_follow",
            ],
            6,
            "after the error announced 1300",
            marks=NFT,
            id="path-mtu",
        ),
        pytest.param(
            "examples.mutants:UnreachableBlindLinux",
            [ICMP + "test_destination_unreachable_fails_a_tcp_connect"],
            4,
            "connect ended with TIMEOUT after",
            marks=NFT,
            id="tcp-connect-unreachable",
        ),
        pytest.param(
            "examples.mutants:AnyBroadcastLinux",
            [UDP + "test_a_broadcast_reaches_sockets_bound_to_the_any_address_only"],
            1,
            "read b'limited' first; want b'unicast' (no broadcast)",
            marks=NFT,
            id="broadcast",
        ),
    ],
)
def test_checks_fail_on_a_mutant(mutant, targets, failing, evidence):
    done = run_pytest(*targets, "--stack", f"linux,{mutant}", "-p", "no:randomly", "-n", "0")
    assert done.returncode == 1, done.stdout[-3000:]
    assert f"{failing} failed" in done.stdout, done.stdout[-3000:]
    assert evidence in done.stdout, done.stdout[-3000:]
    # Only the mutant fails: the unbroken reference passes the same checks in the same run.
    module, name = mutant.split(":")
    kind = getattr(importlib.import_module(module), name).kind
    failed = [line for line in done.stdout.splitlines() if line.startswith("FAILED")]
    assert failed and all(f"[{kind}-" in line for line in failed), done.stdout[-3000:]
