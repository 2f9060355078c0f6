"""slirp4netns, launched as a container engine launches it: options, features, process, API."""

from .api import SlirpApi, SlirpApiError
from .features import Features
from .launcher import Slirp4netns, command_line
from .options import SlirpOptions

__all__ = ["Features", "Slirp4netns", "SlirpApi", "SlirpApiError", "SlirpOptions", "command_line"]
