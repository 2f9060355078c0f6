"""Conformance suite: rtnetlink (see the issue tracker for its checks)."""
