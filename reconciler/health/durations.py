"""Durations from specs as float seconds, with defaults, for health checks and providers.

The grammar is the spec stage's (``reconciler.spec.durations``: Go-style ``500ms``, ``30s``,
``1h30m``), so what validates is what runs.
"""

from __future__ import annotations

from datetime import timedelta

from reconciler.spec.durations import parse_duration


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
