"""gVisor's network knobs, named: which runsc flags a variant stands for.

A variant is a small dict of options over runsc's defaults (one channel, host GSO when the link
offers it, software GSO as fallback, RX checksum offload on, TX off, fifo qdisc). Keeping the
table as data lets `--stack gvisor-ch4` select one and lets a unit test check every flag.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from labkit.errors import LabInputError

DEFAULTS: Mapping[str, Any] = {
    "network": "sandbox",
    "channels": 1,
    "gso": True,
    "software_gso": True,
    "tx_checksum": False,
    "rx_checksum": True,
    "qdisc": "fifo",
}

VARIANTS: Mapping[str, Mapping[str, Any]] = {
    "": {},
    "ch2": {"channels": 2},
    "ch4": {"channels": 4},
    "nogso": {"gso": False, "software_gso": False},
    "swgso": {"gso": False, "software_gso": True},
    "txcsum": {"tx_checksum": True},
    "norxcsum": {"rx_checksum": False},
    "noqdisc": {"qdisc": "none"},
    "none": {"network": "none"},
}

_ALLOWED: Mapping[str, tuple[Any, ...]] = {
    "network": ("sandbox", "none"),
    "channels": tuple(range(1, 17)),
    "gso": (True, False),
    "software_gso": (True, False),
    "tx_checksum": (True, False),
    "rx_checksum": (True, False),
    "qdisc": ("fifo", "none"),
}


def options(overrides: Mapping[str, Any]) -> dict[str, Any]:
    """The full option set of a variant; unknown keys and values are refused by name."""
    out = dict(DEFAULTS)
    for key, value in overrides.items():
        if key not in _ALLOWED:
            raise LabInputError(f"unknown gvisor option {key!r}; allowed: {', '.join(_ALLOWED)}")
        if value not in _ALLOWED[key] or type(value) is not type(_ALLOWED[key][0]):
            allowed = _ALLOWED[key] if key != "channels" else "1-16"
            raise LabInputError(f"bad gvisor option {key}={value!r}; allowed: {allowed}")
        out[key] = value
    extra = sorted(k for k in overrides if k != "network")
    if out["network"] == "none" and extra:
        raise LabInputError(f"gvisor network=none takes no link options, got {', '.join(extra)}; allowed: none on its own")
    return out


# The runsc flag each option is given by.
FLAG_OF: Mapping[str, str] = {
    "network": "network",
    "channels": "num-network-channels",
    "gso": "gso",
    "software_gso": "software-gso",
    "tx_checksum": "tx-checksum-offload",
    "rx_checksum": "rx-checksum-offload",
    "qdisc": "qdisc",
}


def _flag(key: str, value: Any) -> str:
    if isinstance(value, bool):
        value = "true" if value else "false"
    return f"--{FLAG_OF[key]}={value}"


def network_flags(opts: Mapping[str, Any]) -> list[str]:
    """runsc global flags for the network part of `opts` (always explicit, never runsc's default;
    the driver leaves out a default one that the binary does not take, see `needed_flags`)."""
    if opts["network"] == "none":
        return ["--network=none"]
    return [_flag(key, opts[key]) for key in FLAG_OF]


def needed_flags(overrides: Mapping[str, Any]) -> dict[str, str]:
    """The flags a variant cannot run without (flag -> the option it sets): `network` and the
    flags of the options the variant sets itself. A flag that only restates the lab's default is
    not needed: a binary without it runs the variant on its own default."""
    needed = {FLAG_OF["network"]: "network"}
    needed.update({FLAG_OF[key]: key for key in overrides if key in FLAG_OF})
    return needed
