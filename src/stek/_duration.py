"""Durations written the way operators write them: ``30s``, ``10m``, ``1h``, ``2d``."""

from __future__ import annotations

import re

from .errors import ConfigError

_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}
_PART = re.compile(r"(\d+)([smhdw])")


def parse_duration(text: str) -> int:
    """Return whole seconds for ``text`` such as ``90s``, ``10m``, ``1h30m``, ``2d``.

    A bare number is refused: ``--accept-for 12`` meaning twelve seconds
    (not hours) is a mistake nobody would notice.  Raises :class:`ConfigError`.
    """
    s = text.strip().lower()
    if s.isdigit():
        raise ConfigError(_no_unit(text))
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


def _no_unit(text: str) -> str:
    n = text.strip()
    return (f"invalid duration {text!r}: no unit; write {n}s for seconds "
            f"(or {n}m, {n}h, {n}d)")


_SECONDS = re.compile(r"(\d+(?:\.\d+)?|\.\d+)(ms|s|m|h)?")


def parse_seconds(text: str, what: str = "duration") -> float:
    """Seconds, possibly fractional, for ``text`` such as ``1.5s``, ``200ms``, ``2m``.

    For timeouts given in store URL options.  A bare number is refused, as by
    :func:`parse_duration`.
    """
    s = text.strip().lower()
    m = _SECONDS.fullmatch(s)
    if m is None:
        raise ConfigError(f"invalid {what} {text!r}: use forms like 500ms, 1.5s, 2m")
    if m.group(2) is None:
        raise ConfigError(_no_unit(text).replace("duration", what, 1))
    return float(m.group(1)) * {"ms": 0.001, "s": 1, "m": 60, "h": 3600}[m.group(2)]


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
