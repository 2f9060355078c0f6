"""gVisor (runsc) behind the lab's veth; see `driver` for how and `variants` for the knobs."""

from labkit.stacks.gvisor.driver import GVisorStack
from labkit.stacks.gvisor.variants import VARIANTS

__all__ = ["VARIANTS", "GVisorStack"]
