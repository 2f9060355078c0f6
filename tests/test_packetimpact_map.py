"""suites/transport/packetimpact.toml maps each of gVisor's packetimpact tests to the labkit checks
that cover it: every upstream test is listed once, and every check it names exists."""

from __future__ import annotations

import ast
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
MAP = ROOT / "suites" / "transport" / "packetimpact.toml"

# test/packetimpact/tests/*_test.go at google/gvisor 3c5eee17 (2026-08-21)
UPSTREAM = set(
    """
    fin_wait2_timeout icmpv4_socket_send_recv icmpv6_param_problem icmpv6_socket_send_recv
    ipv4_fragment_reassembly ipv4_id_uniqueness ipv6_fragment_icmp_error ipv6_fragment_reassembly
    ipv6_unknown_options_action tcp_acceptable_ack_syn_rcvd tcp_connect_icmp_error tcp_cork_mss
    tcp_fin_retransmission tcp_handshake_window_size tcp_info tcp_linger tcp_listen_backlog
    tcp_network_unreachable tcp_noaccept_close_rst tcp_outside_the_window tcp_paws_mechanism
    tcp_queue_send_recv_in_syn_sent tcp_rack tcp_rcv_buf_space tcp_retransmits
    tcp_send_window_sizes_piggyback tcp_syncookie tcp_synrcvd_reset tcp_synsent_reset
    tcp_timewait_reset tcp_unacc_seq_ack tcp_user_timeout tcp_window_shrink tcp_zero_receive_window
    tcp_zero_window_probe tcp_zero_window_probe_retransmit tcp_zero_window_probe_usertimeout
    udp_any_addr_recv_unicast udp_discard_mcast_source_addr udp_icmp_error_propagation udp_socket_send_recv
    """.split()
)


def checks_in(path: Path) -> set[str]:
    return {n.name for n in ast.parse(path.read_text()).body if isinstance(n, ast.FunctionDef) and n.name.startswith("test_")}


def test_every_packetimpact_test_is_listed_once():
    entries = tomllib.loads(MAP.read_text())["test"]
    names = [e["name"] for e in entries]
    assert len(UPSTREAM) == 41
    assert sorted(names) == sorted(UPSTREAM), f"missing {sorted(UPSTREAM - set(names))}, unknown {sorted(set(names) - UPSTREAM)}"
    assert len(names) == len(set(names)), "a test is listed twice"


def test_every_entry_names_existing_checks_and_says_what_is_left():
    for entry in tomllib.loads(MAP.read_text())["test"]:
        assert entry["extent"] in ("whole", "part"), entry
        assert entry["extent"] == "whole" or entry.get("left"), f"{entry['name']}: a partial cover says what is left"
        assert entry["checks"], f"{entry['name']}: no check"
        for check in entry["checks"]:
            module, _, name = check.partition("::")
            path = ROOT / "suites" / module
            assert path.is_file(), f"{entry['name']}: no module {module}"
            assert name in checks_in(path), f"{entry['name']}: {module} has no check {name}"
