"""The fire times of a five-field cron expression around a wall-clock time, without croniter.

croniter costs ~0.1-0.3 ms per question; a plan over 10,000 Services that each carry a sync
window of their own asks two or three per Service (docs/performance.md, ``sync_windows``).
The expression is expanded by croniter itself (``croniter.expand``: names, ranges, steps,
aliases mean what they mean there) and the day-by-day search below answers in microseconds.
Expressions using what the table does not model (``L``, ``W``, ``#``, a seconds or year
field) get None from ``compile_cron`` and stay with croniter. The same semantics as croniter:
when both day-of-month and day-of-week are restricted, a day matching either fires (Vixie
cron); ``tests/plan/test_cron_table.py`` compares both on random expressions and times.
"""

from __future__ import annotations

from bisect import bisect_left, bisect_right
from dataclasses import dataclass
from datetime import date, datetime, time, timedelta
from functools import lru_cache

# how far back or ahead a matching day is looked for before croniter takes over (February 29th
# on a given weekday can be years away)
_MAX_DAYS = 4 * 366 + 1
_ONE_DAY = timedelta(days=1)
_MIDNIGHT = time()
# each minute of a day as the time since midnight: summed with a midnight, never multiplied out
_AT = tuple(timedelta(minutes=m) for m in range(24 * 60))
_combine = datetime.combine
_ALL_MINUTES = tuple(range(60))
_ALL_HOURS = tuple(range(24))
_ALL_MONTHS = frozenset(range(1, 13))
_LONGEST = (31, 29, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31)  # days in each month, at most


# not frozen: a frozen dataclass's __init__ sets each field through object.__setattr__, a
# sizeable part of compiling an expression; tables are shared (compile_cron), never changed
@dataclass(slots=True)
class CronTable:
    minutes: tuple[int, ...]  # sorted
    hours: tuple[int, ...]  # sorted
    doms: frozenset[int] | None  # None: any day of the month
    months: frozenset[int]
    dows: frozenset[int] | None  # 0 = Sunday; None: any day of the week

    def day_fires(self, day: date) -> bool:
        """Whether the schedule fires on ``day`` (a date, or a datetime: its date)."""
        if day.month not in self.months:
            return False
        doms, dows = self.doms, self.dows
        if doms is None:
            return dows is None or (day.weekday() + 1) % 7 in dows
        if dows is None:
            return day.day in doms
        return day.day in doms or (day.weekday() + 1) % 7 in dows  # both restricted: either

    # The two searches below add the time of a fire to the day's midnight: the same code
    # answers for a naive wall time and for an aware UTC instant (a UTC window's fires are its
    # starts, no zone conversion). Keyword arguments to datetime's methods and multiplied
    # timedeltas cost several times more than these sums of precomputed values.

    def prev_fire(self, wall: datetime) -> datetime | None:
        """The latest fire at or before ``wall`` (naive wall-clock time, or an instant in UTC:
        the answer is in the same form); None: ask croniter."""
        midnight = _combine(wall.date(), _MIDNIGHT, wall.tzinfo)
        if self.day_fires(midnight):
            at = self._last_at_or_before(wall.hour, wall.minute)
            if at is not None:
                return midnight + at
        last = _AT[self.hours[-1] * 60 + self.minutes[-1]]
        day = midnight
        for _ in range(_MAX_DAYS):
            day -= _ONE_DAY
            if self.day_fires(day):
                return day + last
        return None

    def next_fire(self, wall: datetime) -> datetime | None:
        """The first fire strictly after ``wall`` (as ``prev_fire``); None: ask croniter."""
        midnight = _combine(wall.date(), _MIDNIGHT, wall.tzinfo)
        if self.day_fires(midnight):
            at = self._first_after(wall.hour, wall.minute)
            if at is not None:
                return midnight + at
        first = _AT[self.hours[0] * 60 + self.minutes[0]]
        day = midnight
        for _ in range(_MAX_DAYS):
            day += _ONE_DAY
            if self.day_fires(day):
                return day + first
        return None

    def _last_at_or_before(self, hour: int, minute: int) -> timedelta | None:
        """The latest fire of a day at or before hour:minute, as time since midnight."""
        hours, minutes = self.hours, self.minutes
        i = bisect_right(hours, hour)  # hours[:i] <= hour
        if i and hours[i - 1] == hour:
            j = bisect_right(minutes, minute)
            if j:
                return _AT[hour * 60 + minutes[j - 1]]
            i -= 1
        return _AT[hours[i - 1] * 60 + minutes[-1]] if i else None

    def _first_after(self, hour: int, minute: int) -> timedelta | None:
        """The first fire of a day after hour:minute, as time since midnight."""
        hours, minutes = self.hours, self.minutes
        i = bisect_left(hours, hour)  # hours[i:] >= hour
        if i < len(hours) and hours[i] == hour:
            j = bisect_right(minutes, minute)
            if j < len(minutes):
                return _AT[hour * 60 + minutes[j]]
            i += 1
        return _AT[hours[i] * 60 + minutes[0]] if i < len(hours) else None


_MONTHS = {name: n for n, name in enumerate(
    ("jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec"), 1)}
_DAYS = {name: n for n, name in enumerate(("sun", "mon", "tue", "wed", "thu", "fri", "sat"))}
# (low, high, names) per field; day-of-week also takes 7 for Sunday
_FIELDS = ((0, 59, None), (0, 23, None), (1, 31, None), (1, 12, _MONTHS), (0, 7, _DAYS))


def _value(text: str, names: dict[str, int] | None) -> int | None:
    if text.isdigit():
        return int(text)
    return names.get(text.lower()) if names is not None else None


def _simple_field(text: str, low: int, high: int,
                  names: dict[str, int] | None) -> set[int] | None:
    """The values of one field written with numbers, names, ``*``, ``a-b``, ``/step`` and
    lists; None for anything else (croniter expands it)."""
    found: set[int] = set()
    if "*" in text and "," in text:
        return None
    for part in text.split(","):
        base, slash, step_text = part.partition("/")
        step = int(step_text) if slash and step_text.isdigit() else (1 if not slash else 0)
        if step <= 0:
            return None
        if base == "*":
            start, end = low, high
        else:
            first, dash, last = base.partition("-")
            start_value = _value(first, names)
            end_value = _value(last, names) if dash else (high if slash else start_value)
            if start_value is None or end_value is None or end_value < start_value or (
                    dash and end_value == start_value):
                return None  # wrapping or one-value ranges ("4-4"): croniter's own rules
            start, end = start_value, end_value
        if start < low or end > high:
            return None
        found.update(range(start, end + 1, step))
    return found


@lru_cache(maxsize=4096)
def _plain_field(index: int, text: str, other_day_star: bool) -> tuple[int, ...] | None:
    """croniter.expand's values of field ``index`` written the plain way (``()`` for a field
    covering every value, croniter's ``["*"]``), or None for a form left to croniter. Cached
    per field text: fleets of windows share most fields (``* * *``) even when every schedule
    differs. ``other_day_star``: whether the other day field holds a ``*``."""
    low, high, names = _FIELDS[index]
    values = _simple_field(text, low, high, names)
    if values is None:
        return None
    if high == 7:  # day of week: 7 is Sunday
        values = {v % 7 for v in values}
        high = 6
    full = len(values) == high - low + 1
    # croniter keeps a full day field that is not a plain "*" restricted (so "either day
    # field" still holds) unless the other day field is written with a "*"
    if full and text != "*" and index in (2, 4) and not other_day_star:
        full = False
    return () if full else tuple(sorted(values))


def _plain_fields(expression: str) -> list[tuple[int, ...]] | None:
    """Every field by ``_plain_field``, or None when one is left to croniter."""
    parts = expression.split()
    if len(parts) != 5:
        return None
    fields = []
    for index, text in enumerate(parts):
        values = _plain_field(index, text, index in (2, 4) and "*" in parts[6 - index])
        if values is None:
            return None
        fields.append(values)
    return fields


def _expand(expression: str) -> list[list[int | str]] | None:
    """croniter.expand's fields (a field covering every value is ``["*"]``), computed here for
    the plain forms and by croniter for the rest; None when croniter refuses it or uses
    features the table does not model."""
    plain = _plain_fields(expression)
    if plain is not None:
        return [list(values) if values else ["*"] for values in plain]
    from croniter import croniter  # the forms _plain_field leaves

    try:
        expanded, nth = croniter.expand(expression)
    except (ValueError, KeyError, TypeError):
        return None
    if nth or len(expanded) != 5:
        return None
    return [list(field) for field in expanded]


def _every(field: list[int | str], low: int, high: int) -> tuple[int, ...]:
    return tuple(range(low, high + 1)) if field == ["*"] else tuple(sorted(
        {int(v) for v in field}))


@lru_cache(maxsize=16384)
def compile_cron(expression: str) -> CronTable | None:
    """The table of a (valid) five-field expression or alias; None when it uses what the table
    does not model."""
    expression = expression.strip()
    plain = _plain_fields(expression)
    if plain is not None:  # the usual forms, without building croniter's lists
        table = CronTable(
            minutes=plain[0] or _ALL_MINUTES,
            hours=plain[1] or _ALL_HOURS,
            doms=frozenset(plain[2]) if plain[2] else None,
            months=frozenset(plain[3]) if plain[3] else _ALL_MONTHS,
            dows=frozenset(plain[4]) if plain[4] else None,
        )
        return table if _comes(table) else None
    fields = _expand(expression)
    if fields is None:
        return None
    if any(not isinstance(v, int) and v != "*" for field in fields for v in field):
        return None  # "l" (last day) and the like
    minute, hour, dom, month, dow = fields
    minutes, hours = _every(minute, 0, 59), _every(hour, 0, 23)
    if not minutes or not hours or minutes[-1] > 59 or hours[-1] > 23:
        return None
    table = CronTable(
        minutes=minutes,
        hours=hours,
        doms=None if dom == ["*"] else frozenset(int(v) for v in dom),
        months=frozenset(_every(month, 1, 12)),
        dows=None if dow == ["*"] else frozenset(int(v) % 7 for v in dow),
    )
    return table if _comes(table) else None


def _comes(table: CronTable) -> bool:
    """False for a day that never comes, e.g. February 30th (croniter's check says so)."""
    return table.doms is None or table.dows is not None or any(
        d <= _LONGEST[m - 1] for m in table.months for d in table.doms)


def fires(expression: str) -> bool:
    """Whether a table models ``expression`` and it fires at all (then it is a valid cron
    expression: what ``spec.cron.cron_error`` asks croniter, without its cost)."""
    return compile_cron(expression) is not None
