"""Fuzzing cron expressions, time zones and Go-style durations.

Cron (``reconciler.spec.cron``): ``cron_error`` and ``timezone_error`` never raise, whatever
they are given; an expression they accept really schedules: ``next_fire`` returns a time after
the given one, in the given zone, for any accepted expression, zone and start time.

Durations (``reconciler.spec.durations``): ``parse_duration`` returns seconds or raises
ValueError naming the text; it accepts exactly what the schema's ``duration`` pattern accepts
(both validators), computes the value of generated valid durations exactly, and
``format_duration`` round-trips.
"""

from __future__ import annotations

import datetime as dt
import zoneinfo
from decimal import Decimal
from functools import cache
from typing import Any

import pytest
from hypothesis import HealthCheck, Phase, find, given, settings
from hypothesis import strategies as st

from reconciler.spec.cron import ALIASES, cron_error, next_fire, timezone_error
from reconciler.spec.durations import format_duration, parse_duration, to_seconds
from reconciler.spec.validate import fast_errors, schema_issues
from tests.fuzz.conftest import fuzz

# -- cron ----------------------------------------------------------------------------------------

MONTHS = ["jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec"]
DAYS = ["sun", "mon", "tue", "wed", "thu", "fri", "sat"]


def _atom(low: int, high: int, names: list[str]) -> st.SearchStrategy[str]:
    number = st.one_of(
        st.integers(low, high).map(str),  # in range
        st.integers(-2, high + 3).map(str),  # near the bounds, sometimes out
        st.sampled_from(["00", "007", "99999999999999999999", "1.5", "-0", "+1"]),
    )
    value = st.one_of(
        number, st.sampled_from(names or ["x"]), st.sampled_from(["L", "W", "?", "#"])
    )
    single = st.one_of(
        st.just("*"),
        value,
        st.tuples(value, value).map("-".join),
        st.tuples(st.sampled_from(["*", *map(str, range(low, low + 3))]), number).map("/".join),
        st.tuples(value, value, number).map(lambda t: f"{t[0]}-{t[1]}/{t[2]}"),
        st.tuples(value, st.integers(-1, 6)).map(lambda t: f"{t[0]}#{t[1]}"),
        st.tuples(value, st.sampled_from(["L", "W", "LW"])).map("".join),
    )
    return st.lists(single, min_size=1, max_size=3).map(",".join)


FIELD_STRATEGIES = [
    _atom(0, 59, []),
    _atom(0, 23, []),
    _atom(1, 31, []),
    _atom(1, 12, MONTHS),
    _atom(0, 7, DAYS),
]


@st.composite
def cron_expressions(draw: st.DrawFn) -> str:
    fields = [draw(strategy) for strategy in FIELD_STRATEGIES]
    count = draw(st.sampled_from([5, 5, 5, 5, 4, 6, 7, 1]))
    fields = (fields + fields)[:count]
    separator = draw(st.sampled_from([" ", " ", "\t", "  "]))
    return draw(st.sampled_from(["", " "])) + separator.join(fields)


ANY_CRON = st.one_of(
    cron_expressions(),
    st.sampled_from(sorted(ALIASES)).map(lambda a: a.upper() if len(a) % 2 else a),
    st.sampled_from(["@reboot", "@every 5m", "@", "*-*-* 00:00:00", "daily", "Mon *-*-* 9:00"]),
    st.text(max_size=40),
    st.one_of(st.none(), st.integers(), st.floats(), st.lists(st.text(max_size=3), max_size=5)),
)
ZONES = sorted(zoneinfo.available_timezones())
ANY_ZONE = st.one_of(
    st.sampled_from(ZONES),
    st.text(max_size=30),
    st.sampled_from(["", "Europe", "../../etc/passwd", "/etc/localtime", "UTC\x00", "a" * 300,
                     "posix/Europe/Paris", "right/UTC", "Etc/GMT+14", "Etc/GMT+15"]),
    st.one_of(st.none(), st.integers()),
)
STARTS = st.datetimes(
    min_value=dt.datetime(1970, 1, 1), max_value=dt.datetime(2200, 1, 1),
    timezones=st.sampled_from([dt.UTC, zoneinfo.ZoneInfo("Europe/Paris"),
                               zoneinfo.ZoneInfo("America/St_Johns"),
                               zoneinfo.ZoneInfo("Australia/Lord_Howe")]),
)


@fuzz()
@given(ANY_CRON, ANY_ZONE, STARTS)
def test_cron_and_timezones(expr: Any, zone: Any, after: dt.datetime) -> None:
    error = cron_error(expr)
    assert error is None or (isinstance(error, str) and error), error
    zone_error = timezone_error(zone)
    assert zone_error is None or (isinstance(zone_error, str) and zone_error)
    if error is not None or zone_error is not None:
        return
    fire = next_fire(expr, after, zone)
    assert fire.tzinfo is not None
    assert fire > after
    assert fire.utcoffset() == fire.astimezone(zoneinfo.ZoneInfo(zone)).utcoffset()


def test_generated_cron_expressions_hit_both_outcomes() -> None:
    """Guard against a vacuous run: the grammar makes expressions cron_error accepts (and then
    next_fire runs) as well as ones it rejects."""
    quick = settings(max_examples=2000, database=None, phases=[Phase.generate],
                     suppress_health_check=list(HealthCheck))
    accepted = find(cron_expressions(), lambda e: cron_error(e) is None,
                    settings=quick)
    rejected = find(cron_expressions(), lambda e: len(e.split()) == 5 and cron_error(e) is not None,
                    settings=quick)
    assert accepted and rejected


# -- durations -----------------------------------------------------------------------------------

UNITS = ["ns", "us", "µs", "μs", "ms", "s", "m", "h"]
NANOS = {"ns": 1, "us": 1000, "µs": 1000, "μs": 1000, "ms": 10**6, "s": 10**9, "m": 60 * 10**9,
         "h": 3600 * 10**9}


@st.composite
def valid_durations(draw: st.DrawFn) -> tuple[str, int]:
    """(text, exact nanoseconds) of a valid Go-style duration."""
    parts = []
    total = 0
    for _ in range(draw(st.integers(1, 4))):
        whole = draw(st.one_of(st.integers(0, 10**6).map(str), st.just(""), st.just("0")))
        fraction = draw(st.one_of(st.none(), st.text("0123456789", max_size=9)))
        if whole == "" and not fraction:
            whole = "1"
        number = whole + ("" if fraction is None else "." + fraction)
        unit = draw(st.sampled_from(UNITS))
        parts.append(number + unit)
        scale = NANOS[unit]
        total += int(whole or "0") * scale
        if fraction:
            total += int(fraction) * scale // 10 ** len(fraction)
    return "".join(parts), total


DURATION_PIECES = st.sampled_from(["0", "1", "1.", ".5", "..5", "-", "+", "s", "ms", "h", "m",
                                   "us", "µs", "μs", "ns", "d", "w", "y", " ", "\n", "e3", "_",
                                   "\u0663", "\uff11", "1e9", "S", "Ms", "inf", "nan"])
ANY_DURATION = st.one_of(
    valid_durations().map(lambda d: d[0]),
    st.lists(DURATION_PIECES, max_size=6).map("".join),
    st.text(max_size=16),
    st.tuples(valid_durations().map(lambda d: d[0]), DURATION_PIECES).map("".join),
    st.tuples(DURATION_PIECES, valid_durations().map(lambda d: d[0])).map("".join),
)


@cache
def _duration_schema_kind() -> tuple[str, dict[str, Any]]:
    """A minimal valid Service whose ``spec.stopTimeout`` is a duration."""
    return "Service", {
        "apiVersion": "fraisier.dev/v1",
        "kind": "Service",
        "metadata": {"name": "api"},
        "spec": {"target": "local", "stopTimeout": "1s"},
    }


def schema_accepts_duration(text: str) -> tuple[bool, bool]:
    kind, document = _duration_schema_kind()
    document = {**document, "spec": {**document["spec"], "stopTimeout": text}}
    return fast_errors(kind, document) is None, not schema_issues(kind, document)


@fuzz()
@given(ANY_DURATION)
def test_durations_parse_exactly_what_the_schema_accepts(text: str) -> None:
    try:
        seconds = parse_duration(text)
    except ValueError as error:
        assert repr(text)[:20] in str(error) or len(text) > 15
        parsed = False
    else:
        assert seconds >= 0 and seconds == to_seconds(text, 1.0)
        parsed = True
    fast, slow = schema_accepts_duration(text)
    assert fast == parsed, f"compiled schema {'accepts' if fast else 'rejects'} {text!r}"
    assert slow == parsed, f"jsonschema {'accepts' if slow else 'rejects'} {text!r}"


@fuzz()
@given(valid_durations())
def test_valid_durations_have_their_exact_value(duration: tuple[str, int]) -> None:
    text, nanos = duration
    assert parse_duration(text) == nanos / 1e9


@fuzz()
@given(st.integers(0, 10**15))
def test_format_duration_round_trips(nanos: int) -> None:
    seconds = nanos / 1e9
    text = format_duration(seconds)
    assert parse_duration(text) == pytest.approx(seconds, rel=1e-12, abs=1e-9)
    assert Decimal(str(parse_duration(text))) >= 0


@fuzz()
@given(st.one_of(st.none(), st.booleans(), st.integers(), st.floats(), st.text(max_size=12),
                 st.timedeltas(), st.lists(st.integers(), max_size=2)))
def test_to_seconds_raises_only_value_error(value: Any) -> None:
    try:
        seconds = to_seconds(value, 2.5)
    except ValueError:
        return
    assert isinstance(seconds, float)
