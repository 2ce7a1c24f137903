"""The narrow interface outcomes reach notifications through (``EventSink``), and its
implementation (``Notifications``): events in, one summary per destination out, off the pass.

The daemon calls the sink where outcomes are produced (the end of a pass, the drift check, a
refused commit); each call only turns outcomes into events and puts them on a bounded intake
queue. A task of its own picks destinations, holds back repeats, composes and queues messages
(``delivery.Deliveries``), and watches for a daemon that has not converged for too long.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from collections.abc import Awaitable, Callable, Collection, Mapping
from pathlib import Path
from typing import Protocol

from reconciler.notifications.delivery import Claims, Deliveries, DeliveryLimits, SendFn
from reconciler.notifications.destinations import Destination, Notifiers
from reconciler.notifications.digest import compose, select
from reconciler.notifications.events import (
    COMMITS,
    DAEMON,
    PROBLEMS,
    CommitInfo,
    Event,
    EventKind,
)
from reconciler.observe import metrics
from reconciler.rollout.outcome import CONVERGED, ReconcileResult
from reconciler.spec.durations import format_duration
from reconciler.spec.model import DesiredState, ResourceKey
from reconciler.state import store as st

log = logging.getLogger("reconciler.notifications")

_RESULTS = {st.SUCCEEDED: EventKind.SUCCEEDED, st.FAILED: EventKind.FAILED,
            st.ROLLED_BACK: EventKind.ROLLED_BACK, st.ROLLBACK_FAILED: EventKind.ROLLBACK_FAILED}
MAX_HOST_LOOKUPS = 20  # problem events per pass whose hosts are looked up


class EventSink(Protocol):
    """What the daemon tells about outcomes. Every method returns at once."""

    def pass_finished(self, result: ReconcileResult, desired: DesiredState, *,
                      healed: Collection[ResourceKey] = ()) -> None: ...

    def drift_detected(self, drifted: Mapping[ResourceKey, str],
                       desired: DesiredState) -> None: ...

    def desired_refused(self, commit: str, reason: str, message: str) -> None: ...


def events_of_pass(result: ReconcileResult, desired: DesiredState,
                   healed: Collection[ResourceKey] = (),
                   open_keys: Collection[ResourceKey] = ()) -> list[Event]:
    """The events of a pass: a deployment's end, a blocked revision, a deferred change.
    Unchanged resources give none (a no-op pass over a large fleet stays cheap), except those
    in ``open_keys`` (a destination was told of a problem of theirs): ``in_sync``."""
    commit = CommitInfo(result.commit) if result.commit else None
    events: list[Event] = []
    for o in result.outcomes:
        if o.result == CONVERGED and o.key in open_keys:
            events.append(Event(EventKind.IN_SYNC, str(o.key), o.key, (), (), commit,
                                outcome=f"{o.action} {o.result}", revision=o.revision))
            continue
        if o.result == CONVERGED or o.waiting:  # the bulk of a no-op pass: leave at once
            continue
        if o.action == "deferred":
            kind: EventKind | None = EventKind.DEFERRED
        elif o.action == "blocked" and o.result == "blocked":
            kind = EventKind.BLOCKED
        else:
            kind = _RESULTS.get(o.result)
            if kind is EventKind.SUCCEEDED and o.key in healed:
                kind = EventKind.DRIFT_HEALED
        if kind is None:
            continue
        resource = desired.get(o.key)
        labels = tuple(sorted(resource.labels.items())) if resource is not None else ()
        events.append(Event(kind, str(o.key), o.key, labels, (), commit,
                            outcome=f"{o.action} {o.result}", reason=o.message,
                            revision=o.revision))
    return events


class Notifications:
    """The ``EventSink`` of the daemon."""

    def __init__(self, operator: list[Destination], *, state_dir: Path | None,
                 ui_url: str | None = None, stale_after_s: float | None = None,
                 commit_info: Callable[[str], CommitInfo] | None = None,
                 hosts_of: Callable[[ResourceKey], Awaitable[list[str]]] | None = None,
                 last_error: Callable[[], str | None] | None = None,
                 limits: DeliveryLimits | None = None, send: SendFn | None = None,
                 claims: Claims | None = None, intake: int = 64) -> None:
        self.notifiers = Notifiers(operator)
        self.deliveries = Deliveries(state_dir / "notifications.json" if state_dir else None,
                                     limits=limits, send=send, claims=claims)
        self.ui_url = ui_url
        self.stale_after_s = stale_after_s
        self.commit_info = commit_info
        self.hosts_of = hosts_of
        self.last_error = last_error
        self.intake: asyncio.Queue[tuple[list[Event], DesiredState | None]] = \
            asyncio.Queue(intake)
        self.desired: DesiredState | None = None
        self.last_converged = time.monotonic()
        self.stale_told = False
        self._commits: dict[str, CommitInfo] = {}
        self._tasks: list[asyncio.Task[None]] = []
        self.deliveries.configure(self.notifiers.of(None))

    # -- EventSink ----------------------------------------------------------------------------
    def pass_finished(self, result: ReconcileResult, desired: DesiredState, *,
                      healed: Collection[ResourceKey] = ()) -> None:
        events = events_of_pass(result, desired, healed, self.deliveries.open_keys())
        if result.converged:
            self.last_converged = time.monotonic()
            if self.stale_told:
                self.stale_told = False
                events.append(Event(EventKind.CONVERGING, DAEMON,
                                    commit=CommitInfo(result.commit) if result.commit else None,
                                    reason="a pass converged"))
        self.tell(events, desired)

    def drift_detected(self, drifted: Mapping[ResourceKey, str],
                       desired: DesiredState) -> None:
        events = []
        for key, detail in drifted.items():
            resource = desired.get(key)
            labels = tuple(sorted(resource.labels.items())) if resource is not None else ()
            events.append(Event(EventKind.DRIFT_DETECTED, str(key), key, labels,
                                outcome="OutOfSync", reason=detail))
        self.tell(events, desired)

    def desired_refused(self, commit: str, reason: str, message: str) -> None:
        self.tell([Event(EventKind.REFUSED, COMMITS, commit=CommitInfo(commit),
                         outcome=reason, reason=message)], None)

    def tell(self, events: list[Event], desired: DesiredState | None) -> None:
        """Queue ``events`` for routing (never waits; dropped and counted when far behind)."""
        if not events and desired is None:
            return
        try:
            self.intake.put_nowait((events, desired))
        except asyncio.QueueFull:  # the router is far behind: say so, never wait
            for event in events:
                metrics.NOTIFICATIONS_TOTAL.labels("*", event.kind, "dropped").inc()
            log.error("notification events dropped: intake full", extra={"events": len(events)})

    # -- the task -------------------------------------------------------------------------------
    def start(self) -> None:
        self._tasks = [asyncio.create_task(self._route(), name="notify:route")]
        if self.stale_after_s:
            self._tasks.append(asyncio.create_task(self._watch(), name="notify:watch"))

    async def close(self, drain_s: float = 5.0) -> None:
        """Deliver what is queued for up to ``drain_s``; the rest stays in the state file."""
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(drain_s):
                await self.intake.join()
        await self.deliveries.drain(drain_s)
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self.deliveries.close()

    async def _route(self) -> None:
        while True:
            events, desired = await self.intake.get()
            try:
                await self.route(events, desired)
            except Exception as exc:  # a bug here must not end notifications for good
                log.error("notification routing failed", exc_info=exc)
            finally:
                self.intake.task_done()

    async def route(self, events: list[Event], desired: DesiredState | None) -> None:
        if desired is not None:
            self.desired = desired
        destinations = self.notifiers.of(self.desired)
        self.deliveries.configure(destinations)
        if not events or not destinations:
            return
        events = await self._complete(events)
        now = time.time()
        for dest in destinations:
            memory = self.deliveries.memory_of(dest)
            chosen, held = select(dest, events, memory, now)
            if held:
                metrics.NOTIFICATIONS_TOTAL.labels(dest.label, "repeat", "suppressed").inc(held)
            if chosen:
                message = compose(dest, chosen, message_id=uuid.uuid4().hex, now=now,
                                  ui_url=self.ui_url)
                self.deliveries.submit(message)

    async def _complete(self, events: list[Event]) -> list[Event]:
        """Commit subject and author, and the hosts of problem events (a few per pass)."""
        out = []
        lookups = 0
        for event in events:
            if event.commit is not None and self.commit_info is not None:
                event = Event(event.kind, event.subject, event.resource, event.labels,
                              event.hosts, await self._commit(event.commit.sha), event.outcome,
                              event.reason, event.revision)
            if (event.kind in PROBLEMS and event.resource is not None
                    and self.hosts_of is not None and lookups < MAX_HOST_LOOKUPS):
                lookups += 1
                with contextlib.suppress(Exception):
                    async with asyncio.timeout(2.0):
                        hosts = await self.hosts_of(event.resource)
                    event = event.with_hosts(tuple(hosts))
            out.append(event)
        return out

    async def _commit(self, sha: str) -> CommitInfo:
        info = self._commits.get(sha)
        if info is None:
            try:  # git reads in a thread: never on the event loop the passes share
                info = (await asyncio.to_thread(self.commit_info, sha) if self.commit_info
                        else CommitInfo(sha))
            except Exception:  # an unknown commit still has its SHA
                info = CommitInfo(sha)
            if len(self._commits) > 256:
                self._commits.clear()
            self._commits[sha] = info
        return info

    async def _watch(self) -> None:
        assert self.stale_after_s
        every = min(30.0, max(0.05, self.stale_after_s / 4))
        while True:
            await asyncio.sleep(every)
            idle = time.monotonic() - self.last_converged
            if idle >= self.stale_after_s:
                self.stale_told = True
                why = self.last_error() if self.last_error else None
                reason = f"no converged pass for {format_duration(round(idle))}"
                if why:
                    reason += f"; last error: {why}"
                self.tell([Event(EventKind.NOT_CONVERGING, DAEMON, outcome="not converged",
                                 reason=reason)], None)
