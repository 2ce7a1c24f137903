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
from typing import TYPE_CHECKING, Any

from reconciler.spec.cron import cron_error, timezone_error
from reconciler.spec.durations import format_duration, parse_duration
from reconciler.spec.model import DesiredState, Resource, ResourceKey

if TYPE_CHECKING:
    from zoneinfo import ZoneInfo

ALLOW = "allow"
DENY = "deny"
KINDS = (ALLOW, DENY)
DEFAULT_TIMEZONE = "UTC"

# next_open gives up (None: "no window opens") after this many jumps or this far ahead: a deny
# window that is always active, or allow windows that never fire outside deny windows.
MAX_JUMPS = 500
HORIZON = timedelta(days=5 * 366)  # covers an allow window on February 29th

_TINY = timedelta(microseconds=1)
_NOTHING = timedelta(0)

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


def _zone(name: str) -> ZoneInfo:
    # zoneinfo (and the cron tables) are imported when a window is parsed or evaluated: a
    # fleet without sync windows needs neither (docs/performance.md, session 11)
    from zoneinfo import ZoneInfo

    return ZoneInfo(name)


def iso(moment: datetime) -> str:
    """UTC, to the second: 2026-11-27T02:00:00+00:00."""
    return moment.astimezone(UTC).replace(microsecond=0).isoformat()


# identity: parsing shares equal windows. Not frozen: a frozen dataclass's __init__ sets each
# field through object.__setattr__, which was the largest cost of parsing a window per Service;
# the slots make it cheaper still. Windows are shared, so nothing assigns to one after parsing.
@dataclass(eq=False, slots=True)
class SyncWindow:
    kind: str  # allow | deny
    schedule: str
    duration: timedelta
    timezone: str = DEFAULT_TIMEZONE
    zone: ZoneInfo = field(default_factory=lambda: _zone(DEFAULT_TIMEZONE), repr=False)
    # [generation of _around, the last answers of around]: kept on the window, which is
    # cheaper to reach than a table keyed by it (asked several times per resource in a plan);
    # shared by every window with the same schedule and zone (``around`` depends on nothing else)
    spans: list[Any] = field(default_factory=list, repr=False)

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
        from reconciler.plan.cron_table import compile_cron

        now = _aware(now)
        table = compile_cron(self.schedule)
        if table is not None and self.timezone == "UTC":
            # no zone to convert to and no DST: the fires around ``now`` are the starts
            last, following = table.prev_fire(now), table.next_fire(now)
            if last is not None and following is not None:
                return last, following
        wall = now.astimezone(self.zone).replace(tzinfo=None)
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


def _active_end(window: SyncWindow, now: datetime) -> datetime | None:
    """``window.active_until(now)`` for a ``now`` already in UTC; the window's memo of spans
    read here first (the planner asks this twice for every resource with windows of its own)."""
    memo = window.spans
    if memo and memo[0] == _around.generation:
        for last, following in memo[1]:
            if last <= now < following:
                break
        else:
            last = _around(window, now)[0]
    else:
        last = _around(window, now)[0]
    end = last + window.duration
    return end if last <= now < end else None


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


@lru_cache(maxsize=1024)
def _window_duration(text: str) -> timedelta:
    """A window's duration; ValueError naming the field (parsed once per spelling)."""
    try:
        return timedelta(seconds=parse_duration(text))
    except ValueError as exc:
        raise ValueError(f"duration: {exc}") from None


@lru_cache(maxsize=16384)
def _when(schedule: str, timezone: str) -> tuple[str | None, str | None, str, ZoneInfo | None,
                                                  list[Any]]:
    """What a window's schedule and zone give, checked once per pair: (the schedule's error,
    the zone's error, the schedule stripped, the zone, the memo of ``around`` answers shared
    by every window firing on that schedule in that zone — windows that differ only in kind or
    duration ask the cron table once between them)."""
    from reconciler.plan.cron_table import fires

    # a schedule the cron table models and that fires is valid: croniter's check costs ~0.1 ms
    schedule_error = None if fires(schedule) else cron_error(schedule)
    zone_error = timezone_error(timezone)
    return (schedule_error, zone_error, schedule.strip(),
            None if zone_error else _zone(timezone), [])


def parse_window(raw: Mapping[str, Any]) -> SyncWindow:
    """One window from its YAML mapping; ValueError naming the bad field."""
    return _window(raw.get("kind"), raw.get("schedule"), raw.get("duration", ""),
                   raw.get("timezone", DEFAULT_TIMEZONE))


def _window(kind: Any, schedule: Any, duration_text: Any, timezone: Any) -> SyncWindow:
    """``parse_window`` of the fields of a window."""
    if kind != ALLOW and kind != DENY:
        raise ValueError(f"kind: {kind!r} is not one of 'allow', 'deny'")
    if not isinstance(schedule, str):
        raise ValueError(f"schedule: {cron_error(schedule)}")
    named = isinstance(timezone, str)
    schedule_error, zone_error, stripped, zone, spans = _when(
        schedule, timezone if named else DEFAULT_TIMEZONE)
    if schedule_error:
        raise ValueError(f"schedule: {schedule_error}")
    duration = _window_duration(str(duration_text))
    if duration <= _NOTHING:
        raise ValueError(f"duration: {duration_text!r} must be more than 0")
    if not named or zone is None:
        raise ValueError(f"timezone: {zone_error if named else timezone_error(timezone)}")
    return SyncWindow(kind, stripped, duration, timezone, zone, spans)


# The parsed windows of each content of ``syncWindows`` seen (a plain dict: an lru_cache's miss
# and insertion cost more than parsing a window); emptied when it reaches PARSED_KEEP.
_parsed: dict[Any, tuple[SyncWindow, ...]] = {}
PARSED_KEEP = 16384


def _fields(window: Mapping[str, Any]) -> tuple[Any, Any, Any, Any]:
    return (window.get("kind"), window.get("schedule"), window.get("duration"),
            window.get("timezone", DEFAULT_TIMEZONE))


def windows_in(spec: Mapping[str, Any] | None) -> tuple[SyncWindow, ...]:
    """The parsed ``syncWindows`` of a spec (empty when it has none); parsed once per content."""
    raw = spec.get("syncWindows") if spec else None
    if not raw:
        return ()
    # the key: the fields as written, of the one window most specs have, or of each window
    if len(raw) == 1:
        window = raw[0]
        key: Any = (window.get("kind"), window.get("schedule"), window.get("duration"),
                    window.get("timezone", DEFAULT_TIMEZONE))
    else:
        key = tuple([_fields(window) for window in raw])
    try:
        parsed = _parsed.get(key)
    except TypeError:  # a field that is a list or a mapping: no key; the schema refuses those
        return _parse(raw)
    if parsed is None:
        if len(_parsed) >= PARSED_KEEP:
            _parsed.clear()
        parsed = _parsed[key] = (
            (_window(str(key[0]), str(key[1]), str(key[2]), str(key[3])),) if len(raw) == 1
            else _parse(raw))
    return parsed


def _parse(raw: Iterable[Mapping[str, Any]]) -> tuple[SyncWindow, ...]:
    # every field as text, as the YAML of a valid window has it (and says so in its errors)
    return tuple([_window(str(window.get("kind")), str(window.get("schedule")),
                          str(window.get("duration")),
                          str(window.get("timezone", DEFAULT_TIMEZONE))) for window in raw])


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
    windows evaluated once (a fleet of 10,000 Services on three Targets evaluates three).

    A resource's windows are its own and its Target's (``shared``, the same for every resource
    on that Target). When its own are all deny windows (the usual case: a freeze of one
    Service), the Target's part is judged once per Target and only the resource's own windows
    are asked about per resource: when the Target's windows next open, whether one of its own
    denies is active then (``_own_denies_open``). A single own deny window that is active
    neither now nor then gets the Target's answer: told by its duration alone, against the
    time since its schedule's latest start at each of the two (``_slack``, once per schedule
    and Target). Any other set is judged whole."""

    # how many times a resource's own deny windows may push the Target's opening later before
    # the whole set is searched the generic way (``next_open``)
    OWN_STEPS = 8

    def __init__(self, desired: DesiredState, now: datetime) -> None:
        self.desired = desired
        self.now = _aware(now)
        self._limit = self.now + HORIZON
        # each Target's windows, by (environment, name): asked for every resource on it
        self._targets: dict[tuple[str, str], tuple[SyncWindow, ...]] = {}
        self._env: dict[str, tuple[SyncWindow, ...]] = {}
        self._reasons: dict[tuple[SyncWindow, ...], str | None] = {}
        self._opens: dict[tuple[SyncWindow, ...], datetime | None] = {}
        self._decided: dict[tuple[tuple[SyncWindow, ...], tuple[SyncWindow, ...]],
                            tuple[str | None, datetime | None]] = {}
        # per shared (Target) set: allowed at now, its deny windows active now, its opening
        self._shared_now: dict[tuple[SyncWindow, ...],
                               tuple[bool, list[str], datetime | None]] = {}
        # per shared set: (``_usual_answer``, {(schedule, zone): ``_slack``})
        self._usual: dict[tuple[SyncWindow, ...],
                          tuple[tuple[str | None, datetime | None] | None,
                                dict[tuple[str, str], timedelta]]] = {}
        self._shared_open: dict[tuple[tuple[SyncWindow, ...], datetime], datetime | None] = {}
        self._allow_detail: dict[tuple[tuple[SyncWindow, ...], datetime], str] = {}
        # the reason of a resource waiting for its shared windows' opening, per opening
        self._waiting: dict[tuple[tuple[SyncWindow, ...], datetime], str] = {}

    def _target_windows(self, key: ResourceKey | None) -> tuple[SyncWindow, ...]:
        return () if key is None else self._named_target_windows(key[0], key[2])

    def _named_target_windows(self, environment: str, name: str) -> tuple[SyncWindow, ...]:
        cached = self._targets.get((environment, name))
        if cached is None:
            target = self.desired.resources.get(ResourceKey(environment, "Target", name))
            cached = windows_in(target.spec) if target is not None else ()
            self._targets[(environment, name)] = cached
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

    def _parts(self, key: ResourceKey, resource: Resource | None,
               recorded_spec: Mapping[str, Any] | None,
               ) -> tuple[tuple[SyncWindow, ...], tuple[SyncWindow, ...]]:
        """(the resource's own windows, its Target's or its environment's): see
        ``windows_for``."""
        if resource is not None:
            if resource.kind == "Target":
                return (), self._target_windows(resource.key)
            return windows_in(resource.spec), self._target_windows(resource.target_key)
        spec = (recorded_spec or {}).get("spec") if recorded_spec else None
        if isinstance(spec, Mapping):
            if key.kind == "Target":
                return (), windows_in(spec)
            target = spec.get("target")
            target_key = (ResourceKey(key.environment, "Target", target)
                          if isinstance(target, str) else None)
            return windows_in(spec), self._target_windows(target_key)
        return (), self.environment_windows(key.environment)

    def windows_for(self, key: ResourceKey, resource: Resource | None,
                    recorded_spec: Mapping[str, Any] | None) -> tuple[SyncWindow, ...]:
        """Windows governing a change to ``key``: a desired resource's own and its Target's;
        for one gone from git, those of its recorded spec, or, when that is not at hand, every
        Target window of its environment (deleting is never less guarded than deploying)."""
        own, shared = self._parts(key, resource, recorded_spec)
        return own + shared

    def decide(self, key: ResourceKey, resource: Resource | None,
               recorded_spec: Mapping[str, Any] | None,
               ) -> tuple[str | None, datetime | None]:
        """(why a change to ``key`` is deferred now, when its windows next open), or
        (None, None) when it may be applied now: ``explain`` and ``next_open`` of
        ``windows_for(...)``, the same answers."""
        if resource is not None and resource.key[1] != "Target":  # ``_parts``, the usual case
            spec = resource.spec
            own = windows_in(spec)
            name = spec.get("target")  # what ``resource.target_key`` names, without the key
            shared: tuple[SyncWindow, ...] = ()
            if isinstance(name, str):
                environment = resource.key[0]
                cached = self._targets.get((environment, name))
                shared = (cached if cached is not None
                          else self._named_target_windows(environment, name))
        else:
            own, shared = self._parts(key, resource, recorded_spec)
        generic = not own or not shared
        for window in own:
            if window.kind != DENY:
                generic = True
        if generic:
            windows = own + shared
            reason = self.reason(windows)
            return reason, (self.next_open(windows) if reason is not None else None)
        if len(own) == 1:
            # one own deny window (a freeze of one Service): when it is active neither now nor
            # when the shared windows open, the answer is theirs, the same for every resource.
            # Whether it is: its duration against its schedule's slack (below), the same for
            # every window on that schedule; keeping an answer per resource would cost more.
            usual = self._usual.get(shared)
            if usual is None:
                usual = self._usual[shared] = (self._usual_answer(shared), {})
            answer, slacks = usual
            if answer is not None:
                window = own[0]
                when = (window.schedule, window.timezone)
                slack = slacks.get(when)
                if slack is None:
                    slack = slacks[when] = self._slack(window, answer[1])
                if window.duration <= slack:
                    return answer
        decided = self._decided.get((own, shared))
        if decided is None:
            decided = self._decided[(own, shared)] = self._own_denies(own, shared)
        return decided

    def _own_denies(self, own: tuple[SyncWindow, ...], shared: tuple[SyncWindow, ...],
                    ) -> tuple[str | None, datetime | None]:
        """``decide`` for own windows that are all deny windows, the shared part judged once."""
        now = self.now
        own_active = [w for w in own if _active_end(w, now) is not None]
        shared_allowed, shared_denying, shared_opens = self._shared_at_now(shared)
        if shared_allowed and not own_active:
            return None, None
        opens = self._own_denies_open(own, shared, shared_opens)
        if opens is not None and not own_active and not shared_denying:
            return self._waiting_for(shared, opens), opens
        # the text of ``explain(own + shared, now, opens)``: own windows come first
        if own_active or shared_denying:
            detail = ", ".join([f"{w.describe()} is active" for w in own_active]
                               + shared_denying)
        elif opens is not None:
            detail = self._allows_active_at(shared, opens)
        else:
            detail = "no allow window is active"
        if opens is None:
            return f"outside sync window: no opening found ahead ({detail})", None
        return f"outside sync window: next opens {iso(opens)} ({detail})", opens

    def _slack(self, window: SyncWindow, opens: datetime | None) -> timedelta:
        """The longest duration a window on ``window``'s schedule and zone may have and be
        active neither now nor at ``opens`` (when not None): the time since its latest start
        at or before each (a window is active at t when t - that start < its duration)."""
        now = self.now
        slack = now - _around(window, now)[0]
        if opens is not None:
            slack = min(slack, opens - _around(window, opens)[0])
        return slack

    def _usual_answer(self, shared: tuple[SyncWindow, ...],
                      ) -> tuple[str | None, datetime | None] | None:
        """``decide``'s answer for own deny windows active neither now nor at the shared
        windows' next opening: (None, None) when the shared windows allow now, the wait for
        their opening when none of their deny windows is active now; None otherwise (judged
        whole)."""
        shared_allowed, shared_denying, shared_opens = self._shared_at_now(shared)
        if shared_allowed:
            return None, None
        if shared_denying or shared_opens is None or shared_opens > self._limit:
            return None
        return self._waiting_for(shared, shared_opens), shared_opens

    def _waiting_for(self, shared: tuple[SyncWindow, ...], opens: datetime) -> str:
        """The usual deferral: waiting for an allow window, the same text for every resource
        that waits for the same opening."""
        key = (shared, opens)
        text = self._waiting.get(key)
        if text is None:
            text = self._waiting[key] = (f"outside sync window: next opens {iso(opens)} "
                                         f"({self._allows_active_at(shared, opens)})")
        return text

    def _shared_at_now(self, shared: tuple[SyncWindow, ...],
                       ) -> tuple[bool, list[str], datetime | None]:
        """(whether the shared windows allow now, those of their deny windows active now,
        when they next allow)."""
        cached = self._shared_now.get(shared)
        if cached is None:
            cached = (allowed(shared, self.now),
                      [f"{w.describe()} is active" for w in shared
                       if w.kind == DENY and w.active(self.now)],
                      self._shared_open_from(shared, self.now))
            self._shared_now[shared] = cached
        return cached

    def _shared_open_from(self, shared: tuple[SyncWindow, ...], t: datetime) -> datetime | None:
        key = (shared, t)
        if key in self._shared_open:
            return self._shared_open[key]
        opens = self._shared_open[key] = next_open(shared, t)
        return opens

    def _allows_active_at(self, shared: tuple[SyncWindow, ...], moment: datetime) -> str:
        cached = self._allow_detail.get((shared, moment))
        if cached is None:
            cached = ", ".join(w.describe() for w in shared if w.kind == ALLOW and w.active(moment))
            self._allow_detail[(shared, moment)] = cached
        return cached

    def _own_denies_open(self, own: tuple[SyncWindow, ...], shared: tuple[SyncWindow, ...],
                         shared_opens: datetime | None) -> datetime | None:
        """``next_open(own + shared, now)`` for own windows that are all deny windows, given
        ``shared_opens``, the shared windows' next opening from now: the first time the shared
        windows allow at which none of the own is active. Both searches only step over times
        that are not open, so both find the first open time."""
        t = shared_opens
        for _ in range(self.OWN_STEPS):
            if t is None:
                break  # the shared part gave up from there: leave the answer to the whole set
            if t > self._limit:
                return None
            latest = None
            for window in own:
                end = _active_end(window, t)
                if end is not None and (latest is None or end > latest):
                    latest = end
            if latest is None:
                return t
            t = self._shared_open_from(shared, latest)
        return next_open(own + shared, self.now)

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
