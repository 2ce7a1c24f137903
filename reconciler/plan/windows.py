"""Sync windows: when changes may be applied (Argo CD semantics).

A window is ``{kind: allow|deny, schedule: <5-field cron>, duration: <Go duration>, timezone:
<IANA name, default UTC>}``; it is *active* from each time its schedule fires (wall-clock time in
its zone) for ``duration`` of elapsed time. Windows are written on a Target (for every resource
on it, and the Target itself) and on a Service, Job or Schedule (for that resource; merged with
its Target's). A change may be applied at ``t`` when no deny window is active at ``t`` and either
there is no allow window or at least one allow window is active at ``t``: deny wins.

Time zones: a start that falls in a skipped hour (spring forward) happens when the clock jumps
(``30 2 * * *`` in Europe/Paris starts at 03:00 CEST that day), as cron does; a start in a
repeated hour (fall back) happens once, at the first occurrence. Durations are elapsed time, so
a 1h window over a DST change still lasts one hour.

Pure: no I/O, every function takes the time to evaluate at.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextvars import ContextVar
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from functools import lru_cache
from typing import Any
from zoneinfo import ZoneInfo

from reconciler.plan.cron_table import compile_cron, fires
from reconciler.spec.cron import cron_error, timezone_error
from reconciler.spec.durations import format_duration, parse_duration
from reconciler.spec.model import DesiredState, Resource, ResourceKey

ALLOW = "allow"
DENY = "deny"
KINDS = (ALLOW, DENY)
DEFAULT_TIMEZONE = "UTC"

# next_open gives up (None: "no window opens") after this many jumps or this far ahead: a deny
# window that is always active, or allow windows that never fire outside deny windows.
MAX_JUMPS = 500
HORIZON = timedelta(days=5 * 366)  # covers an allow window on February 29th

_TINY = timedelta(microseconds=1)

# Operator override (`reconciler apply --ignore-windows`): set around a pass, read by the planner.
_IGNORED: ContextVar[bool] = ContextVar("fraisier_ignore_sync_windows", default=False)


def windows_ignored() -> bool:
    return _IGNORED.get()


@contextlib.contextmanager
def ignoring_windows(ignore: bool = True) -> Iterator[None]:
    """Plans made inside (in this context and tasks created from it) ignore sync windows."""
    token = _IGNORED.set(ignore)
    try:
        yield
    finally:
        _IGNORED.reset(token)


def _aware(now: datetime) -> datetime:
    if now.tzinfo is UTC:  # the planner's own times: asked for every window of every resource
        return now
    if now.tzinfo is None or now.utcoffset() is None:
        raise ValueError("sync windows need a timezone-aware time, e.g. datetime.now(UTC)")
    return now.astimezone(UTC)


def iso(moment: datetime) -> str:
    """UTC, to the second: 2026-11-27T02:00:00+00:00."""
    return moment.astimezone(UTC).replace(microsecond=0).isoformat()


@dataclass(frozen=True, eq=False)  # identity: parsing shares equal windows
class SyncWindow:
    kind: str  # allow | deny
    schedule: str
    duration: timedelta
    timezone: str = DEFAULT_TIMEZONE
    zone: ZoneInfo = field(default=ZoneInfo(DEFAULT_TIMEZONE), compare=False, repr=False)
    # [generation of _around, the last answers of around]: kept on the window, which is
    # cheaper to reach than a table keyed by it (asked several times per resource in a plan)
    spans: list[Any] = field(default_factory=list, compare=False, repr=False)

    def describe(self) -> str:
        """``allow 0 2 * * * for 1h, Europe/Paris``"""
        return (f"{self.kind} {self.schedule} for "
                f"{format_duration(self.duration.total_seconds())}, {self.timezone}")

    def _start(self, naive: datetime) -> datetime:
        """The instant (UTC) a fire at local wall time ``naive`` happens: the first occurrence
        of a repeated time; the moment the clock jumps for a skipped one."""
        if self.timezone == "UTC":  # no gap, no repeated hour
            return naive.replace(tzinfo=UTC)
        first = naive.replace(tzinfo=self.zone, fold=0)
        instant = first.astimezone(UTC)
        if instant.astimezone(self.zone).replace(tzinfo=None) == naive:
            return instant
        # In a gap: the transition lies between the two readings of the wall time.
        low = naive.replace(tzinfo=self.zone, fold=1).astimezone(UTC)
        high = instant
        before = low.astimezone(self.zone).utcoffset()
        while high - low > timedelta(seconds=1):
            middle = low + (high - low) / 2
            if middle.astimezone(self.zone).utcoffset() == before:
                low = middle
            else:
                high = middle
        return high.replace(microsecond=0)

    def around(self, now: datetime) -> tuple[datetime, datetime]:
        """(latest start at or before ``now``, first start after ``now``), both UTC."""
        return _around(self, _aware(now))

    def uncached_around(self, now: datetime) -> tuple[datetime, datetime]:
        """``around`` computed from the cron schedule (``around`` caches it per window)."""
        wall = now.astimezone(self.zone).replace(tzinfo=None)
        table = compile_cron(self.schedule)
        fire = table.prev_fire(wall) if table is not None else None
        if table is None or fire is None:
            return self._croniter_around(now, wall)
        last = self._start(fire)
        while True:
            # Usually one step; more only inside a repeated (fall-back) hour, whose later wall
            # times already happened at their first occurrence.
            following = table.next_fire(fire)
            if following is None:
                return self._croniter_around(now, wall)
            fire = following
            start = self._start(fire)
            if start > now:
                return last, start
            last = start

    def _croniter_around(self, now: datetime, wall: datetime) -> tuple[datetime, datetime]:
        from croniter import croniter  # only for what the cron table does not model

        it = croniter(self.schedule, wall + _TINY)  # get_prev is strict: include ``wall``
        fire: datetime = it.get_prev(datetime)
        last = self._start(fire)
        while True:
            fire = it.get_next(datetime)
            start = self._start(fire)
            if start > now:
                return last, start
            last = start

    def active(self, now: datetime) -> bool:
        return self.active_until(now) is not None

    def active_until(self, now: datetime) -> datetime | None:
        """When the occurrence active at ``now`` ends (UTC), or None when it is not active."""
        now = _aware(now)
        last, _ = _around(self, now)
        end = last + self.duration
        return end if last <= now < end else None

    def next_start(self, now: datetime) -> datetime:
        """The first start strictly after ``now`` (UTC)."""
        return self.around(now)[1]


class _Spans:
    """Per window, the last few answers of ``around`` and the span of times each holds for:
    any time from that latest start up to (not including) the next start has the very same
    answer. croniter is the cost here (~0.3 ms a call); an evaluation asks about the same few
    times again and again (allowed, next_open, explain), and the planner asks for every changed
    resource."""

    KEEP = 8

    def __init__(self) -> None:
        self.generation = 0

    def __call__(self, window: SyncWindow, now: datetime) -> tuple[datetime, datetime]:
        memo = window.spans
        if not memo or memo[0] != self.generation:
            memo[:] = [self.generation, []]
        spans: list[tuple[datetime, datetime]] = memo[1]
        for span in spans:
            if span[0] <= now < span[1]:
                return span
        span = window.uncached_around(now)
        spans.append(span)
        if len(spans) > self.KEEP:
            del spans[0]
        return span

    def cache_clear(self) -> None:
        self.generation += 1


_around = _Spans()


def parse_window(raw: Mapping[str, Any]) -> SyncWindow:
    """One window from its YAML mapping; ValueError naming the bad field."""
    kind = raw.get("kind")
    if kind not in KINDS:
        raise ValueError(f"kind: {kind!r} is not one of 'allow', 'deny'")
    schedule = raw.get("schedule")
    # a schedule the cron table models and that fires is valid: croniter's check costs ~0.1 ms
    error = None if isinstance(schedule, str) and fires(schedule) else cron_error(schedule)
    if error:
        raise ValueError(f"schedule: {error}")
    assert isinstance(schedule, str)
    try:
        seconds = parse_duration(str(raw.get("duration", "")))
    except ValueError as exc:
        raise ValueError(f"duration: {exc}") from None
    if seconds <= 0:
        raise ValueError(f"duration: {raw.get('duration')!r} must be more than 0")
    timezone = raw.get("timezone", DEFAULT_TIMEZONE)
    error = timezone_error(timezone)
    if error:
        raise ValueError(f"timezone: {error}")
    assert isinstance(timezone, str)
    return SyncWindow(str(kind), schedule.strip(), timedelta(seconds=seconds), timezone,
                      ZoneInfo(timezone))


@lru_cache(maxsize=4096)
def _parse_cached(items: tuple[tuple[str, str, str, str], ...]) -> tuple[SyncWindow, ...]:
    return tuple(parse_window({"kind": k, "schedule": s, "duration": d, "timezone": z})
                 for k, s, d, z in items)


def windows_in(spec: Mapping[str, Any] | None) -> tuple[SyncWindow, ...]:
    """The parsed ``syncWindows`` of a spec (empty when it has none); parsed once per content."""
    raw = spec.get("syncWindows") if spec else None
    if not raw:
        return ()
    items = tuple((str(w.get("kind")), str(w.get("schedule")), str(w.get("duration")),
                   str(w.get("timezone", DEFAULT_TIMEZONE))) for w in raw)
    return _parse_cached(items)


def windows_of(resource: Resource, target: Resource | None) -> tuple[SyncWindow, ...]:
    """A resource's own windows merged with its Target's (a Target: its own)."""
    own = windows_in(resource.spec)
    if target is None or target is resource or resource.kind == "Target":
        return own
    return own + windows_in(target.spec)


def allowed(windows: Sequence[SyncWindow], now: datetime) -> bool:
    """Whether a change may be applied at ``now``: no deny active, and no allow window or one
    active."""
    if not windows:
        return True
    any_allow = False
    allow_active = False
    for window in windows:
        if window.kind == DENY:
            if window.active(now):
                return False
        else:
            any_allow = True
            if not allow_active and window.active(now):
                allow_active = True
    return allow_active or not any_allow


def next_open(windows: Sequence[SyncWindow], now: datetime) -> datetime | None:
    """The first time at or after ``now`` (UTC) changes are allowed; ``now`` itself when they
    are; None when none comes within ``HORIZON`` (e.g. a deny window that never ends)."""
    t = _aware(now)
    limit = t + HORIZON
    denies = [w for w in windows if w.kind == DENY]
    allows = [w for w in windows if w.kind == ALLOW]
    for _ in range(MAX_JUMPS):
        ends = [end for end in (w.active_until(t) for w in denies) if end is not None]
        if ends:
            t = max(ends)  # every deny window active now has ended by then
        elif allows and not any(w.active(t) for w in allows):
            t = min(w.next_start(t) for w in allows)
        else:
            return t
        if t > limit:
            return None
    return None


_UNKNOWN: Any = object()


def explain(windows: Sequence[SyncWindow], now: datetime,
            opens: datetime | None = _UNKNOWN) -> str | None:
    """Why a change cannot be applied at ``now`` (None when it can), with when it can be
    (``opens``: ``next_open(windows, now)`` when the caller has it already)."""
    if allowed(windows, now):
        return None
    if opens is _UNKNOWN:
        opens = next_open(windows, now)
    denying = [w for w in windows if w.kind == DENY and w.active(now)]
    if denying:
        detail = ", ".join(f"{w.describe()} is active" for w in denying)
    elif opens is not None:
        detail = ", ".join(w.describe() for w in windows if w.kind == ALLOW and w.active(opens))
    else:
        detail = "no allow window is active"
    if opens is None:
        return f"outside sync window: no opening found ahead ({detail})"
    return f"outside sync window: next opens {iso(opens)} ({detail})"


def deferral(resource: Resource, target: Resource | None, now: datetime) -> str | None:
    """Why a change to ``resource`` (on ``target``) is deferred at ``now``, or None."""
    windows = windows_of(resource, target)
    return explain(windows, now) if windows else None


class Deferrals:
    """The planner's view: one ``now``, Target windows parsed once, each distinct set of
    windows evaluated once (a fleet of 10,000 Services on three Targets evaluates three)."""

    def __init__(self, desired: DesiredState, now: datetime) -> None:
        self.desired = desired
        self.now = _aware(now)
        self._targets: dict[ResourceKey, tuple[SyncWindow, ...]] = {}
        self._env: dict[str, tuple[SyncWindow, ...]] = {}
        self._reasons: dict[tuple[SyncWindow, ...], str | None] = {}
        self._opens: dict[tuple[SyncWindow, ...], datetime | None] = {}

    def _target_windows(self, key: ResourceKey | None) -> tuple[SyncWindow, ...]:
        if key is None:
            return ()
        cached = self._targets.get(key)
        if cached is None:
            target = self.desired.resources.get(key)
            cached = windows_in(target.spec) if target is not None else ()
            self._targets[key] = cached
        return cached

    def environment_windows(self, environment: str) -> tuple[SyncWindow, ...]:
        """Every Target window of an environment: for a resource whose Target is not known."""
        cached = self._env.get(environment)
        if cached is None:
            cached = tuple(w for r in self.desired.resources.values()
                           if r.key.kind == "Target" and r.key.environment == environment
                           for w in self._target_windows(r.key))
            self._env[environment] = cached
        return cached

    def windows_for(self, key: ResourceKey, resource: Resource | None,
                    recorded_spec: Mapping[str, Any] | None) -> tuple[SyncWindow, ...]:
        """Windows governing a change to ``key``: a desired resource's own and its Target's;
        for one gone from git, those of its recorded spec, or, when that is not at hand, every
        Target window of its environment (deleting is never less guarded than deploying)."""
        if resource is not None:
            if resource.kind == "Target":
                return self._target_windows(resource.key)
            return windows_in(resource.spec) + self._target_windows(resource.target_key)
        spec = (recorded_spec or {}).get("spec") if recorded_spec else None
        if isinstance(spec, Mapping):
            if key.kind == "Target":
                return windows_in(spec)
            target = spec.get("target")
            target_key = (ResourceKey(key.environment, "Target", target)
                          if isinstance(target, str) else None)
            return windows_in(spec) + self._target_windows(target_key)
        return self.environment_windows(key.environment)

    def reason(self, windows: tuple[SyncWindow, ...]) -> str | None:
        if not windows:
            return None
        if windows not in self._reasons:
            self._reasons[windows] = None if allowed(windows, self.now) else explain(
                windows, self.now, self.next_open(windows))
        return self._reasons[windows]

    def next_open(self, windows: tuple[SyncWindow, ...]) -> datetime | None:
        if not windows:
            return self.now
        if windows not in self._opens:
            self._opens[windows] = next_open(windows, self.now)
        return self._opens[windows]


def earliest_open(desired: DesiredState, keys: Iterable[ResourceKey],
                  now: datetime) -> datetime | None:
    """When the first of ``keys`` (deferred resources) may be applied: the daemon wakes then
    rather than at its next poll. None when none of them has a window that opens."""
    view = Deferrals(desired, now)
    best: datetime | None = None
    seen: set[tuple[SyncWindow, ...]] = set()
    for key in keys:
        windows = view.windows_for(key, desired.resources.get(key), None)
        if not windows or windows in seen:
            continue
        seen.add(windows)
        opens = next_open(windows, view.now)
        if opens is not None and (best is None or opens < best):
            best = opens
    return best
