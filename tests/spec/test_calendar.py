"""systemd calendar expressions: parsing, normal form, next elapse (pure Python).

Expected normal forms and fire times were read from ``systemd-analyze calendar`` (systemd 252);
tests/providers/bare_metal/test_ssh_calendar.py re-checks agreement against the real thing."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from reconciler.spec.calendar import (
    SHORTHANDS,
    CalendarError,
    calendar_error,
    next_elapse,
    parse_calendar,
)
from reconciler.spec.cron import NEVER, next_fire, schedule_errors

NOW = datetime(2026, 11, 26, 11, 45, 17, tzinfo=UTC)  # a Thursday


@pytest.mark.parametrize(
    ("expr", "normalized", "first"),
    [
        ("Mon, 12:34", "Mon *-*-* 12:34:00", "2026-11-30 12:34:00"),
        ("mon..fri 9:00", "Mon..Fri *-*-* 09:00:00", "2026-11-27 09:00:00"),
        ("Monday 10:00", "Mon *-*-* 10:00:00", "2026-11-30 10:00:00"),
        ("Mon-Fri 10:00", "Mon..Fri *-*-* 10:00:00", "2026-11-27 10:00:00"),
        ("Mon,Wed..Fri,Sun", "Mon,Wed..Fri,Sun *-*-* 00:00:00", "2026-11-27 00:00:00"),
        ("*:0/5", "*-*-* *:00/5:00", "2026-11-26 11:50:00"),
        ("*:*:0/5", "*-*-* *:*:00/5", "2026-11-26 11:45:20"),
        ("minutely", "*-*-* *:*:00", "2026-11-26 11:46:00"),
        ("HOURLY", "*-*-* *:00:00", "2026-11-26 12:00:00"),
        ("weekly", "Mon *-*-* 00:00:00", "2026-11-30 00:00:00"),
        ("quarterly", "*-01,04,07,10-01 00:00:00", "2027-01-01 00:00:00"),
        ("semi-annually", "*-01,07-01 00:00:00", "2027-01-01 00:00:00"),
        ("2026-12-25", "2026-12-25 00:00:00", "2026-12-25 00:00:00"),
        ("12-25", "*-12-25 00:00:00", "2026-12-25 00:00:00"),
        ("27-12-25", "2027-12-25 00:00:00", "2027-12-25 00:00:00"),
        ("*-02-29 00:00", "*-02-29 00:00:00", "2028-02-29 00:00:00"),
        ("*-*-31", "*-*-31 00:00:00", "2026-12-31 00:00:00"),
        ("Sat *-*-1..7 18:00", "Sat *-*-01..07 18:00:00", "2026-12-05 18:00:00"),
        ("12:00:00.5", "*-*-* 12:00:00.500000", "2026-11-26 12:00:00.500000"),
        ("1..5:00", "*-*-* 01..05:00:00", "2026-11-27 01:00:00"),
        ("*:00/15,7", "*-*-* *:00/15,07:00", "2026-11-26 12:00:00"),
        ("9..17/2:00", "*-*-* 09..17/2:00:00", "2026-11-26 13:00:00"),
        ("*-1/2-1", "*-01/2-01 00:00:00", "2027-01-01 00:00:00"),
        ("2020..2030/5-01-01", "2020..2030/5-01-01 00:00:00", "2030-01-01 00:00:00"),
        ("*-*~1", "*-*~01 00:00:00", "2026-11-30 00:00:00"),
        ("*-*~07/1", "*-*~07/1 00:00:00", "2026-11-27 00:00:00"),
        ("Fri *-*~7/1", "Fri *-*~07/1 00:00:00", "2026-11-27 00:00:00"),
        ("9:5", "*-*-* 09:05:00", "2026-11-27 09:05:00"),
        ("*:*:*", "*-*-* *:*:*", "2026-11-26 11:45:18"),
        ("2026-*-* *:*", "2026-*-* *:*:00", "2026-11-26 11:46:00"),
        ("10:00 utc", "*-*-* 10:00:00 UTC", "2026-11-27 10:00:00"),
        ("Mon..Mon", "Mon *-*-* 00:00:00", "2026-11-30 00:00:00"),
        ("  *-*-* 02:00:00  ", "*-*-* 02:00:00", "2026-11-27 02:00:00"),
    ],
)
def test_parse_normalize_and_next(expr: str, normalized: str, first: str) -> None:
    spec = parse_calendar(expr)
    assert spec.normalized() == normalized
    fire = next_elapse(spec, NOW)
    assert fire is not None
    assert fire.strftime("%Y-%m-%d %H:%M:%S.%f").removesuffix(".000000") == first
    assert calendar_error(expr) is None


@pytest.mark.parametrize(
    ("expr", "reason"),
    [
        ("", "empty"),
        ("*", "expected ':'"),
        ("00:00:60", "second 60 is out of range"),
        ("24:00", "hour 24 is out of range 0..23"),
        ("*-*-* 25:00", "hour 25"),
        ("*-13-01", "month 13"),
        ("*-*-32", "day 32"),
        ("*-*~29", "day 29 is out of range 1..28"),
        ("1969-01-01", "year 1969"),
        ("Tue..Mon", "wraps around the week (systemd refuses it; write Mon..Sun)"),
        ("Sat..Mon 10:00", "write Mon,Sat,Sun"),
        ("5..3:00", "range 5..3 is empty"),
        ("*:*/5", "'*/N' is cron syntax"),
        ("*/5 * * * *", "'*/N' is cron syntax"),
        ("*:59/1", "never repeats"),
        ("*:0/0", "repetition of 0"),
        ("Mon..", "open weekday range"),
        ("Mon..x", "expected a weekday name"),
        ("Funday 10:00", "expected a number"),
        ("Mondays", "unknown weekday name"),
        ("10:00 Mars/Olympus", "'Mars/Olympus' is not a known time zone"),
        ("10:00 Mon", "expected"),
        ("10:00:00 extra", "'extra' is not a known time zone"),
        ("10:00:00 1", "unexpected text after the time"),
        ("hourly ", None),  # blanks around are fine (a unit file strips them too)
    ],
)
def test_rejected(expr: str, reason: str | None) -> None:
    if reason is None:
        assert calendar_error(expr) is None
        return
    with pytest.raises(CalendarError, match=None) as raised:
        parse_calendar(expr)
    assert reason in str(raised.value), str(raised.value)
    error = calendar_error(expr)
    assert error is not None and repr(expr) in error and reason in error


def test_never_elapsing_is_refused_but_a_past_date_is_not() -> None:
    error = calendar_error("*-02-30")
    assert error is not None and "never elapses" in error
    assert calendar_error("2024-01-01") is None  # it did elapse; validity does not age
    assert next_elapse(parse_calendar("2024-01-01"), NOW) is None
    assert next_fire({"calendar": "2024-01-01"}, NOW, "UTC") == NEVER
    assert calendar_error(5) is not None


def test_every_shorthand_parses() -> None:
    for name in SHORTHANDS:
        assert calendar_error(name) is None, name
        assert calendar_error(name.upper()) is None, name


def test_epoch_timestamp_is_utc() -> None:
    spec = parse_calendar("@1700000000")
    assert spec.normalized() == "2023-11-14 22:13:20 UTC"
    assert next_elapse(spec, datetime(2023, 1, 1, tzinfo=UTC)) == datetime(
        2023, 11, 14, 22, 13, 20, tzinfo=UTC)


def test_time_zones_and_dst() -> None:
    paris = ZoneInfo("Europe/Paris")
    # the day Paris skips 02:00-03:00: 02:30 does not exist that day, as in systemd
    base = datetime(2026, 3, 28, 23, 0, tzinfo=UTC)
    daily = parse_calendar("*-*-* 02:30:00")
    fire = next_elapse(daily, base, paris)
    assert fire is not None and fire.astimezone(UTC) == datetime(2026, 3, 30, 0, 30, tzinfo=UTC)
    # the day 02:00-03:00 happens twice: fired once, in the first (CEST) pass
    base = datetime(2026, 10, 24, 23, 0, tzinfo=UTC)
    spec = parse_calendar("*-*-* 01..03:00/20:00")
    fires = []
    at = base
    for _ in range(9):
        nxt = next_elapse(spec, at, paris)
        assert nxt is not None
        fires.append(nxt.astimezone(UTC).strftime("%d %H:%M"))
        at = nxt
    assert fires == ["24 23:20", "24 23:40", "25 00:00", "25 00:20", "25 00:40", "25 02:00",
                     "25 02:20", "25 02:40", "26 00:00"]
    # an expression's own zone wins over the default
    own = parse_calendar("daily Europe/Paris")
    assert own.normalized() == "*-*-* 00:00:00 Europe/Paris"
    fire = next_elapse(own, NOW, UTC)
    assert fire is not None and fire.astimezone(UTC) == datetime(2026, 11, 26, 23, 0, tzinfo=UTC)
    with pytest.raises(ValueError, match="timezone-aware"):
        next_elapse(own, datetime(2026, 1, 1))


def test_schedule_errors_by_shape() -> None:
    assert schedule_errors("*/5 * * * *") == []
    assert schedule_errors({"calendar": "Mon..Fri 09:00"}) == []
    assert schedule_errors({"calendar": "daily UTC"}, "UTC") == []
    [(path, message)] = schedule_errors({"calendar": "daily UTC"}, "Europe/Paris")
    assert path == ("schedule", "calendar") and "keep one" in message
    [(path, message)] = schedule_errors("Mon..Fri 09:00")
    assert path == ("schedule",)
    assert "write schedule: {calendar: 'Mon..Fri 09:00'}" in message
    [(path, message)] = schedule_errors("* * *")
    assert path == ("schedule",) and "calendar" not in message


def test_next_fire_for_a_calendar_uses_the_schedule_zone() -> None:
    fire = next_fire({"calendar": "Mon..Fri 09:00"}, NOW, "Europe/Paris")
    assert fire == datetime(2026, 11, 27, 9, 0, tzinfo=ZoneInfo("Europe/Paris"))
    assert next_fire({"calendar": "*:0/5"}, NOW, "UTC") == datetime(2026, 11, 26, 11, 50,
                                                                   tzinfo=UTC)
    with pytest.raises(ValueError, match="not a valid systemd calendar"):
        next_fire({"calendar": "25:00"}, NOW, "UTC")


_VALUES = {"hour": (0, 23), "minute": (0, 59), "second": (0, 59)}


@st.composite
def _component(draw: st.DrawFn, field: str) -> str:
    low, high = _VALUES[field]
    start = draw(st.integers(low, high))
    kind = draw(st.sampled_from(["value", "range", "repeat", "star"]))
    if kind == "star":
        return "*"
    if kind == "range" and start < high:
        return f"{start}..{draw(st.integers(start + 1, high))}"
    if kind == "repeat" and start + 1 <= high:
        return f"{start}/{draw(st.integers(1, max(1, high - start)))}"
    return str(start)


@settings(max_examples=150, deadline=None)
@given(
    weekdays=st.sets(st.sampled_from(["Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun"])),
    hour=_component("hour"), minute=_component("minute"), second=_component("second"),
    offset=st.integers(0, 400 * 24 * 3600),
)
def test_next_elapse_is_the_first_match(weekdays: set[str], hour: str, minute: str,
                                        second: str, offset: int) -> None:
    """Brute force over the seconds that follow: the computed fire is a match and no second
    before it is (for expressions at one-second resolution)."""
    expr = (",".join(sorted(weekdays)) + " " if weekdays else "") + f"{hour}:{minute}:{second}"
    try:
        spec = parse_calendar(expr)
    except CalendarError:
        return  # e.g. 59/1: refused (checked above), nothing to search
    after = datetime(2026, 1, 1, tzinfo=UTC) + timedelta(seconds=offset)
    fire = next_elapse(spec, after)
    assert fire is not None and fire > after

    hours = {v for v in range(24) if _in(hour, v)}
    minutes = {v for v in range(60) if _in(minute, v)}
    seconds = {v for v in range(60) if _in(second, v)}
    days = {i for i, name in enumerate(("Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun"))
            if not weekdays or name in weekdays}

    def matches(epoch: int) -> bool:
        day, rest = divmod(epoch, 86400)
        h, rest = divmod(rest, 3600)
        m, sec = divmod(rest, 60)
        return (day + 3) % 7 in days and h in hours and m in minutes and sec in seconds

    fire_epoch = int(fire.timestamp())
    assert fire.microsecond == 0 and matches(fire_epoch), (expr, fire)
    t = int(after.timestamp()) + 1
    for epoch in range(t, min(fire_epoch, t + 2 * 3600)):
        assert not matches(epoch), (expr, after, epoch, fire)


def _in(part: str, value: int) -> bool:
    if part == "*":
        return True
    if ".." in part:
        low, high = (int(x) for x in part.split(".."))
        return low <= value <= high
    if "/" in part:
        start, step = (int(x) for x in part.split("/"))
        return value >= start and (value - start) % step == 0
    return value == int(part)
