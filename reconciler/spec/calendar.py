"""systemd calendar expressions (``OnCalendar=``, systemd.time(7)): parser, normaliser and
next-elapse calculator, in pure Python.

The reconciler host need not run systemd, yet it must reject what a host's systemd would refuse
(at ``validate`` time, located in the YAML) and compute the same fire times when its own
scheduler runs a Schedule. The grammar and the search follow systemd's ``calendarspec.c`` (v252,
what the test hosts run, and later: an overflow resets the unit below it);
``tests/providers/bare_metal/test_ssh_calendar.py`` checks both agree with
``systemd-analyze calendar`` on real hosts:

    [WEEKDAYS] [DATE] [TIME] [TIMEZONE]        or a shorthand name, e.g. ``daily``

* WEEKDAYS: ``Mon``/``Monday`` … ``Sun`` (any case), lists ``Mon,Wed``, ranges ``Mon..Fri``
  (or ``Mon-Fri``); a range must not wrap around (``Sat..Mon`` is refused, as systemd does).
* DATE: ``[YEAR-]MONTH-DAY`` or ``@EPOCH``; ``~`` instead of the last ``-`` counts days from
  the end of the month (``*-*~1`` is the last day). Two-digit years are 19xx/20xx.
* TIME: ``HOUR:MINUTE[:SECOND]``; seconds may have up to 6 decimals. A missing TIME is
  ``00:00:00``; a missing SECOND is ``00``.
* every component: ``*``, a value, ``a..b``, ``value/repeat``, ``a..b/repeat`` and lists of those
  joined by ``,`` (``*/5`` is not systemd syntax: write ``0/5``).
* TIMEZONE: ``UTC`` or an IANA name after the last space.
* shorthands: minutely, hourly, daily, weekly, monthly, quarterly, (semi|bi)-?annually, yearly.

A valid expression that never elapses (``*-02-30``) is accepted by systemd but is refused here:
a Schedule that can never run is a mistake worth reporting at validate time (as for cron).
"""

from __future__ import annotations

import calendar as _calendar
import re
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta, tzinfo
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

__all__ = ["CalendarError", "CalendarSpec", "calendar_error", "next_elapse", "parse_calendar"]

MIN_YEAR = 1970
MAX_YEAR = 2199
USEC = 1_000_000
ALL_WEEKDAYS = 0b1111111
COMPONENTS_MAX = 240  # systemd's limit on a list's length
_DAYS = ("Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun")
# longest first, so "Monday" is not read as "Mon" + "day"
_DAY_NAMES = sorted(
    [(full.lower(), i) for i, full in enumerate(
        ("monday", "tuesday", "wednesday", "thursday", "friday", "saturday", "sunday"))]
    + [(short.lower(), i) for i, short in enumerate(_DAYS)],
    key=lambda item: -len(item[0]),
)


class CalendarError(ValueError):
    """An expression systemd would refuse; ``str()`` says why (and where, when it can)."""


@dataclass(frozen=True)
class Component:
    """``start``, ``start..stop`` (every ``repeat``) or ``start/repeat`` (no upper bound)."""

    start: int
    stop: int = -1
    repeat: int = 0


Chain = tuple[Component, ...] | None  # None is "*": any value


@dataclass(frozen=True)
class CalendarSpec:
    weekdays: int = -1  # bit 0 Monday .. bit 6 Sunday; -1: any day
    year: Chain = None
    month: Chain = None
    day: Chain = None
    hour: Chain = None
    minute: Chain = None
    second: Chain = None  # in microseconds
    end_of_month: bool = False
    utc: bool = False
    timezone: str | None = None

    def zone(self, default: tzinfo) -> tzinfo:
        """The zone the expression is evaluated in: its own, else ``default``."""
        if self.utc:
            return UTC
        if self.timezone is not None:
            return ZoneInfo(self.timezone)
        return default

    @property
    def has_timezone(self) -> bool:
        return self.utc or self.timezone is not None

    def normalized(self) -> str:
        """systemd's normalised form (what ``systemd-analyze calendar`` prints)."""
        parts = []
        if 0 < self.weekdays < ALL_WEEKDAYS:
            parts.append(_format_weekdays(self.weekdays) + " ")
        parts.append(_format_chain(self.year, 4))
        parts.append("-" + _format_chain(self.month, 2))
        parts.append(("~" if self.end_of_month else "-") + _format_chain(self.day, 2))
        parts.append(" " + _format_chain(self.hour, 2))
        parts.append(":" + _format_chain(self.minute, 2))
        parts.append(":" + _format_chain(self.second, 2, usec=True))
        if self.utc:
            parts.append(" UTC")
        elif self.timezone:
            parts.append(" " + self.timezone)
        return "".join(parts)


# -- parsing ----------------------------------------------------------------------------------


def _const(*values: int) -> tuple[Component, ...]:
    return tuple(Component(v) for v in values)


_MIDNIGHT: dict[str, object] = {"hour": _const(0), "minute": _const(0), "second": _const(0)}


def _midnight(weekdays: int = -1, month: Chain = None, day: Chain = None) -> CalendarSpec:
    return CalendarSpec(weekdays=weekdays, month=month, day=day, hour=_const(0),
                        minute=_const(0), second=_const(0))


_SHORTHANDS: dict[str, CalendarSpec] = {
    "minutely": CalendarSpec(second=_const(0)),
    "hourly": CalendarSpec(minute=_const(0), second=_const(0)),
    "daily": _midnight(),
    "weekly": _midnight(weekdays=1),
    "monthly": _midnight(day=_const(1)),
    "yearly": _midnight(month=_const(1), day=_const(1)),
    "quarterly": _midnight(month=_const(1, 4, 7, 10), day=_const(1)),
    "semiannually": _midnight(month=_const(1, 7), day=_const(1)),
}
for _alias, _name in (("annually", "yearly"), ("anually", "yearly"),
                      ("semi-annually", "semiannually"), ("biannually", "semiannually"),
                      ("bi-annually", "semiannually")):
    _SHORTHANDS[_alias] = _SHORTHANDS[_name]
SHORTHANDS = frozenset(_SHORTHANDS)


class _Parser:
    def __init__(self, text: str) -> None:
        self.text = text
        self.pos = 0

    def peek(self, offset: int = 0) -> str:
        index = self.pos + offset
        return self.text[index] if index < len(self.text) else ""

    def fail(self, what: str) -> CalendarError:
        rest = self.text[self.pos:]
        where = f" at {rest!r}" if rest else " at the end"
        return CalendarError(f"{what}{where}")

    def skip_spaces(self) -> None:
        while self.peek() == " ":
            self.pos += 1

    # WEEKDAYS
    def weekdays(self) -> int:
        bits = 0
        range_start = -1
        first = True
        while True:
            lowered = self.text[self.pos:].lower()
            match = next(((name, nr) for name, nr in _DAY_NAMES if lowered.startswith(name)),
                         None)
            if match is None:
                if first:
                    return -1
                raise self.fail("expected a weekday name")
            name, nr = match
            if self.peek(len(name)) not in ("", "-", ".", ",", " "):
                raise self.fail("unknown weekday name")
            bits |= 1 << nr
            if range_start >= 0:
                if range_start > nr:
                    wrapped = (ALL_WEEKDAYS >> range_start << range_start) | ((2 << nr) - 1)
                    raise self.fail(f"weekday range {_DAYS[range_start]}..{_DAYS[nr]} wraps "
                                    "around the week (systemd refuses it; write "
                                    f"{_format_weekdays(wrapped)})")
                for j in range(range_start + 1, nr):
                    bits |= 1 << j
            self.pos += len(name)
            if self.peek() == "":
                return bits
            if self.peek() == " ":
                self.skip_spaces()
                return bits
            if self.peek() == ".":
                if range_start >= 0 or self.peek(1) != ".":
                    raise self.fail("expected '..' in a weekday range")
                range_start = nr
                self.pos += 2
            elif self.peek() == "-":
                if range_start >= 0:
                    raise self.fail("a weekday range has one '..'")
                range_start = nr
                self.pos += 1
            elif self.peek() == ",":
                range_start = -1
                self.pos += 1
            if self.peek() in ("", " "):
                self.skip_spaces()
                if range_start >= 0:
                    raise self.fail("open weekday range")
                return bits
            first = False

    def number(self, usec: bool) -> int:
        start = self.pos
        while self.peek().isdigit() and self.peek().isascii():
            self.pos += 1
        if self.pos == start:
            if self.peek() == "*":
                raise self.fail("'*' cannot be combined with other values (for 'every 5', "
                                "write 0/5, not */5)")
            raise self.fail("expected a number")
        value = int(self.text[start:self.pos])
        if usec:
            value *= USEC
            if self.peek() == "." and self.peek(1) != ".":
                self.pos += 1
                frac_start = self.pos
                while self.peek().isdigit() and self.peek().isascii():
                    self.pos += 1
                digits = self.text[frac_start:self.pos]
                if not digits:
                    raise self.fail("expected digits after the decimal point")
                value += int(digits[:6].ljust(6, "0"))
        if value > 2**31 - 1:
            raise self.fail("number too large")
        return value

    def chain(self, usec: bool) -> Chain:
        if self.peek() == "*":
            if self.peek(1) == "/":
                raise self.fail("'*/N' is cron syntax; systemd writes 'every N' as 0/N")
            self.pos += 1
            return (Component(0, -1, USEC),) if usec else None
        components: list[Component] = []
        while True:
            if len(components) > COMPONENTS_MAX:
                raise self.fail(f"more than {COMPONENTS_MAX} values in a list")
            start = self.number(usec)
            stop, repeat = -1, 0
            if self.peek() == "." and self.peek(1) == ".":
                self.pos += 2
                stop = self.number(usec)
                repeat = USEC if usec else 1
            if self.peek() == "/":
                self.pos += 1
                repeat = self.number(usec)
                if repeat == 0:
                    raise self.fail("a repetition of 0")
            if self.peek() not in ("", " ", ",", "-", "~", ":"):
                raise self.fail("unexpected character")
            components.append(Component(start, stop, repeat))
            if self.peek() != ",":
                return tuple(components)
            self.pos += 1

    def date(self, spec: dict[str, object]) -> bool:
        """Parse DATE into ``spec``; True when the expression is complete (``@EPOCH``)."""
        if self.peek() == "":
            return False
        if self.peek() == "@":
            self.pos += 1
            seconds = self.number(usec=False)
            try:
                moment = datetime.fromtimestamp(seconds, UTC)
            except (OverflowError, OSError, ValueError):
                raise self.fail("timestamp out of range") from None
            spec.update(year=_const(moment.year), month=_const(moment.month),
                        day=_const(moment.day), hour=_const(moment.hour),
                        minute=_const(moment.minute), second=_const(moment.second * USEC),
                        utc=True)
            return True
        mark = self.pos
        first = self.chain(usec=False)
        if self.peek() in ("", ":"):
            self.pos = mark  # a time, not a date
            return False
        if self.peek() == "~":
            spec["end_of_month"] = True
        elif self.peek() != "-":
            raise self.fail("expected '-' or '~' in a date")
        self.pos += 1
        second = self.chain(usec=False)
        if self.peek() in ("", " "):
            self.skip_spaces()
            spec.update(month=first, day=second)
            return False
        if spec.get("end_of_month"):
            raise self.fail("'~' can only separate the month and the day")
        if self.peek() == "~":
            spec["end_of_month"] = True
        elif self.peek() != "-":
            raise self.fail("expected '-' or '~' in a date")
        self.pos += 1
        third = self.chain(usec=False)
        if self.peek() not in ("", " "):
            raise self.fail("unexpected character after the date")
        self.skip_spaces()
        spec.update(year=first, month=second, day=third)
        return False

    def time(self, spec: dict[str, object]) -> None:
        if self.peek() == "":
            spec.update(_MIDNIGHT)
            return
        hour = self.chain(usec=False)
        if self.peek() != ":":
            raise self.fail("expected ':' between hour and minute")
        self.pos += 1
        minute = self.chain(usec=False)
        second: Chain = _const(0)
        if self.peek() != "":
            if self.peek() != ":":
                raise self.fail("expected ':' between minute and second")
            self.pos += 1
            second = self.chain(usec=True)
            if self.peek() != "":
                raise self.fail("unexpected text after the time")
        spec.update(hour=hour, minute=minute, second=second)


_ZONE_LIKE = re.compile(r"^[A-Za-z][A-Za-z0-9_+-]*(/[A-Za-z0-9_+-]+)*\Z")


def _split_timezone(text: str) -> tuple[str, bool, str | None]:
    if text.lower().endswith(" utc"):
        return text[:-4], True, None
    head, space, last = text.rpartition(" ")
    if space and _is_timezone(last):
        return head, False, last
    return text, False, None


def _is_timezone(name: str) -> bool:
    if not name or name.startswith("/") or ".." in name or not name[0].isalpha():
        return False
    try:
        ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError, OSError, UnicodeError):
        return False
    return True


def parse_calendar(expression: str) -> CalendarSpec:
    """The expression as systemd reads it (surrounding blanks ignored, as in a unit file)."""
    if not isinstance(expression, str):
        raise CalendarError(f"expected a string, got {type(expression).__name__}")
    text = expression.strip()
    if "\n" in text or "\t" in text or "\0" in text:
        raise CalendarError("contains a line break, a tab or a NUL character")
    body, utc, timezone = _split_timezone(text)
    if not body:
        raise CalendarError("empty expression")
    spec: dict[str, object] = {}
    shorthand = _SHORTHANDS.get(body.lower())
    if shorthand is not None:
        result = shorthand
    else:
        parser = _Parser(body)
        try:
            spec["weekdays"] = parser.weekdays()
            if not parser.date(spec):
                parser.time(spec)
            if parser.peek() != "":
                raise parser.fail("unexpected text")
        except CalendarError:
            last = body.rpartition(" ")[2]
            if " " in body and _ZONE_LIKE.match(last) and not any(
                    last.lower() == name for name, _ in _DAY_NAMES):
                raise CalendarError(f"{last!r} is not a known time zone (expected UTC or "
                                    "an IANA name such as Europe/Paris)") from None
            raise
        result = CalendarSpec(**spec)  # type: ignore[arg-type]
    if utc:
        result = replace(result, utc=True)
    elif timezone is not None and not result.utc:
        result = replace(result, timezone=timezone)
    return _validated(_normalize(result))


def _normalize_chain(chain: Chain) -> Chain:
    if chain is None:
        return None
    fixed = []
    for c in chain:
        stop = c.stop
        if stop > c.start and c.repeat > 0:
            stop -= (stop - c.start) % c.repeat
        fixed.append(Component(c.start, stop, c.repeat))
    return tuple(sorted(set(fixed), key=lambda c: (c.start, c.stop, c.repeat)))


def _fix_year(value: int) -> int:
    if 0 <= value < 70:
        return value + 2000
    if 70 <= value < 100:
        return value + 1900
    return value


def _normalize(spec: CalendarSpec) -> CalendarSpec:
    weekdays = spec.weekdays if 0 < spec.weekdays < ALL_WEEKDAYS else -1
    year = spec.year
    if year is not None:
        year = tuple(Component(_fix_year(c.start), _fix_year(c.stop), c.repeat) for c in year)
    utc, timezone = spec.utc, spec.timezone
    if timezone == "UTC":
        utc, timezone = True, None
    return replace(
        spec, weekdays=weekdays, year=_normalize_chain(year),
        month=_normalize_chain(spec.month), day=_normalize_chain(spec.day),
        hour=_normalize_chain(spec.hour), minute=_normalize_chain(spec.minute),
        second=_normalize_chain(spec.second),
        end_of_month=spec.end_of_month and spec.day is not None, utc=utc, timezone=timezone)


def _check_chain(chain: Chain, field: str, low: int, high: int, end_of_month: bool = False,
                 usec: bool = False) -> None:
    if chain is None:
        return
    if end_of_month:
        high -= 3  # at most 28 days back from the end of the month

    def show(v: int) -> str:
        if not usec:
            return str(v)
        whole, frac = divmod(v, USEC)
        return f"{whole}.{frac:06d}".rstrip("0").rstrip(".") if frac else str(whole)

    bounds = f"{show(low)}..{show(high)}" if not usec else "0..59"
    for c in chain:
        if not low <= c.start <= high:
            raise CalendarError(f"{field} {show(c.start)} is out of range {bounds}")
        if c.repeat > high - low:
            raise CalendarError(f"{field} repetition /{show(c.repeat)} is too large")
        if c.stop >= 0:
            if not low <= c.stop <= high:
                raise CalendarError(f"{field} {show(c.stop)} is out of range {bounds}")
            if c.start + c.repeat > c.stop:
                raise CalendarError(
                    f"{field} range {show(c.start)}..{show(c.stop)} is empty or shorter than "
                    "its repetition")
        elif c.repeat and end_of_month and c.start - c.repeat < low:
            raise CalendarError(f"{field} ~{c.start}/{c.repeat} repeats past the start of the "
                                "month")
        elif c.repeat and not end_of_month and c.start + c.repeat > high:
            raise CalendarError(
                f"{field} {show(c.start)}/{show(c.repeat)} never repeats within {bounds} "
                f"(write {show(c.start)} alone)")


def _validated(spec: CalendarSpec) -> CalendarSpec:
    _check_chain(spec.year, "year", MIN_YEAR, MAX_YEAR)
    _check_chain(spec.month, "month", 1, 12)
    _check_chain(spec.day, "day", 1, 31, spec.end_of_month)
    _check_chain(spec.hour, "hour", 0, 23)
    _check_chain(spec.minute, "minute", 0, 59)
    _check_chain(spec.second, "second", 0, 60 * USEC - 1, usec=True)
    return spec


# -- formatting -------------------------------------------------------------------------------


def _format_weekdays(bits: int) -> str:
    out: list[str] = []
    run_start = -1
    for x in range(8):
        on = x < 7 and bool(bits & (1 << x))
        if on and run_start < 0:
            run_start = x
        elif not on and run_start >= 0:
            last = x - 1
            if last == run_start:
                out.append(_DAYS[run_start])
            elif last == run_start + 1:
                out.append(f"{_DAYS[run_start]},{_DAYS[last]}")
            else:
                out.append(f"{_DAYS[run_start]}..{_DAYS[last]}")
            run_start = -1
    return ",".join(out)


def _format_chain(chain: Chain, width: int, usec: bool = False) -> str:
    if chain is None:
        return "*"
    if usec and chain == (Component(0, -1, USEC),):
        return "*"
    unit = USEC if usec else 1
    parts = []
    for c in chain:
        text = f"{c.start // unit:0{width}d}"
        if c.start % unit:
            text += f".{c.start % unit:06d}"
        if c.stop > 0:
            text += f"..{c.stop // unit:0{width}d}"
        if c.stop > 0 and c.stop % unit:
            text += f".{c.stop % unit:06d}"
        if c.repeat > 0 and not (c.stop > 0 and c.repeat == unit):
            text += f"/{c.repeat // unit}"
        if c.repeat % unit:
            text += f".{c.repeat % unit:06d}"
        parts.append(text)
    return ",".join(parts)


# -- next elapse ------------------------------------------------------------------------------


def _match(chain: Chain, value: int, end_of_month: int = 0) -> int | None:
    """Smallest value of ``chain`` >= ``value`` (None: none left). ``end_of_month`` is the
    month's last day when the chain counts days back from it."""
    if chain is None:
        return value
    best: int | None = None
    for c in chain:
        start, stop = c.start, c.stop
        if end_of_month:
            start = end_of_month + 1 - start if end_of_month + 1 - start >= 1 else -1
            stop = end_of_month + 1 - stop if stop > 0 and end_of_month + 1 - stop >= 1 else -1
            if stop > 0:
                start, stop = stop, start
        if start >= value:
            candidate = start
        elif c.repeat > 0:
            candidate = start + c.repeat * -(-(value - start) // c.repeat)
            if stop >= 0 and candidate > stop:
                continue
        else:
            continue
        if best is None or candidate < best:
            best = candidate
    return best


_Fields = list[int]  # year, month, day, hour, minute, microsecond-of-minute


def _normalized_fields(f: _Fields, zone: tzinfo) -> _Fields:
    """What mktime makes of possibly overflowing fields in ``zone`` (a wall time that does not
    exist, inside a DST gap, moves forward by the gap)."""
    months = f[0] * 12 + (f[1] - 1)
    year, month = divmod(months, 12)
    if year > 9998:
        return [year, month + 1, f[2], f[3], f[4], f[5]]
    wall = datetime(year, month + 1, 1) + timedelta(
        days=f[2] - 1, hours=f[3], minutes=f[4], microseconds=f[5])
    if zone is not UTC:
        local = wall.replace(tzinfo=zone)
        back = local.astimezone(UTC).astimezone(zone).replace(tzinfo=None)
        wall = back
    return [wall.year, wall.month, wall.day, wall.hour, wall.minute,
            wall.second * USEC + wall.microsecond]


def _within(f: _Fields, zone: tzinfo) -> int:
    """1: valid as is; 0: was out of bounds, ``f`` replaced by its normalisation with the unit
    below the first one that moved reset (so ``3-33`` becomes ``4-01``, not ``4-02``); -1: past
    the last year systemd computes, or a normalisation that would go backwards."""
    if f[0] > MAX_YEAR:
        return -1
    normal = _normalized_fields(f, zone)
    for unit in range(6):
        if normal[unit] != f[unit]:
            if normal[unit] < f[unit]:
                return -1
            if unit in (0, 1):
                normal[unit + 1] = 1  # month, day
            elif unit in (2, 3):
                normal[unit + 1] = 0  # hour, minute
            elif unit == 4:
                normal[5] %= USEC  # whole seconds reset, the fraction kept (as systemd does)
            f[:] = normal
            return 0
    return 1


def _weekday_ok(bits: int, f: _Fields) -> bool:
    if bits < 0 or bits >= ALL_WEEKDAYS:
        return True
    return bool(bits & (1 << _calendar.weekday(f[0], f[1], f[2])))


def next_elapse(spec: CalendarSpec, after: datetime, default_zone: tzinfo = UTC
                ) -> datetime | None:
    """The first time strictly after ``after`` (aware) at which ``spec`` elapses, in the
    expression's zone (else ``default_zone``); None if it never elapses again (systemd stops at
    year 2199)."""
    if after.tzinfo is None or after.utcoffset() is None:
        raise ValueError("next_elapse needs a timezone-aware datetime")
    zone = spec.zone(default_zone)
    start = (after + timedelta(microseconds=1)).astimezone(zone)
    f: _Fields = [start.year, start.month, start.day, start.hour, start.minute,
                  start.second * USEC + start.microsecond]
    for _ in range(1_000_000):  # far more than any search needs; a guard, never reached
        f[:] = _normalized_fields(f, zone)
        year = _match(spec.year, f[0])
        if year is None:
            return None
        if year != f[0]:
            f[:] = [year, 1, 1, 0, 0, 0]
        if _within(f, zone) <= 0:
            return None

        month = _match(spec.month, f[1])
        if month is not None and month != f[1]:
            f[1:] = [month, 1, 0, 0, 0]
        if month is None or (r := _within(f, zone)) < 0:
            f[:] = [f[0] + 1, 1, 1, 0, 0, 0]
            continue
        if r == 0:
            continue

        last_day = _calendar.monthrange(f[0], f[1])[1] if spec.end_of_month else 0
        day = _match(spec.day, f[2], last_day)
        if day is not None and day != f[2]:
            f[2:] = [day, 0, 0, 0]
        if day is None or (r := _within(f, zone)) < 0:
            f[:] = [f[0], f[1] + 1, 1, 0, 0, 0]
            continue
        if r == 0:
            continue

        if not _weekday_ok(spec.weekdays, f):
            f[2:] = [f[2] + 1, 0, 0, 0]
            continue

        hour = _match(spec.hour, f[3])
        if hour is not None and hour != f[3]:
            f[3:] = [hour, 0, 0]
        if hour is None or (r := _within(f, zone)) < 0:
            f[2:] = [f[2] + 1, 0, 0, 0]
            continue
        if r == 0:
            continue

        minute = _match(spec.minute, f[4])
        if minute is not None and minute != f[4]:
            f[4:] = [minute, 0]
        if minute is None or (r := _within(f, zone)) < 0:
            f[3:] = [f[3] + 1, 0, 0]
            continue
        if r == 0:
            continue

        second = _match(spec.second, f[5])
        if second is not None:
            f[5] = second
        if second is None or (r := _within(f, zone)) < 0:
            f[4:] = [f[4] + 1, 0]
            continue
        if r == 0:
            continue

        seconds, micro = divmod(f[5], USEC)
        wall = datetime(f[0], f[1], f[2], f[3], f[4], seconds, micro)
        return wall.replace(tzinfo=zone)
    raise RuntimeError("calendar search did not converge")  # pragma: no cover


_PROBE = datetime(1969, 12, 31, 23, 59, 59, tzinfo=UTC)


def calendar_error(expression: object) -> str | None:
    """Why ``expression`` is not a usable systemd calendar expression, or None when it is."""
    if not isinstance(expression, str):
        return f"{expression!r} is not a calendar expression: expected a string such as 'daily'"
    try:
        spec = parse_calendar(expression)
    except CalendarError as exc:
        return f"{expression!r} is not a valid systemd calendar expression: {exc}"
    if next_elapse(spec, _PROBE) is None:
        return (f"{expression!r} never elapses (normalized: {spec.normalized()!r}); systemd "
                "would accept it but the timer would never run")
    return None
