"""Frames on the peer end: the Wire (inject, capture, expect), template matching, checksum verdicts,
kernel socket filters, virtio_net_hdr sockets, what a process's AF_PACKET sockets are, the lab's
scapy layers, and the connection testbench built on the Wire."""
