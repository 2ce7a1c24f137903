"""Semantic checks of ``spec.syncWindows`` (a schema cannot call croniter or zoneinfo).

Evaluating windows (is one active, when does the next open) is the planning stage's:
``reconciler.plan.windows``.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from reconciler.spec.cron import cron_error, timezone_error
from reconciler.spec.durations import parse_duration


def window_problems(windows: Any) -> Iterator[tuple[tuple[str | int, ...], str]]:
    """(path below the document, message) of each problem of a schema-valid ``syncWindows``
    list: a cron expression croniter refuses, an unknown time zone, a duration of 0."""
    if not isinstance(windows, list):
        return
    for index, window in enumerate(windows):
        if not isinstance(window, dict):
            continue
        where = f"spec.syncWindows[{index}]"
        error = cron_error(window.get("schedule"))
        if error:
            yield ("spec", "syncWindows", index, "schedule"), f"{where}.schedule: {error}"
        if "timezone" in window:
            error = timezone_error(window["timezone"])
            if error:
                yield ("spec", "syncWindows", index, "timezone"), f"{where}.timezone: {error}"
        duration = window.get("duration")
        if not isinstance(duration, str):
            continue
        try:
            seconds = parse_duration(duration)
        except ValueError as exc:
            yield ("spec", "syncWindows", index, "duration"), f"{where}.duration: {exc}"
            continue
        if seconds <= 0:
            yield (("spec", "syncWindows", index, "duration"),
                   f"{where}.duration: {duration!r} is not a valid window "
                   "duration: it must be more than 0")
