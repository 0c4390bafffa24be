"""Durations written the way operators write them: ``30s``, ``10m``, ``1h``, ``2d``."""

from __future__ import annotations

import re

from .errors import ConfigError

_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}
_PART = re.compile(r"(\d+)([smhdw])")


def parse_duration(text: str) -> int:
    """Return whole seconds for ``text`` such as ``90s``, ``10m``, ``1h30m``, ``2d``.

    A bare number is taken as seconds.  Raises :class:`ConfigError` otherwise.
    """
    s = text.strip().lower()
    if s.isdigit():
        return int(s)
    pos = 0
    total = 0
    for m in _PART.finditer(s):
        if m.start() != pos:
            break
        total += int(m.group(1)) * _UNITS[m.group(2)]
        pos = m.end()
    if pos != len(s) or not s:
        raise ConfigError(f"invalid duration {text!r}: use forms like 30s, 10m, 1h, 2d")
    return total


def format_duration(seconds: int) -> str:
    """Inverse of :func:`parse_duration`, shortest exact form (``3600`` -> ``1h``)."""
    if seconds == 0:
        return "0s"
    out = []
    rest = seconds
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60), ("s", 1)):
        q, rest = divmod(rest, size)
        if q:
            out.append(f"{q}{unit}")
    return "".join(out)
