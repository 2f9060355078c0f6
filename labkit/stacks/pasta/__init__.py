"""pasta (passt's namespace mode): its launcher (`launcher`) and the stack driver on it (`driver`)."""

from labkit.stacks.pasta.driver import PastaStack
from labkit.stacks.pasta.launcher import Pasta, PastaOptions, forward_spec

__all__ = ["Pasta", "PastaOptions", "PastaStack", "forward_spec"]
