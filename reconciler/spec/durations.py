"""Go-style durations (``500ms``, ``30s``, ``1h30m``, ``1.5s``): parsing to seconds and back.

The syntax is Go's ``time.ParseDuration`` without a sign (a negative wait or timeout means
nothing here); ``schemas/common.json#/$defs/duration`` accepts exactly the same strings. This is
the one parser of durations: health checks and every provider read spec durations through
``parse_duration`` / ``to_seconds``, so what validates is what runs.
"""

from __future__ import annotations

import re
from datetime import timedelta

_NANOS_PER_UNIT: dict[str, int] = {
    "ns": 1,
    "us": 1_000,
    "µs": 1_000,  # U+00B5 MICRO SIGN, as Go accepts
    "μs": 1_000,  # U+03BC GREEK SMALL LETTER MU, as Go accepts
    "ms": 1_000_000,
    "s": 1_000_000_000,
    "m": 60 * 1_000_000_000,
    "h": 3600 * 1_000_000_000,
}

_COMPONENT = re.compile(r"([0-9]+(?:\.[0-9]*)?|\.[0-9]+)(ns|us|µs|μs|ms|s|m|h)")
EXAMPLES = "500ms, 30s, 5m, 1h30m, 1.5s"


def parse_duration(text: str) -> float:
    """Seconds in a Go-style duration; raises ValueError naming the text when it is not one."""
    if not isinstance(text, str):
        raise ValueError(f"{text!r} is not a valid duration: expected a string such as {EXAMPLES}")
    if text == "0":
        return 0.0
    if not text:
        raise ValueError(f"'' is not a valid duration: expected e.g. {EXAMPLES}")
    nanos = 0
    pos = 0
    while pos < len(text):
        match = _COMPONENT.match(text, pos)
        if match is None:
            rest = text[pos:]
            if rest[:1] in {"-", "+"}:
                reason = "a sign is not allowed"
            elif re.match(r"(?:[0-9]+\.?[0-9]*|\.[0-9]+)$", rest):
                reason = f"missing unit after {rest!r} (ns, us, ms, s, m or h)"
            elif re.match(r"(?:[0-9]+\.?[0-9]*|\.[0-9]+)[A-Za-zµμ]", rest):
                reason = f"unknown unit in {rest!r} (ns, us, ms, s, m or h)"
            else:
                reason = f"unexpected {rest!r}"
            raise ValueError(f"{text!r} is not a valid duration: {reason}; e.g. {EXAMPLES}")
        number, unit = match.group(1), match.group(2)
        whole, _, fraction = number.partition(".")
        scale = _NANOS_PER_UNIT[unit]
        nanos += int(whole or "0") * scale
        if fraction:
            # integer arithmetic so "1.1s" is exactly 1_100_000_000 ns
            nanos += int(fraction) * scale // 10 ** len(fraction)
        pos = match.end()
    return nanos / 1e9


def to_seconds(value: object, default: float) -> float:
    """``value`` (a Go duration string, a number of seconds, or None for ``default``) as
    seconds; ValueError when it is none of those."""
    if value is None:
        return default
    if isinstance(value, bool):
        raise ValueError(f"invalid duration {value!r}")
    if isinstance(value, int | float):
        return float(value)
    if isinstance(value, timedelta):
        return value.total_seconds()
    if isinstance(value, str):
        return parse_duration(value)
    raise ValueError(f"invalid duration {value!r}")


def format_duration(seconds: float) -> str:
    """The shortest Go-style spelling: 0s, 250ms, 1.5s, 1m30s, 2h, 1h0m5s is written 1h5s."""
    nanos = round(seconds * 1e9)
    if nanos == 0:
        return "0s"
    sign = "-" if nanos < 0 else ""
    nanos = abs(nanos)
    if nanos < 1_000:
        return f"{sign}{nanos}ns"
    if nanos < 1_000_000:
        return f"{sign}{_decimal(nanos, 1_000)}us"
    if nanos < 1_000_000_000:
        return f"{sign}{_decimal(nanos, 1_000_000)}ms"
    hours, rest = divmod(nanos, _NANOS_PER_UNIT["h"])
    minutes, rest = divmod(rest, _NANOS_PER_UNIT["m"])
    parts = []
    if hours:
        parts.append(f"{hours}h")
    if minutes:
        parts.append(f"{minutes}m")
    if rest:
        parts.append(f"{_decimal(rest, 1_000_000_000)}s")
    return sign + "".join(parts)


def _decimal(nanos: int, scale: int) -> str:
    whole, fraction = divmod(nanos, scale)
    if not fraction:
        return str(whole)
    digits = len(str(scale)) - 1
    return f"{whole}.{fraction:0{digits}d}".rstrip("0")
