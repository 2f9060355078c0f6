"""User-mode networking: what a tap stack (slirp4netns, pasta) does with a container's traffic.

The Wire on the container's tap plays the container; the lab's outside namespace, behind the
host namespace the stack runs in, plays the internet (labkit.testbed.outside). Outbound TCP,
UDP and ICMP, DNS and DHCP are checked from the tap; port forwarding from the outside in.
"""
