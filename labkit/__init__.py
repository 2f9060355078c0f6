"""labkit: a packet-level test and conformance lab for sandboxed network stacks.

Kept import-light on purpose: `python -m labkit.services` runs inside sandboxes with only the
standard library in reach, so nothing here may import scapy or pyroute2.
"""

__version__ = "0.1.0"
