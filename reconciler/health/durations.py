"""Go-style durations (``500ms``, ``30s``, ``1h30m``) as float seconds, for health and providers.

Uses ``reconciler.spec.durations.parse_duration`` when the spec stage provides it (one grammar for
validation and use); until then a small parser of the same grammar stands in.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from datetime import timedelta
from typing import Any

_UNITS = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}
_PART = re.compile(r"(\d+(?:\.\d*)?|\.\d+)(ns|us|µs|ms|s|m|h)")


def _parse_go_duration(text: str) -> float:
    """Seconds in a Go duration string; ``0`` alone is allowed, as in Go."""
    s = text.strip()
    if s in ("0", "+0", "-0"):
        return 0.0
    sign = -1.0 if s.startswith("-") else 1.0
    s = s.lstrip("+-")
    pos, total = 0, 0.0
    while pos < len(s):
        m = _PART.match(s, pos)
        if m is None:
            raise ValueError(f"invalid duration {text!r} (expected e.g. 500ms, 30s, 1h30m)")
        total += float(m.group(1)) * _UNITS[m.group(2)]
        pos = m.end()
    if not s:
        raise ValueError(f"invalid duration {text!r} (expected e.g. 500ms, 30s, 1h30m)")
    return sign * total


def _spec_parser() -> Callable[[str], Any] | None:
    try:
        from reconciler.spec.durations import parse_duration
    except ImportError:
        return None
    return parse_duration


def to_seconds(value: object, default: float) -> float:
    """``value`` (a Go duration string, a number of seconds, or None) as seconds."""
    if value is None:
        return default
    if isinstance(value, bool):
        raise ValueError(f"invalid duration {value!r}")
    if isinstance(value, int | float):
        return float(value)
    if isinstance(value, timedelta):
        return value.total_seconds()
    if isinstance(value, str):
        parser = _spec_parser()
        if parser is None:
            return _parse_go_duration(value)
        parsed = parser(value)
        if isinstance(parsed, timedelta):
            return parsed.total_seconds()
        return float(parsed)
    raise ValueError(f"invalid duration {value!r}")
