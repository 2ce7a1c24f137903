"""Sync windows, pure: activity, allow/deny precedence, time zones and DST, midnight, next_open."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from reconciler.plan import windows as windows_module
from reconciler.plan.windows import (
    SyncWindow,
    allowed,
    deferral,
    explain,
    ignoring_windows,
    next_open,
    parse_window,
    windows_ignored,
    windows_in,
    windows_of,
)
from reconciler.spec.model import Resource, ResourceKey


def w(kind: str, schedule: str, duration: str, timezone: str | None = None) -> SyncWindow:
    raw = {"kind": kind, "schedule": schedule, "duration": duration}
    if timezone is not None:
        raw["timezone"] = timezone
    return parse_window(raw)


def utc(*args: int) -> datetime:
    return datetime(*args, tzinfo=UTC)  # type: ignore[misc]


# 2026-11-26 is a Thursday
THU_NOON = utc(2026, 11, 26, 12, 0)


def test_allow_window_is_active_from_its_start_for_its_duration() -> None:
    nightly = w("allow", "0 2 * * *", "1h")
    assert not nightly.active(utc(2026, 11, 26, 1, 59, 59))
    assert nightly.active(utc(2026, 11, 26, 2, 0))  # the start is inside
    assert nightly.active(utc(2026, 11, 26, 2, 59, 59))
    assert not nightly.active(utc(2026, 11, 26, 3, 0))  # the end is not
    assert nightly.active_until(utc(2026, 11, 26, 2, 30)) == utc(2026, 11, 26, 3, 0)


def test_no_windows_allows_everything() -> None:
    assert allowed([], THU_NOON)
    assert next_open([], THU_NOON) == THU_NOON
    assert explain([], THU_NOON) is None


def test_allow_only_changes_inside_an_allow_window() -> None:
    business = w("allow", "0 9 * * 1-5", "8h")
    assert allowed([business], THU_NOON)
    assert not allowed([business], utc(2026, 11, 26, 18, 0))
    assert not allowed([business], utc(2026, 11, 28, 12, 0))  # Saturday
    # Saturday noon -> Monday 09:00
    assert next_open([business], utc(2026, 11, 28, 12, 0)) == utc(2026, 11, 30, 9, 0)


def test_one_active_allow_window_is_enough() -> None:
    morning = w("allow", "0 6 * * *", "2h")
    noon = w("allow", "0 11 * * *", "2h")
    assert allowed([morning, noon], THU_NOON)
    assert not allowed([morning, noon], utc(2026, 11, 26, 9, 0))
    assert next_open([morning, noon], utc(2026, 11, 26, 9, 0)) == utc(2026, 11, 26, 11, 0)


def test_deny_wins_over_allow() -> None:
    always = w("allow", "* * * * *", "1m")  # open all the time on its own
    freeze = w("deny", "0 12 * * *", "30m")
    assert allowed([always], THU_NOON)
    assert not allowed([always, freeze], THU_NOON)
    assert not allowed([freeze, always], utc(2026, 11, 26, 12, 29, 59))
    assert allowed([always, freeze], utc(2026, 11, 26, 12, 30))
    assert next_open([always, freeze], THU_NOON) == utc(2026, 11, 26, 12, 30)


def test_deny_only_blocks_while_active() -> None:
    freeze = w("deny", "0 12 * * *", "1h")
    assert allowed([freeze], utc(2026, 11, 26, 11, 59))
    assert not allowed([freeze], THU_NOON)
    assert next_open([freeze], utc(2026, 11, 26, 12, 10)) == utc(2026, 11, 26, 13, 0)


def test_weekend_deny_window_spans_midnight_and_days() -> None:
    weekend = w("deny", "0 22 * * 5", "60h")  # Friday 22:00 -> Monday 10:00
    assert allowed([weekend], utc(2026, 11, 27, 21, 59))
    assert not allowed([weekend], utc(2026, 11, 27, 22, 0))
    assert not allowed([weekend], utc(2026, 11, 29, 3, 0))  # Sunday night
    assert not allowed([weekend], utc(2026, 11, 30, 9, 59))
    assert allowed([weekend], utc(2026, 11, 30, 10, 0))
    assert next_open([weekend], utc(2026, 11, 28, 0, 0)) == utc(2026, 11, 30, 10, 0)


def test_allow_window_over_midnight() -> None:
    night = w("allow", "0 23 * * *", "3h")  # 23:00 -> 02:00
    assert allowed([night], utc(2026, 11, 27, 1, 30))  # started the day before
    assert not allowed([night], utc(2026, 11, 27, 2, 0))
    assert next_open([night], utc(2026, 11, 27, 2, 0)) == utc(2026, 11, 27, 23, 0)


def test_overlapping_deny_windows_open_after_the_last_ends() -> None:
    a = w("deny", "0 12 * * *", "1h")
    b = w("deny", "30 12 * * *", "2h")  # 12:30 -> 14:30
    assert next_open([a, b], utc(2026, 11, 26, 12, 10)) == utc(2026, 11, 26, 14, 30)


def test_allow_window_that_opens_inside_a_deny_window() -> None:
    allow = w("allow", "0 2 * * *", "2h")  # 02:00 -> 04:00
    deny = w("deny", "0 1 * * *", "2h")  # 01:00 -> 03:00
    # at noon: next allow start is 02:00 but a deny is active then; it opens at 03:00
    assert next_open([allow, deny], THU_NOON) == utc(2026, 11, 27, 3, 0)


def test_window_in_a_time_zone() -> None:
    paris = w("allow", "0 2 * * *", "1h", "Europe/Paris")  # 02:00 CET = 01:00 UTC in winter
    assert paris.active(utc(2026, 11, 27, 1, 30))
    assert not paris.active(utc(2026, 11, 27, 2, 30))
    assert next_open([paris], THU_NOON) == utc(2026, 11, 27, 1, 0)
    # in summer 02:00 CEST = 00:00 UTC
    assert next_open([paris], utc(2026, 7, 1, 12, 0)) == utc(2026, 7, 2, 0, 0)


def test_start_in_the_skipped_hour_happens_when_the_clock_jumps() -> None:
    # 2026-03-29 in Paris: 02:00 CET jumps to 03:00 CEST (01:00 UTC); 02:30 does not exist
    skipped = w("allow", "30 2 * * *", "30m", "Europe/Paris")
    assert skipped.next_start(utc(2026, 3, 28, 12, 0)) == utc(2026, 3, 29, 1, 0)
    assert skipped.active(utc(2026, 3, 29, 1, 20))
    assert not skipped.active(utc(2026, 3, 29, 1, 30))  # still 30 minutes of elapsed time
    assert skipped.next_start(utc(2026, 3, 29, 1, 0)) == utc(2026, 3, 30, 0, 30)


def test_start_in_the_repeated_hour_happens_once() -> None:
    # 2026-10-25 in Paris: 03:00 CEST falls back to 02:00 CET (at 01:00 UTC); 02:30 happens twice
    repeated = w("allow", "30 2 * * *", "20m", "Europe/Paris")
    assert repeated.next_start(utc(2026, 10, 24, 12, 0)) == utc(2026, 10, 25, 0, 30)  # CEST
    assert repeated.active(utc(2026, 10, 25, 0, 40))
    assert not repeated.active(utc(2026, 10, 25, 1, 40))  # the second 02:40 local: no window
    assert repeated.next_start(utc(2026, 10, 25, 1, 10)) == utc(2026, 10, 26, 1, 30)  # CET


def test_duration_is_elapsed_time_across_dst() -> None:
    # 01:00 CET + 3h of elapsed time on the night clocks go forward ends at 05:00 CEST
    night = w("allow", "0 1 * * *", "3h", "Europe/Paris")
    assert night.active_until(utc(2026, 3, 29, 0, 30)) == utc(2026, 3, 29, 3, 0)


def test_next_open_is_none_when_a_deny_never_ends() -> None:
    forever = w("deny", "* * * * *", "2m")  # each minute restarts it
    assert next_open([forever], THU_NOON) is None
    reason = explain([forever], THU_NOON)
    assert reason is not None and reason.startswith("outside sync window: no opening found")


def test_explain_names_the_allow_window_that_opens() -> None:
    paris = w("allow", "0 2 * * *", "1h", "Europe/Paris")
    assert explain([paris], THU_NOON) == (
        "outside sync window: next opens 2026-11-27T01:00:00+00:00 "
        "(allow 0 2 * * * for 1h, Europe/Paris)")


def test_explain_names_the_active_deny_window() -> None:
    freeze = w("deny", "0 12 * * 4", "1h30m")
    assert explain([freeze], utc(2026, 11, 26, 12, 5, 30, 123)) == (
        "outside sync window: next opens 2026-11-26T13:30:00+00:00 "
        "(deny 0 12 * * 4 for 1h30m, UTC is active)")


def test_naive_times_are_refused() -> None:
    with pytest.raises(ValueError, match="timezone-aware"):
        allowed([w("deny", "0 12 * * *", "1h")], datetime(2026, 11, 26, 12, 0))


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        ({"kind": "maybe", "schedule": "* * * * *", "duration": "1h"}, "kind"),
        ({"kind": "allow", "schedule": "61 * * * *", "duration": "1h"}, "schedule"),
        ({"kind": "allow", "schedule": "* * * * *", "duration": "1 hour"}, "duration"),
        ({"kind": "allow", "schedule": "* * * * *", "duration": "0s"}, "more than 0"),
        ({"kind": "allow", "schedule": "* * * * *", "duration": "1h", "timezone": "Mars/Base"},
         "timezone"),
        ({"kind": "allow", "schedule": "* * * * *", "duration": "1h", "timezone": 5},
         "^timezone: 5 is not a time zone name"),
        # the first bad field is named: schedule, then duration, then zone
        ({"kind": "allow", "schedule": "0 0 30 2 *", "duration": "1 hour",
          "timezone": "Mars/Base"}, "^schedule"),
        ({"kind": "allow", "schedule": "0 0 * * *", "duration": "1 hour",
          "timezone": "Mars/Base"}, "^duration"),
    ],
)
def test_parse_window_refuses_bad_fields(raw: dict[str, str], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        parse_window(raw)


def res(kind: str, name: str, spec: dict[str, object]) -> Resource:
    return Resource(ResourceKey("prod", kind, name), {}, spec, "f.yaml")


NIGHTLY = {"kind": "allow", "schedule": "0 2 * * *", "duration": "1h"}
FREEZE = {"kind": "deny", "schedule": "0 12 * * *", "duration": "1h"}


def test_resource_windows_merge_with_its_targets() -> None:
    target = res("Target", "t", {"provider": "bare_metal", "syncWindows": [NIGHTLY]})
    api = res("Service", "api", {"target": "t", "syncWindows": [FREEZE]})
    plain = res("Service", "web", {"target": "t"})
    assert [x.kind for x in windows_of(api, target)] == ["deny", "allow"]
    assert [x.kind for x in windows_of(plain, target)] == ["allow"]
    assert [x.kind for x in windows_of(target, target)] == ["allow"]
    assert windows_of(plain, None) == ()
    # the Target's allow window is closed at noon; the Service's own deny is also active
    assert deferral(plain, target, THU_NOON) == (
        "outside sync window: next opens 2026-11-27T02:00:00+00:00 (allow 0 2 * * * for 1h, UTC)")
    reason = deferral(api, target, THU_NOON)
    assert reason is not None and "deny 0 12 * * * for 1h, UTC is active" in reason
    assert deferral(plain, target, utc(2026, 11, 27, 2, 15)) is None
    assert deferral(res("Service", "x", {"target": "t"}), None, THU_NOON) is None


def test_parsed_windows_are_shared_between_equal_specs() -> None:
    a = windows_in({"syncWindows": [dict(NIGHTLY)]})
    b = windows_in({"syncWindows": [dict(NIGHTLY)]})
    assert a is b
    assert windows_in({}) == () and windows_in(None) == ()


def test_parsed_windows_are_told_apart_by_every_field_and_their_order() -> None:
    one = windows_in({"syncWindows": [dict(NIGHTLY)]})
    both = windows_in({"syncWindows": [dict(NIGHTLY), dict(FREEZE)]})
    swapped = windows_in({"syncWindows": [dict(FREEZE), dict(NIGHTLY)]})
    assert [x.kind for x in both] == ["allow", "deny"]
    assert [x.kind for x in swapped] == ["deny", "allow"]
    assert len(one) == 1 and len(both) == 2
    for field, value in (("kind", "deny"), ("schedule", "0 3 * * *"), ("duration", "2h"),
                         ("timezone", "Europe/Paris")):
        other = windows_in({"syncWindows": [{**NIGHTLY, field: value}]})[0]
        assert getattr(other, field) != getattr(one[0], field)
        assert other is not one[0]
    assert windows_in({"syncWindows": [{**NIGHTLY, "duration": "2h"}]})[0].duration == (
        timedelta(hours=2))
    # "UTC" written out is the same window as the default
    assert windows_in({"syncWindows": [{**NIGHTLY, "timezone": "UTC"}]}) is one


def test_parsing_windows_keeps_a_bounded_memo_and_still_answers() -> None:
    first = windows_in({"syncWindows": [dict(NIGHTLY)]})
    for minute in range(windows_module.PARSED_KEEP + 10):  # fills and empties the memo
        windows_in({"syncWindows": [{**NIGHTLY, "duration": f"{minute + 1}s"}]})
    assert len(windows_module._parsed) <= windows_module.PARSED_KEEP
    again = windows_in({"syncWindows": [dict(NIGHTLY)]})
    assert again[0].schedule == first[0].schedule and again[0].duration == first[0].duration


@pytest.mark.parametrize("field", ["kind", "schedule", "duration", "timezone"])
def test_a_window_field_that_is_not_text_is_refused_by_name(field: str) -> None:
    # not a key of the memo of parsed windows (a list is not hashable): still a ValueError that
    # names the field, as for any other bad value
    with pytest.raises(ValueError, match=f"^{field}"):
        windows_in({"syncWindows": [{**NIGHTLY, field: ["0 2 * * *"]}]})


def test_ignoring_windows_is_scoped() -> None:
    assert not windows_ignored()
    with ignoring_windows():
        assert windows_ignored()
        with ignoring_windows(False):
            assert not windows_ignored()
    assert not windows_ignored()


def test_every_minute_allow_window_is_continuous() -> None:
    continuous = w("allow", "* * * * *", "1m")
    for second in range(0, 120, 7):
        assert continuous.active(THU_NOON + timedelta(seconds=second))
