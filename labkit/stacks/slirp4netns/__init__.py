"""slirp4netns (libslirp): the launcher a container engine would use, and the stack driver on it.

`options` (podman's key=value contract), `features` (read from --help), `launcher` (ready and
exit fds, pidfd), `api` (the API socket's port forwards) and `driver` (the stack under test).
"""

from labkit.stacks.slirp4netns.api import SlirpApi, SlirpApiError
from labkit.stacks.slirp4netns.driver import Slirp4netnsStack
from labkit.stacks.slirp4netns.features import Features
from labkit.stacks.slirp4netns.launcher import Slirp4netns, command_line
from labkit.stacks.slirp4netns.options import SlirpOptions

__all__ = ["Features", "Slirp4netns", "Slirp4netnsStack", "SlirpApi", "SlirpApiError", "SlirpOptions", "command_line"]
