"""A Schedule's ``spec.schedule``: a five-field cron string (checked by croniter), or
``{calendar: EXPR}``, a systemd calendar expression (``reconciler.spec.calendar``).

The two are told apart by their YAML shape, never by guessing from the text: a string is always
cron, a mapping always systemd syntax. A cron error on a string that happens to be valid systemd
syntax says how to write it as a calendar.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

# zoneinfo (it loads sysconfig) is imported where a zone is looked up: a fleet with no Schedule
# or sync window names none (docs/performance.md, session 11).

FIELDS = "minute hour day-of-month month day-of-week"
# croniter's aliases; each maps to a five-field expression, so a systemd timer can express it.
ALIASES = frozenset(
    {"@yearly", "@annually", "@monthly", "@weekly", "@daily", "@midnight", "@hourly"}
)
_PROBE_START = datetime(2000, 1, 1)


def cron_error(expr: object) -> str | None:
    """Why ``expr`` is not a usable five-field cron expression, or None when it is."""
    if not isinstance(expr, str):
        return f"{expr!r} is not a cron expression: expected a string such as '*/5 * * * *'"
    text = expr.strip()
    if text.lower() in ALIASES:
        return None
    fields = text.split()
    if len(fields) != 5:
        return (
            f"{expr!r} is not a valid cron expression: "
            f"expected 5 fields ({FIELDS}), got {len(fields)}"
        )
    # imported when a schedule is checked: a warm load or a plan asks nothing of croniter
    from croniter import croniter
    from croniter.croniter import CroniterError

    try:
        # get_next also rejects expressions that never fire (e.g. "0 0 30 2 *", February 30th)
        croniter(text, _PROBE_START).get_next(datetime)
    except (CroniterError, ValueError, KeyError, TypeError) as exc:
        detail = str(exc).strip() or type(exc).__name__
        return f"{expr!r} is not a valid cron expression: {detail}"
    return None


def timezone_error(name: object) -> str | None:
    """Why ``name`` is not a known IANA time zone, or None when it is."""
    if not isinstance(name, str) or not name:
        return f"{name!r} is not a time zone name"
    from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

    try:
        ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError, OSError, UnicodeError):
        # OSError: a name that is a folder of the zone database, e.g. "Europe"
        return f"unknown time zone {name!r} (expected an IANA name such as UTC or Europe/Paris)"
    return None


# what next_fire returns for a calendar expression that will not elapse again (a past date)
NEVER = datetime.max.replace(tzinfo=UTC)


def schedule_errors(schedule: object, timezone: object = None) -> list[tuple[tuple[str, ...], str]]:
    """Problems of a Schedule's ``schedule`` value (and how it sits with ``spec.timezone``),
    each as (path below ``spec``, message). The schema has already checked the shape."""
    from reconciler.spec.calendar import calendar_error, parse_calendar  # only when needed

    if isinstance(schedule, Mapping):
        expression = schedule.get("calendar")
        error = calendar_error(expression)
        if error is not None:
            return [(("schedule", "calendar"), error)]
        spec = parse_calendar(str(expression))
        own = "UTC" if spec.utc else spec.timezone
        if own is not None and isinstance(timezone, str) and timezone != own:
            return [(("schedule", "calendar"),
                     f"{expression!r} names time zone {own} but spec.timezone is {timezone}; "
                     "keep one of them")]
        return []
    error = cron_error(schedule)
    if error is None:
        return []
    if isinstance(schedule, str) and calendar_error(schedule) is None:
        error += (f" (it is systemd calendar syntax: write schedule: {{calendar: "
                  f"{schedule.strip()!r}}})")
    return [(("schedule",), error)]


def next_fire(expr: str | Mapping[str, Any], after: datetime, tz: str) -> datetime:
    """The first time strictly after ``after`` at which a Schedule's ``schedule`` fires: a cron
    string evaluated in zone ``tz``, or ``{calendar: EXPR}`` evaluated in its own zone, else
    ``tz``. A calendar that will never elapse again gives ``NEVER``.

    ``after`` must be timezone-aware (a naive time is ambiguous across hosts); the result is aware,
    expressed in ``tz`` (or the calendar's own zone).
    """
    from zoneinfo import ZoneInfo

    if isinstance(expr, Mapping):
        from reconciler.spec.calendar import calendar_error, next_elapse, parse_calendar

        if after.tzinfo is None or after.utcoffset() is None:
            raise ValueError("next_fire needs a timezone-aware datetime, e.g. datetime.now(UTC)")
        expression = expr.get("calendar")
        error = calendar_error(expression)
        if error is not None:
            raise ValueError(error)
        fire = next_elapse(parse_calendar(str(expression)), after, ZoneInfo(tz))
        return NEVER if fire is None else fire
    error = cron_error(expr)
    if error is not None:
        raise ValueError(error)
    if after.tzinfo is None or after.utcoffset() is None:
        raise ValueError("next_fire needs a timezone-aware datetime, e.g. datetime.now(UTC)")
    from croniter import croniter

    zone = ZoneInfo(tz)
    result: datetime = croniter(expr.strip(), after.astimezone(zone)).get_next(datetime)
    return result.astimezone(zone)
