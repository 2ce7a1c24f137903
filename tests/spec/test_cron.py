from __future__ import annotations

import time
from datetime import UTC, datetime
from zoneinfo import ZoneInfo

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from reconciler.spec.cron import cron_error, next_fire, timezone_error


@pytest.mark.parametrize(
    "expr",
    [
        "*/5 * * * *",
        "0 9 * * mon-fri",
        "30 2 1 * *",
        "0 0 29 2 *",
        "@daily",
        "@hourly",
        "  0 * * * *  ",
    ],
)
def test_valid_expressions(expr: str) -> None:
    assert cron_error(expr) is None


@pytest.mark.parametrize(
    ("expr", "reason"),
    [
        ("* * * *", "expected 5 fields"),
        ("* * * * * *", "expected 5 fields"),
        ("", "expected 5 fields"),
        ("61 * * * *", "out of range"),
        ("a b c d e", "not acceptable"),
        ("0 0 30 2 *", "failed to find next date"),
        ("@sometimes", "expected 5 fields"),
    ],
)
def test_invalid_expressions(expr: str, reason: str) -> None:
    error = cron_error(expr)
    assert error is not None and reason in error
    assert repr(expr) in error


def test_non_string_is_an_error() -> None:
    assert "expected a string" in (cron_error(5) or "")


def test_an_expression_that_never_fires_is_found_quickly() -> None:
    start = time.perf_counter()
    assert cron_error("0 0 31 2 *") is not None
    assert time.perf_counter() - start < 2


def test_next_fire_in_a_time_zone() -> None:
    after = datetime(2026, 11, 26, 9, 0, tzinfo=UTC)  # 10:00 in Paris
    fire = next_fire("0 9 * * *", after, "Europe/Paris")
    assert fire == datetime(2026, 11, 27, 9, 0, tzinfo=ZoneInfo("Europe/Paris"))
    assert fire.utcoffset() is not None and fire.utcoffset().total_seconds() == 3600  # type: ignore[union-attr]
    assert next_fire("*/5 * * * *", after, "UTC") == datetime(2026, 11, 26, 9, 5, tzinfo=UTC)


def test_next_fire_across_a_dst_change() -> None:
    # 2026-03-29: Paris skips from 02:00 to 03:00, so 02:30 does not exist that day
    after = datetime(2026, 3, 28, 23, 0, tzinfo=UTC)
    fire = next_fire("0 4 * * *", after, "Europe/Paris")
    assert fire.astimezone(UTC) == datetime(2026, 3, 29, 2, 0, tzinfo=UTC)  # 04:00 CEST


def test_next_fire_needs_an_aware_time_and_a_valid_expression() -> None:
    with pytest.raises(ValueError, match="timezone-aware"):
        next_fire("* * * * *", datetime(2026, 1, 1), "UTC")
    with pytest.raises(ValueError, match="expected 5 fields"):
        next_fire("* *", datetime(2026, 1, 1, tzinfo=UTC), "UTC")


def test_timezones() -> None:
    assert timezone_error("UTC") is None
    assert timezone_error("Europe/Paris") is None
    assert "unknown time zone" in (timezone_error("Mars/Olympus") or "")
    assert timezone_error("../../etc/passwd") is not None
    assert "unknown time zone" in (timezone_error("Europe") or "")  # a folder of the database
    assert timezone_error("") is not None


_FIELD = st.text(alphabet="0123456789*/-,?LW#H ", min_size=1, max_size=5) | st.sampled_from(
    ["jan", "mon", "sun", "dec", "5W", "1#2", "H(0-5)", "99999999999999999999"]
)


@settings(max_examples=300, deadline=None)
@given(st.lists(_FIELD, min_size=1, max_size=7))
def test_cron_error_never_raises(fields: list[str]) -> None:
    result = cron_error(" ".join(fields))
    assert result is None or isinstance(result, str)
