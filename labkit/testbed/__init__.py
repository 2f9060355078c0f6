"""The unit a check runs against: a topology, a started stack and a Wire (`bed`), and the pool that
keeps started testbeds of slow stacks for the next check (`pool`)."""

from labkit.testbed.bed import Layout, Testbed, down_all, standard_layout
from labkit.testbed.pool import TestbedPool

__all__ = ["Layout", "Testbed", "TestbedPool", "down_all", "standard_layout"]
