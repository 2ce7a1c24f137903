from __future__ import annotations

import re

import pytest
from hypothesis import given
from hypothesis import strategies as st

from reconciler.spec.durations import format_duration, parse_duration
from reconciler.spec.validate import schema_files

DURATION_PATTERN = re.compile(schema_files()["common.json"]["$defs"]["duration"]["pattern"])


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("0", 0.0),
        ("0s", 0.0),
        ("30s", 30.0),
        ("5m", 300.0),
        ("1h30m", 5400.0),
        ("1.5s", 1.5),
        (".5s", 0.5),
        ("1.s", 1.0),
        ("500ms", 0.5),
        ("250us", 0.00025),
        ("250µs", 0.00025),
        ("250μs", 0.00025),
        ("100ns", 1e-7),
        ("2h45m30.5s", 9930.5),
        ("1m1m", 120.0),
    ],
)
def test_parse_duration(text: str, seconds: float) -> None:
    assert parse_duration(text) == pytest.approx(seconds)
    assert DURATION_PATTERN.search(text)


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("", "expected"),
        ("5", "missing unit"),
        ("1d", "unknown unit"),
        ("-1s", "sign"),
        ("+1s", "sign"),
        ("abc", "unexpected"),
        ("1 s", "unexpected"),
        ("1s ", "unexpected"),
        (".s", "unexpected"),
    ],
)
def test_invalid_durations_raise_a_clear_value_error(text: str, reason: str) -> None:
    with pytest.raises(ValueError, match=reason) as raised:
        parse_duration(text)
    assert repr(text) in str(raised.value)
    assert not DURATION_PATTERN.search(text)


def test_non_strings_are_rejected() -> None:
    with pytest.raises(ValueError, match="expected a string"):
        parse_duration(30)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("seconds", "text"),
    [
        (0, "0s"),
        (0.5, "500ms"),
        (1.5, "1.5s"),
        (90, "1m30s"),
        (3600, "1h"),
        (3605, "1h5s"),
        (5400, "1h30m"),
        (0.00025, "250us"),
        (1e-7, "100ns"),
        (0.0015, "1.5ms"),
        (-2, "-2s"),
    ],
)
def test_format_duration(seconds: float, text: str) -> None:
    assert format_duration(seconds) == text


@given(st.integers(min_value=0, max_value=10**15))
def test_format_then_parse_round_trips(nanos: int) -> None:
    seconds = nanos / 1e9
    assert parse_duration(format_duration(seconds)) == pytest.approx(seconds, abs=1e-9)


_UNITS = st.sampled_from(["ns", "us", "µs", "ms", "s", "m", "h", "d", "", "S", " "])
_NUMBERS = st.from_regex(r"\A[0-9]{0,3}(\.[0-9]{0,2})?\Z")


@given(st.lists(st.tuples(_NUMBERS, _UNITS), min_size=1, max_size=4))
def test_parser_and_schema_pattern_agree(parts: list[tuple[str, str]]) -> None:
    text = "".join(number + unit for number, unit in parts)
    try:
        parse_duration(text)
        parsed = True
    except ValueError:
        parsed = False
    assert parsed == bool(DURATION_PATTERN.search(text)), text
