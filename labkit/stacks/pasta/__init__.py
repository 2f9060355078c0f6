"""pasta (passt's namespace mode): its launcher (`launcher`) and the stack driver on it (`driver`)."""

from labkit.stacks.pasta.driver import PastaStack
from labkit.stacks.pasta.launcher import Forward, Pasta, PastaOptions

__all__ = ["Forward", "Pasta", "PastaOptions", "PastaStack"]
