"""gVisor (runsc) behind the lab's veth; see `driver` for how and `variants` for the knobs."""

from .driver import GVisorStack
from .variants import VARIANTS

__all__ = ["VARIANTS", "GVisorStack"]
