"""The three-way handshake: what each side offers, what is agreed, and a SYN nobody listens for."""

import pytest
from scapy.layers.inet import TCP

from labkit.net.plan import FAMILIES
from labkit.packet.testbench import TcpConnection
from labkit.packet.testbench.tcp import options_of

pytestmark = [pytest.mark.needs("tcp", "agent"), pytest.mark.varies_with(), pytest.mark.parametrize("family", FAMILIES)]

MTU = 1500  # the standard topology's


def test_syn_ack_answers_every_option_the_syn_offered(agent, wire, ends):
    listener = agent.listener(ends.family)
    conn = TcpConnection(wire, ends, port=listener.port)

    syn = conn.send(flags="S")
    syn_ack = conn.expect(flags="SA")

    got = options_of(syn_ack[TCP])
    want_mss = MTU - (20 if ends.version == 4 else 40) - 20
    assert got.get("MSS") == want_mss, f"SYN-ACK announces MSS {got.get('MSS')}; want {want_mss} for the link's MTU of {MTU}"
    missing = [name for name in ("WScale", "SAckOK", "Timestamp") if name not in got]
    assert not missing, f"SYN-ACK leaves out {missing} the SYN offered; it carries {sorted(got)}"
    sent_tsval = options_of(syn[TCP])["Timestamp"][0]
    assert got["Timestamp"][1] == sent_tsval, f"SYN-ACK's TSecr {got['Timestamp'][1]} does not echo the SYN's TSval {sent_tsval}"
    conn.send(flags="A")
    assert listener.accept().getpeername() == (ends.peer, conn.local_port)


def test_syn_to_a_closed_port_is_reset(agent, wire, ends):
    closed = agent.listener(ends.family)
    port = closed.port
    closed.close()  # a port the stack surely does not listen on
    conn = TcpConnection(wire, ends, port=port)

    conn.send(flags="S")

    # RFC 9293 3.10.7.1: a SYN to a closed port gets <SEQ=0><ACK=SEG.SEQ+SEG.LEN><CTL=RST,ACK>.
    conn.expect(flags="RA", seq=0, ack=conn.snd_nxt)
