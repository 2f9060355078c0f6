"""NETLINK_ROUTE as a stack emulates it, against the kernel: the probe that runs inside a stack, the
normaliser and differ, the tools run inside (ip, pyroute2), the differential framework the
rtnetlink suite is written in, and the support table.

Kept import-light: `python -m labkit.rtnetlink.probe` starts inside slow sandboxes.
"""
