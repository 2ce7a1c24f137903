"""plan/cron_table.py answers what croniter answers: the latest fire at or before a wall time
and the first after it, for random expressions (names, ranges, steps, lists, both day fields)
and times, and sync windows built on it give croniter's (start, next start) around any instant,
across DST changes. Expressions the table does not model go to croniter."""

from __future__ import annotations

import random
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest
from croniter import croniter

from reconciler.plan.cron_table import compile_cron
from reconciler.plan.windows import parse_window

DOW_NAMES = ["sun", "mon", "tue", "wed", "thu", "fri", "sat"]
MONTH_NAMES = ["jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov",
               "dec"]


def field(rng: random.Random, low: int, high: int, names: list[str] | None = None) -> str:
    choice = rng.random()
    if choice < 0.3:
        return "*"
    if choice < 0.45:
        return f"*/{rng.randint(2, max(2, (high - low) // 2))}"
    if choice < 0.6:
        a = rng.randint(low, high)
        b = rng.randint(a, high)
        return f"{a}-{b}" + (f"/{rng.randint(1, 3)}" if rng.random() < 0.3 else "")
    values = rng.sample(range(low, high + 1), rng.randint(1, 3))
    if names is not None and rng.random() < 0.3:
        return ",".join(names[v - low] for v in values)
    return ",".join(str(v) for v in values)


def expression(rng: random.Random) -> str:
    return " ".join([field(rng, 0, 59), field(rng, 0, 23), field(rng, 1, 31),
                     field(rng, 1, 12, MONTH_NAMES), field(rng, 0, 6, DOW_NAMES)])


def test_prev_and_next_fire_agree_with_croniter() -> None:
    rng = random.Random(17)
    checked = 0
    while checked < 200:
        expr = expression(rng)
        try:
            croniter(expr, datetime(2026, 1, 1)).get_next(datetime)
        except Exception:  # an expression that never fires (February 30th)
            continue
        table = compile_cron(expr)
        assert table is not None, expr
        for _ in range(3):
            wall = datetime(2024, 1, 1) + timedelta(minutes=rng.randint(0, 3 * 525_600),
                                                    seconds=rng.choice([0, 0, 17]))
            expected_prev = croniter(expr, wall + timedelta(microseconds=1)).get_prev(datetime)
            expected_next = croniter(expr, wall).get_next(datetime)
            assert table.prev_fire(wall) == expected_prev, (expr, wall)
            assert table.next_fire(wall) == expected_next, (expr, wall)
        checked += 1


@pytest.mark.parametrize("zone", ["UTC", "Europe/Paris", "America/New_York", "Australia/Lord_Howe"])
def test_windows_around_any_instant_agree_with_croniter(zone: str) -> None:
    rng = random.Random(zone)
    for schedule in ["30 2 * * *", "0 1-3 * * 0", "*/20 * * * *", "0 0 29 2 *", "15 2 * 3,10 *",
                     "@daily", "0 9 * * mon-fri", "0 0 1,15 * fri"]:
        window = parse_window({"kind": "deny", "schedule": schedule, "duration": "1h",
                               "timezone": zone})
        assert compile_cron(window.schedule) is not None
        for _ in range(12):
            # around the DST changes of 2026 as well as anywhere
            now = (datetime(2026, rng.choice([3, 4, 10, 11]), 1, tzinfo=UTC)
                   + timedelta(seconds=rng.randint(0, 40 * 86_400)))
            wall = now.astimezone(window.zone).replace(tzinfo=None)
            assert window.uncached_around(now) == window._croniter_around(now, wall), (
                schedule, zone, now)


def test_what_the_table_does_not_model_goes_to_croniter() -> None:
    assert compile_cron("0 0 L * *") is None
    assert compile_cron("0 0 * * 5#2") is None
    window = parse_window({"kind": "deny", "schedule": "0 0 L * *", "duration": "1h"})
    now = datetime(2026, 2, 10, tzinfo=UTC)
    assert window.uncached_around(now) == (datetime(2026, 1, 31, tzinfo=UTC),
                                           datetime(2026, 2, 28, tzinfo=UTC))


def test_planning_with_windows_and_loading_need_no_croniter() -> None:
    # croniter's import is ~30 ms of every `reconciler diff` / `apply`: only a schedule check
    # (validating a changed file) or an expression the table does not model pulls it in.
    code = """
import sys
from datetime import UTC, datetime
from reconciler.plan.planner import make_plan
from reconciler.spec.cache import cache_version
from reconciler.spec.loader import load_desired_state
from reconciler.spec.model import DesiredState, Resource, ResourceKey, spec_hash
cache_version()
spec = {"target": "t", "command": ["x"],
        "syncWindows": [{"kind": "deny", "schedule": "0 22 * * 5", "duration": "60h"}]}
r = Resource(ResourceKey("e", "Service", "s"), {}, spec, "f.yaml")
r.hash = spec_hash(r.document())
now = datetime(2026, 11, 28, tzinfo=UTC)
plan = make_plan(DesiredState({r.key: r}), [], {r.key: "rev"}, now=now)
assert plan.items[0].opens_at is not None, plan.items
print("croniter" in sys.modules)
"""
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=60, check=True)
    assert proc.stdout.split() == ["False"], proc.stdout + proc.stderr


def random_expressions(rng: random.Random, count: int) -> list[str]:
    """``count`` random expressions that fire (croniter says so)."""
    found: list[str] = []
    while len(found) < count:
        expr = expression(rng)
        try:
            croniter(expr, datetime(2026, 1, 1)).get_next(datetime)
        except Exception:  # never fires (February 30th)
            continue
        found.append(expr)
    return found


def test_fires_around_an_instant_in_utc_agree_with_croniter() -> None:
    # A UTC window asks the table with the instant itself (no wall time, no zone work): the
    # answers must be croniter's for the aware time, at any second, on a fire and just before.
    rng = random.Random(2026)
    for expr in random_expressions(rng, 200):
        table = compile_cron(expr)
        assert table is not None, expr
        for _ in range(3):
            now = datetime(2024, 1, 1, tzinfo=UTC) + timedelta(
                minutes=rng.randint(0, 3 * 525_600), seconds=rng.choice([0, 0, 17, 59]),
                microseconds=rng.choice([0, 0, 1, 999_999]))
            fire = croniter(expr, now).get_next(datetime)
            for moment in (now, fire, fire - timedelta(microseconds=1)):
                expected_prev = croniter(expr, moment + timedelta(microseconds=1)).get_prev(
                    datetime)
                expected_next = croniter(expr, moment).get_next(datetime)
                assert table.prev_fire(moment) == expected_prev, (expr, moment)
                assert table.next_fire(moment) == expected_next, (expr, moment)
                assert table.prev_fire(moment).tzinfo is UTC


def dst_changes(zone: ZoneInfo, year: int) -> list[datetime]:
    """The instants (UTC, to the hour) around which ``zone``'s offset changes in ``year``."""
    changes = []
    moment = datetime(year, 1, 1, tzinfo=UTC)
    offset = moment.astimezone(zone).utcoffset()
    while moment.year == year:
        moment += timedelta(hours=1)
        current = moment.astimezone(zone).utcoffset()
        if current != offset:
            changes.append(moment)
            offset = current
    return changes


ZONES = ["UTC", "Europe/Paris", "America/New_York", "Australia/Lord_Howe", "Pacific/Chatham",
         "America/St_Johns", "Asia/Kathmandu"]


@pytest.mark.parametrize("zone", ZONES)
def test_windows_on_random_schedules_agree_with_croniter_across_dst(zone: str) -> None:
    # random expressions (not only the usual ones) in zones with whole, half-hour and 45-minute
    # offsets and DST changes of one hour or of 30 minutes, at instants near each change
    rng = random.Random(f"dst {zone}")
    changes = dst_changes(ZoneInfo(zone), 2026)
    assert changes or zone in ("UTC", "Asia/Kathmandu")
    for expr in random_expressions(rng, 40):
        window = parse_window({"kind": "deny", "schedule": expr, "duration": "1h",
                               "timezone": zone})
        for _ in range(8):
            base = (rng.choice(changes) if changes and rng.random() < 0.75
                    else datetime(2026, 1, 1, tzinfo=UTC) + timedelta(days=rng.randint(0, 364)))
            now = base + timedelta(seconds=rng.randint(-2 * 86_400, 2 * 86_400))
            wall = now.astimezone(window.zone).replace(tzinfo=None)
            expected = window._croniter_around(now, wall)
            assert window.uncached_around(now) == expected, (expr, zone, now)
            if zone == "UTC":  # croniter alone, on the aware instant
                assert expected == (
                    croniter(expr, now + timedelta(microseconds=1)).get_prev(datetime),
                    croniter(expr, now).get_next(datetime)), (expr, now)
