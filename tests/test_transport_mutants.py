"""Each family of transport checks (suites/transport) fails on a Linux broken in the way it
guards against (examples.mutants), while the unbroken linux passes the same checks in the same run.

A row: the mutant, the checks it should fail, how many of their cells fail, and a piece of the
failure's text that shows why. Its id names the family of the checks (the module) and the property.
"""

import pytest

from .conftest import assert_only_the_mutant_fails
from .test_mutants import NFT

HANDSHAKE = "suites/transport/test_handshake.py::"
RST = "suites/transport/test_rst.py::"
WINDOW = "suites/transport/test_window.py::"
TIMERS = "suites/transport/test_timers.py::"
LISTEN = "suites/transport/test_listen.py::"
UDP = "suites/transport/test_udp.py::"
ICMP = "suites/transport/test_icmp.py::"
IP = "suites/transport/test_ip.py::"
FRAGMENTS = "suites/transport/test_fragments.py::"


@pytest.mark.parametrize(
    "mutant, targets, failing, evidence",
    [
        # the handshake and RSTs
        pytest.param(
            "MssBlindLinux",
            [HANDSHAKE + "test_segments_never_exceed_the_mss_the_peer_announced"],
            2,
            "data segments carry more than the MSS of 536 the Wire announced",
            marks=NFT,
            id="handshake-mss",
        ),
        pytest.param(
            "NoSackLinux",
            [HANDSHAKE + "test_sack_blocks_report_data_received_out_of_order"],
            2,
            "the SYN-ACK did not permit SACK the SYN offered",
            id="handshake-sack",
        ),
        pytest.param(
            "NoTimestampsLinux",
            [HANDSHAKE + "test_every_segment_echoes_the_peers_latest_timestamp"],
            2,
            "the SYN-ACK did not agree to the timestamps the SYN offered",
            id="handshake-timestamps",
        ),
        pytest.param(
            "NoWindowScalingLinux",
            [HANDSHAKE + "test_window_scale_is_applied_to_the_window_the_stack_announces"],
            2,
            "the SYN-ACK did not agree to window scaling the SYN offered",
            id="handshake-window-scale",
        ),
        pytest.param(
            "NoTimestampsLinux",
            [HANDSHAKE + "test_active_open_syn_offers_every_option"],
            2,
            "the stack's SYN does not offer ['Timestamp']",
            id="handshake-active-open-options",
        ),
        pytest.param(
            "RstMuteLinux",
            [RST + "test_close_with_unread_data_sends_rst", RST + "test_linger_zero_close_sends_rst"],
            4,
            "sent nothing within 2s; want an RST",
            marks=NFT,
            id="rst-abort",
        ),
        pytest.param(
            "RstDeafLinux",
            [RST + "test_rst_at_rcv_nxt_resets_the_connection", RST + "test_rst_acking_the_syn_refuses_the_connect"],
            6,
            "connect ended with TIMEOUT; want ECONNREFUSED",
            marks=NFT,
            id="rst-honoured",
        ),
        pytest.param(
            "Rfc1337Linux",
            [RST + "test_rst_in_time_wait_ends_it"],
            2,
            "TIME-WAIT outlived the RST",
            id="rst-time-wait",
        ),
        pytest.param(
            "NoBareAckLinux",
            [
                RST + "test_rst_in_the_window_but_not_at_rcv_nxt_gets_a_challenge_ack",
                RST + "test_syn_in_an_established_connection_gets_a_challenge_ack",
            ],
            4,
            "the stack sent no ACK",
            marks=NFT,
            id="rst-challenge-ack",
        ),
        # windows, loss and timers
        pytest.param(
            "WindowBlindLinux",
            [WINDOW + "test_zero_window_is_probed_while_data_waits"],
            2,
            "want a probe at",
            marks=NFT,
            id="window-zero-window-probe",
        ),
        pytest.param(
            "WindowBlindLinux",
            [WINDOW + "test_sender_respects_a_shrunk_window"],
            2,
            "after the window shrank to end at byte 1500, the stack sent up to byte(s)",
            marks=NFT,
            id="window-shrink",
        ),
        pytest.param(
            "WindowInflatingLinux",
            [WINDOW + "test_unread_data_closes_the_receive_window"],
            2,
            "bytes its window of 65535 had room for",
            marks=NFT,
            id="window-zero-receive-window",
        ),
        pytest.param(
            "WindowInflatingLinux",
            [WINDOW + "test_announced_window_follows_so_rcvbuf"],
            2,
            "the SYN-ACK offers a window of 65535",
            marks=NFT,
            id="window-rcvbuf",
        ),
        pytest.param(
            "FlatBackoffLinux",
            [TIMERS + "test_retransmissions_back_off_exponentially", WINDOW + "test_zero_window_probes_back_off"],
            4,
            "each gap should be about twice the one before",
            id="timers-backoff",
        ),
        pytest.param(
            "NoRetransmitLinux",
            [TIMERS + "test_fin_is_retransmitted_until_acknowledged"],
            4,
            "the stack's FIN, never acknowledged, was not sent again within 2 s",
            marks=NFT,
            id="timers-fin-retransmission",
        ),
        pytest.param(
            "NoRetransmitLinux",
            [TIMERS + "test_retransmissions_back_off_exponentially"],
            2,
            "copy 2 of the segment at",
            marks=NFT,
            id="timers-retransmission",
        ),
        pytest.param(
            "LateFastRetransmitLinux",
            [TIMERS + "test_three_duplicate_acks_trigger_fast_retransmit"],
            2,
            "by the timer, not by fast retransmit",
            id="timers-fast-retransmit",
        ),
        pytest.param(
            "NoSackLinux",
            [
                TIMERS + "test_sack_lets_the_stack_retransmit_only_the_holes",
                TIMERS + "test_tail_loss_probe_resends_the_last_segment",
            ],
            4,
            "the stack did not agree to SACK",
            id="timers-sack-recovery",
        ),
        pytest.param(
            "NoTimestampsLinux",
            [TIMERS + "test_paws_drops_a_segment_with_an_old_timestamp"],
            2,
            "the stack did not agree to timestamps",
            id="timers-paws",
        ),
        pytest.param(
            "RstMuteLinux",
            [TIMERS + "test_fin_wait_2_ends_after_tcp_linger2"],
            2,
            "the ACK still got no RST 3 s into FIN-WAIT-2",
            marks=NFT,
            id="timers-fin-wait-2",
        ),
        pytest.param(
            "RstMuteLinux",
            [TIMERS + "test_user_timeout_aborts_unacknowledged_data", WINDOW + "test_user_timeout_ends_zero_window_probing"],
            4,
            "the connection timed out (ETIMEDOUT), yet a segment from the peer got no RST",
            marks=NFT,
            id="timers-user-timeout",
        ),
        # the listen queue, UDP and ICMP
        pytest.param(
            "SmallAcceptQueueLinux",
            [LISTEN + "test_a_syn_is_ignored_while_the_accept_queue_is_full"],
            2,
            "connection 2 of the backlog + 1 = 2 the accept queue holds (listen(1)) was not established",
            id="listen-accept-queue-size",
        ),
        pytest.param(
            "AbortOnOverflowLinux",
            [LISTEN + "test_the_final_ack_is_dropped_while_the_accept_queue_is_full"],
            2,
            "the final ACK met a full accept queue and the stack answered R seq=",
            id="listen-accept-queue-overflow",
        ),
        pytest.param(
            "AlwaysSynCookiesLinux",
            [LISTEN + "test_a_listener_keeps_backlog_plus_one_handshakes_before_using_cookies"],
            2,
            "SYN-ACKs were sent [1, 1] times",
            id="listen-syn-queue-size",
        ),
        pytest.param(
            "NoSynCookiesLinux",
            [LISTEN + "test_a_syn_cookie_completes_the_connection_from_the_final_ack_alone"],
            2,
            "a SYN over a full SYN queue got no SYN-ACK (want one carrying a cookie)",
            id="listen-syn-cookies",
        ),
        pytest.param(
            "RstDeafLinux",
            [LISTEN + "test_a_connection_reset_before_accept_is_accepted_and_reports_the_reset"],
            2,
            "the read after the data failed with TIMEOUT; want ECONNRESET",
            marks=NFT,
            id="listen-reset-before-accept",
        ),
        pytest.param(
            "RstMuteLinux",
            [LISTEN + "test_closing_a_listener_resets_the_connections_it_never_accepted"],
            2,
            "closing the listener sent no RST to the connection it never accepted",
            marks=NFT,
            id="listen-close",
        ),
        pytest.param(
            "UnreachableBlindLinux",
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
            "MulticastSourceLinux",
            [UDP + "test_a_datagram_from_a_multicast_source_is_discarded"],
            2,
            "a datagram from multicast 224.0.0.1 was delivered",
            marks=NFT,
            id="udp-multicast-source",
        ),
        pytest.param(
            "EmptyDatagramLosingLinux",
            [UDP + "test_an_empty_datagram_is_sent_and_delivered"],
            2,
            "the empty datagram the socket sent never reached the Wire",
            marks=NFT,
            id="udp-empty-datagram",
        ),
        pytest.param(
            "BadTxChecksumLinux",
            [UDP + "test_sendto_leaves_with_the_sockets_port_and_a_valid_checksum"],
            2,
            "bad checksums in the datagram: ['UDP.chksum: 0x1234",
            marks=NFT,
            id="udp-checksum",
        ),
        pytest.param(
            "EchoReplyDeafLinux",
            [ICMP + "test_an_echo_socket_sends_requests_and_delivers_replies"],
            2,
            "the echo socket delivered no reply (TIMEOUT)",
            marks=NFT,
            id="icmp-echo-socket",
        ),
        pytest.param(
            "SilentPortLinux",
            [ICMP + "test_a_datagram_to_a_closed_port_gets_port_unreachable"],
            2,
            "got no port unreachable",
            marks=NFT,
            id="icmp-port-unreachable",
        ),
        pytest.param(
            "PmtuBlindLinux",
            [
                ICMP + "test_a_too_big_error_refuses_larger_datagrams_on_a_connected_udp_socket",
                ICMP + "test_a_connected_udp_socket_reports_the_path_mtu",
                ICMP + "test_a_too_big_error_shrinks_the_tcp_segments_that_follow",
            ],
            6,
            "after the error announced 1300",
            marks=NFT,
            id="icmp-path-mtu",
        ),
        pytest.param(
            "UnreachableBlindLinux",
            [ICMP + "test_destination_unreachable_fails_a_tcp_connect"],
            4,
            "connect ended with TIMEOUT after",
            marks=NFT,
            id="icmp-tcp-connect-unreachable",
        ),
        pytest.param(
            "AnyBroadcastLinux",
            [UDP + "test_a_broadcast_reaches_sockets_bound_to_the_any_address_only"],
            1,
            "read b'limited' first; want b'unicast' (no broadcast)",
            marks=NFT,
            id="udp-broadcast",
        ),
        # IP and fragments
        pytest.param(
            "NoReassemblyLinux",
            [FRAGMENTS + "test_fragments_in_order_are_reassembled", FRAGMENTS + "test_fragments_out_of_order_are_reassembled"],
            4,
            "in order: the socket got nothing, want the datagram whole",
            id="fragments-reassembly",
        ),
        pytest.param(
            "TtlRewritingLinux",
            [IP + "test_outgoing_packets_carry_ttl_64_by_default", IP + "test_socket_ttl_is_honoured_on_the_wire"],
            8,
            "the udp packet left with TTL/hop limit 200, want the default 64",
            marks=NFT,
            id="ip-ttl",
        ),
        pytest.param(
            "RepeatingIdLinux",
            [IP + "test_ipv4_ids_do_not_repeat_towards_one_destination", IP + "test_retransmitted_segment_gets_a_new_ipv4_id"],
            2,
            "IDs repeated among 40 non-atomic datagrams to 198.18.0.1: [4242]",
            marks=NFT,
            id="ip-ipv4-id",
        ),
        pytest.param(
            "NoPmtuDiscoveryLinux",
            [IP + "test_ipv4_packets_leave_with_df_set_for_path_mtu_discovery"],
            2,
            "(DF clear): no path MTU discovery",
            id="ip-df",
        ),
        pytest.param(
            "SilentIpErrorsLinux",
            [FRAGMENTS + "test_incomplete_datagram_times_out_with_time_exceeded", IP + "test_routing_header_type_0_is_refused"],
            5,
            "no time exceeded (reassembly) within 3 s",
            marks=NFT,
            id="ip-errors",
        ),
        pytest.param(
            "OptionDroppingLinux",
            [IP + "test_datagram_with_ipv4_options_is_delivered", IP + "test_padding_options_are_skipped"],
            6,
            "behind a hop-by-hop options header with PadN: the socket got nothing",
            marks=NFT,
            id="ip-options",
        ),
    ],
)
def test_transport_checks_fail_on_a_mutant(mutant, targets, failing, evidence):
    # Only the mutant fails; the unbroken linux passes the same checks in the same run.
    assert_only_the_mutant_fails(targets, "linux", f"examples.mutants:{mutant}", failing, evidence)
