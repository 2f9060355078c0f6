"""Conformance suite: slirp (see the issue tracker for its checks)."""
