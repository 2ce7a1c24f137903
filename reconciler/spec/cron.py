"""Five-field cron expressions (what a Schedule's ``spec.schedule`` holds), checked by croniter."""

from __future__ import annotations

from datetime import datetime
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from croniter import croniter
from croniter.croniter import CroniterError

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
    try:
        ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError, OSError, UnicodeError):
        # OSError: a name that is a folder of the zone database, e.g. "Europe"
        return f"unknown time zone {name!r} (expected an IANA name such as UTC or Europe/Paris)"
    return None


def next_fire(expr: str, after: datetime, tz: str) -> datetime:
    """The first time strictly after ``after`` at which ``expr`` fires, evaluated in zone ``tz``.

    ``after`` must be timezone-aware (a naive time is ambiguous across hosts); the result is aware,
    expressed in ``tz``.
    """
    error = cron_error(expr)
    if error is not None:
        raise ValueError(error)
    if after.tzinfo is None or after.utcoffset() is None:
        raise ValueError("next_fire needs a timezone-aware datetime, e.g. datetime.now(UTC)")
    zone = ZoneInfo(tz)
    result: datetime = croniter(expr.strip(), after.astimezone(zone)).get_next(datetime)
    return result.astimezone(zone)
