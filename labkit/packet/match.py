"""Template matching: a scapy packet whose unset fields are don't-care.

A field counts as set when the test gave it (it is in the layer's `fields`); defaults and
auto-computed values (lengths, checksums) are ignored. Layers are compared position by
position from the template's first layer, which may sit anywhere in the frame (a template
that starts at IP matches any Ethernet frame carrying that IP packet).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from scapy.packet import NoPayload, Packet, Padding, Raw


@dataclass(frozen=True)
class Verdict:
    """How well a frame fits a template: `score` constraints met, `diff` the first one not met."""

    score: int
    diff: str | None

    @property
    def matched(self) -> bool:
        return self.diff is None


def _show(layer: Packet, name: str, value: object) -> str:
    """How scapy would print the value (enum names, flags), numbers unquoted."""
    try:
        shown = layer.get_field(name).i2repr(layer, value)
    except Exception:
        return repr(value)
    if isinstance(shown, str) and re.fullmatch(r"0x[0-9a-fA-F]+|-?\d+", shown):
        return shown
    return repr(shown)


def _field_equal(want: object, got: object) -> bool:
    if want == got:
        return True
    try:
        return int(want) == int(got)  # type: ignore[call-overload]  # FlagValue / enum forms
    except (TypeError, ValueError):
        return str(want).lower() == str(got).lower()


def compare(template: Packet, frame: Packet) -> Verdict:
    """Compare `frame` against `template`; the result says which field differed first."""
    first = type(template)
    layer = frame if isinstance(frame, first) else frame.getlayer(first)
    if layer is None:
        return Verdict(0, f"no {first.__name__} layer")
    score = 1
    want: Packet = template
    while not isinstance(want, NoPayload):
        if isinstance(want, Raw):
            got = _payload_bytes(layer)
            if got != want.load:
                return Verdict(score, f"payload: want {want.load[:32]!r}, got {got[:32]!r}")
            return Verdict(score + 1, None)
        if layer is None or isinstance(layer, (NoPayload, Padding)):
            return Verdict(score, f"missing layer {type(want).__name__} (frame ends)")
        if type(layer) is not type(want):
            return Verdict(score, f"layer {type(want).__name__}: frame has {type(layer).__name__} there")
        for name, value in _constraints(want):
            got_value = layer.getfieldval(name)
            if not _field_equal(value, got_value):
                return Verdict(
                    score,
                    f"{type(want).__name__}.{name}: want {_show(want, name, value)}, got {_show(layer, name, got_value)}",
                )
            score += 1
        score += 1
        want, layer = want.payload, layer.payload
    return Verdict(score, None)


def _constraints(layer: Packet) -> list[tuple[str, object]]:
    """The fields a test author set. scapy also copies empty list defaults (IP options) into
    `fields`; those were not chosen by anyone and stay don't-care."""
    return [
        (name, value)
        for name, value in layer.fields.items()
        if not (isinstance(value, list) and not value and layer.default_fields.get(name) == value)
    ]


def _payload_bytes(layer: Packet | None) -> bytes:
    if layer is None or isinstance(layer, NoPayload):
        return b""
    if isinstance(layer, Raw):
        return bytes(layer.load)
    if isinstance(layer, Padding):
        return b""
    data = bytes(layer)
    pad = layer.getlayer(Padding)
    return data[: len(data) - len(pad.load)] if pad is not None else data


def describe(template: Packet) -> str:
    """The template as a test author wrote it: only the fields they set."""
    parts = []
    layer: Packet = template
    while not isinstance(layer, NoPayload):
        args = ", ".join(f"{k}={_show(layer, k, v)}" for k, v in _constraints(layer))
        parts.append(f"{type(layer).__name__}({args})")
        layer = layer.payload
    return " / ".join(parts)
