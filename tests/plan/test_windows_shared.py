"""What the planner shares between resources when it judges sync windows, checked against the
plain evaluation of each resource's whole set (``explain`` / ``next_open`` of its windows):

* ``Deferrals.decide`` judges a Target's windows once and each resource's own deny windows on
  top of them; it must give every resource the very reason and opening time the whole set gives;
* windows with the same schedule and zone share their memo of cron answers: one that differs in
  zone, kind or duration must still get its own answers;
* the cron table caches each field's values per text and context: the same text in another
  context (the other day field written with or without ``*``) must not reuse them.
"""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from croniter import croniter

from reconciler.plan import windows as windows_module
from reconciler.plan.cron_table import compile_cron
from reconciler.plan.windows import Deferrals, explain, next_open, parse_window
from reconciler.spec.model import DesiredState, Resource, ResourceKey

ZONES = ["UTC", "Europe/Paris", "America/New_York"]
# (schedule, durations): none always active, so that every search ends in a few jumps
SCHEDULES = [("0 2 * * 1-5", ["30m", "2h"]), ("30 1 * * *", ["5m", "1h", "3h"]),
             ("0 0 24 12 *", ["72h"]), ("*/20 * * * *", ["5m"]), ("0 22 * * 5", ["60h"]),
             ("15 3 1,15 * *", ["1h"]), ("0 12 * * sat,sun", ["2h"]),
             ("45 23 * * *", ["30m"]), ("0 9-17 * * 1-5", ["5m", "30m"])]


def random_window(rng: random.Random, kind: str | None = None) -> dict[str, str]:
    schedule, durations = rng.choice(SCHEDULES)
    return {"kind": kind or rng.choice(["allow", "deny"]), "schedule": schedule,
            "duration": rng.choice(durations), "timezone": rng.choice(ZONES)}


def fleet(rng: random.Random, services: int) -> DesiredState:
    resources: dict[ResourceKey, Resource] = {}
    for t in range(3):
        spec: dict[str, Any] = {"provider": "bare_metal"}
        if t:  # one Target without windows
            spec["syncWindows"] = [random_window(rng) for _ in range(rng.randint(1, 3))]
        target = Resource(ResourceKey("prod", "Target", f"t{t}"), {}, spec, "t.yaml")
        resources[target.key] = target
    for i in range(services):
        spec = {"target": f"t{i % 3}"}
        choice = rng.random()
        if choice < 0.6:  # own deny windows only: the shared path
            spec["syncWindows"] = [random_window(rng, "deny") for _ in range(rng.randint(1, 2))]
        elif choice < 0.8:  # an own allow window: judged whole
            spec["syncWindows"] = [random_window(rng, "allow"), random_window(rng, "deny")]
        service = Resource(ResourceKey("prod", "Service", f"s{i}"), {}, spec, "s.yaml")
        resources[service.key] = service
    return DesiredState(resources, commit="c" * 40)


@pytest.mark.parametrize("seed", range(6))
def test_decide_gives_every_resource_what_its_whole_set_gives(seed: int) -> None:
    rng = random.Random(seed)
    desired = fleet(rng, 60)
    for _ in range(6):
        now = datetime(2026, 1, 1, tzinfo=UTC) + timedelta(minutes=rng.randint(0, 525_600))
        view = Deferrals(desired, now)
        for key, resource in desired.resources.items():
            windows = view.windows_for(key, resource, None)
            reason, opens = view.decide(key, resource, None)
            expected = explain(windows, now) if windows else None
            assert reason == expected, (key, now)
            if expected is not None:
                assert opens == next_open(windows, now), (key, now)
            else:
                assert opens is None


def test_decide_steps_over_an_own_deny_that_covers_the_targets_opening() -> None:
    now = datetime(2026, 11, 26, 12, 0, tzinfo=UTC)  # a Thursday
    target = Resource(ResourceKey("prod", "Target", "t"), {}, {"syncWindows": [
        {"kind": "allow", "schedule": "0 2 * * *", "duration": "2h"}]}, "t.yaml")
    # denies 01:30-02:30 every day: the change waits for 02:30, inside the allow window
    service = Resource(ResourceKey("prod", "Service", "s"), {}, {"target": "t", "syncWindows": [
        {"kind": "deny", "schedule": "30 1 * * *", "duration": "1h"}]}, "s.yaml")
    desired = DesiredState({target.key: target, service.key: service})
    reason, opens = Deferrals(desired, now).decide(service.key, service, None)
    assert opens == datetime(2026, 11, 27, 2, 30, tzinfo=UTC)
    assert reason == ("outside sync window: next opens 2026-11-27T02:30:00+00:00 "
                      "(allow 0 2 * * * for 2h, UTC)")


def test_windows_sharing_a_schedule_keep_their_own_zone_kind_and_duration() -> None:
    now = datetime(2026, 11, 26, 2, 30, tzinfo=UTC)
    short = parse_window({"kind": "deny", "schedule": "0 2 * * *", "duration": "10m"})
    long = parse_window({"kind": "allow", "schedule": "0 2 * * *", "duration": "1h"})
    paris = parse_window({"kind": "deny", "schedule": "0 2 * * *", "duration": "1h",
                          "timezone": "Europe/Paris"})
    assert short.spans is long.spans  # one memo of cron answers for the schedule in UTC
    assert paris.spans is not short.spans
    windows_module._around.cache_clear()
    for first, second in ((short, long), (long, short)):
        windows_module._around.cache_clear()
        first.active(now)
        assert not short.active(now)  # 02:00-02:10
        assert long.active(now)  # 02:00-03:00
        assert not paris.active(now)  # 01:00-02:00 UTC in winter
        assert paris.active(now - timedelta(hours=1))
        assert second.around(now) == (datetime(2026, 11, 26, 2, 0, tzinfo=UTC),
                                      datetime(2026, 11, 27, 2, 0, tzinfo=UTC))


@pytest.mark.parametrize("expression", [
    "0 0 1-31 * 1",  # every day of the month but Mondays restricted: either field fires
    "0 0 1-31 * *",
    "0 0 * * 0-6",
    "0 0 5 * 0-6",
    "0 0 * * 1",
    "0 0 5 * 1",
])
def test_a_cached_field_is_not_reused_in_another_context(expression: str) -> None:
    # every expression compiled in the same process, so each one's fields come from the cache
    # filled by the others
    for other in ("0 0 1-31 * 1", "0 0 1-31 * *", "0 0 * * 0-6", "0 0 5 * 0-6"):
        compile_cron(other)
    table = compile_cron(expression)
    assert table is not None
    wall = datetime(2026, 3, 1)
    for _ in range(40):
        expected = croniter(expression, wall).get_next(datetime)
        assert table.next_fire(wall) == expected, (expression, wall)
        wall = expected


def test_one_own_deny_window_per_resource_gets_what_its_whole_set_gives() -> None:
    # The planner's shortcut for a single own deny window (a freeze of one Service): the
    # Target's answer unless the window is active now or when the Target's windows open. Many
    # distinct windows (a minute and a duration of their own, as bench/sync_windows.py has
    # them) around those openings, some repeated so that parsing shares them, in random order.
    rng = random.Random("one own deny")
    target_windows = [
        [{"kind": "allow", "schedule": "0 2 * * 1-5", "duration": "2h",
          "timezone": "Europe/Paris"}, {"kind": "deny", "schedule": "0 0 24 12 *",
                                        "duration": "72h"}],
        [{"kind": "allow", "schedule": "30 */6 * * *", "duration": "1h",
          "timezone": "America/New_York"}],
        [{"kind": "deny", "schedule": "0 12 * * *", "duration": "3h"}],  # deny only
    ]
    resources: dict[ResourceKey, Resource] = {}
    for t, windows in enumerate(target_windows):
        target = Resource(ResourceKey("prod", "Target", f"t{t}"), {},
                          {"syncWindows": windows}, "t.yaml")
        resources[target.key] = target
    own = [{"kind": "deny", "schedule": f"{rng.randint(0, 59)} {rng.randint(0, 23)} * * *",
            "duration": rng.choice(["1m", "30m", "2h", "5h"]),
            "timezone": rng.choice(["UTC", "UTC", "Europe/Paris"])} for _ in range(80)]
    for i in range(300):
        window = dict(rng.choice(own))
        service = Resource(ResourceKey("prod", "Service", f"s{i}"), {},
                           {"target": f"t{rng.randrange(3)}", "syncWindows": [window]},
                           "s.yaml")
        resources[service.key] = service
    desired = DesiredState(resources, commit="c" * 40)
    nows = [datetime(2026, 11, 26, 12, 0, tzinfo=UTC)]  # the bench's time
    nows += [datetime(2026, 1, 1, tzinfo=UTC) + timedelta(minutes=rng.randint(0, 525_600))
             for _ in range(5)]
    nows += [datetime(2026, 12, 23, 23, 0, tzinfo=UTC)]  # just before the Christmas deny
    deferred = allowed_now = 0
    for now in nows:
        windows_module._around.cache_clear()
        view = Deferrals(desired, now)
        for key, resource in desired.resources.items():
            if key.kind == "Target":
                continue
            windows = view.windows_for(key, resource, None)
            reason, opens = view.decide(key, resource, None)
            expected = explain(windows, now)
            assert reason == expected, (key, now, windows)
            assert opens == (next_open(windows, now) if expected is not None else None), (
                key, now, windows)
            deferred += expected is not None
            allowed_now += expected is None
    assert deferred > 300 and allowed_now > 100  # both sides of the shortcut were asked


@pytest.mark.parametrize(("schedule", "duration"), [
    ("0 11 * * *", "1h"),  # ends exactly now: not active now
    ("0 11 * * *", "60m1s"),  # one second longer: active now
    ("0 1 * * *", "1h"),  # ends exactly when the Target's allow window opens
    ("0 1 * * *", "61m"),  # still active then: the change waits for its end
    ("0 2 * * *", "1s"),  # starts exactly when the Target's window opens
])
def test_an_own_deny_window_ending_or_starting_on_the_edge(schedule: str, duration: str) -> None:
    now = datetime(2026, 11, 26, 12, 0, tzinfo=UTC)
    target = Resource(ResourceKey("prod", "Target", "t"), {}, {"syncWindows": [
        {"kind": "allow", "schedule": "0 2 * * *", "duration": "2h"}]}, "t.yaml")
    services = [  # a shorter window on the same schedule asks first, and again after
        Resource(ResourceKey("prod", "Service", f"s{i}"), {}, {"target": "t", "syncWindows": [
            {"kind": "deny", "schedule": schedule, "duration": length}]}, "s.yaml")
        for i, length in enumerate(["1m", duration, "1m"])]
    desired = DesiredState({r.key: r for r in [target, *services]})
    view = Deferrals(desired, now)
    for service in services:
        windows = view.windows_for(service.key, service, None)
        assert view.decide(service.key, service, None) == (
            explain(windows, now), next_open(windows, now)), (schedule, duration)
