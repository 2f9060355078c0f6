"""Stacks under test: one interface (`base.Stack`), a driver per stack, and the registry.

`linux` (the kernel, the reference), `gvisor/` (runsc), `slirp4netns/` and `pasta/` (tap stacks,
`tap.TapStack`), each with its launcher; `registry` finds a driver and variant by name
(`resolve("gvisor-ch4")`), also third-party ones from the `labkit.stacks` entry point group;
`builds` gives a driver a binary of its own (`gvisor@/opt/runsc-nightly/runsc`), and `programs`
says what a binary is (its version, its package, a digest).
"""

from labkit.stacks.base import Availability, Stack
from labkit.stacks.builds import Build, BuildsFile
from labkit.stacks.gvisor import GVisorStack
from labkit.stacks.linux import LinuxStack
from labkit.stacks.pasta import PastaStack
from labkit.stacks.registry import StackSpec, default_specs, known_drivers, load_builds, load_driver, resolve
from labkit.stacks.service import Service
from labkit.stacks.slirp4netns import Slirp4netnsStack

__all__ = [
    "Availability",
    "Build",
    "BuildsFile",
    "GVisorStack",
    "LinuxStack",
    "PastaStack",
    "Service",
    "Slirp4netnsStack",
    "Stack",
    "StackSpec",
    "default_specs",
    "known_drivers",
    "load_builds",
    "load_driver",
    "resolve",
]
