"""Applied Schedules run by the daemon when their cron expression fires (the local process
supervisor); a platform that fires them itself (systemd timers) is left to do so."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from reconciler.errors import ReconcilerError, UnexpectedError
from reconciler.rollout.engine import Reconciler
from reconciler.spec.cron import next_fire
from reconciler.spec.model import DesiredState, ResourceKey
from reconciler.state.store import Store

log = logging.getLogger("reconciler.daemon")


class Scheduler:
    """Checks every second which Schedules of the desired state are due and starts their runs.

    ``desired()`` is the daemon's current desired state; ``stopping()`` ends the checks."""

    def __init__(self, engine: Reconciler, store: Store,
                 desired: Callable[[], DesiredState | None],
                 stopping: Callable[[], bool]) -> None:
        self._engine = engine
        self._store = store
        self._desired = desired
        self._stopping = stopping
        self._next: dict[ResourceKey, datetime] = {}
        self._running: dict[ResourceKey, asyncio.Task[Any]] = {}

    async def run(self) -> None:
        """Run applied Schedules when their cron expression fires (local process supervisor)."""
        while not self._stopping():
            await asyncio.sleep(1.0)
            desired = self._desired()
            if desired is None:
                continue
            now = datetime.now(UTC)
            for resource in desired.of_kind("Schedule"):
                try:
                    await self._tick(resource, desired, now)
                except Exception as exc:  # one Schedule must not stop the others' runs
                    log.error("schedule check failed", exc_info=exc,
                              extra={"resource": str(resource.key),
                                     **(exc.log_fields() if isinstance(exc, ReconcilerError)
                                        else UnexpectedError.of(exc).log_fields())})

    async def finish_runs(self, grace_s: float) -> None:
        """Let the runs still going finish (each gets ``grace_s`` seconds) before shutdown."""
        for task in list(self._running.values()):
            with contextlib.suppress(asyncio.CancelledError, Exception):
                async with asyncio.timeout(grace_s):
                    await task

    async def _tick(self, resource: Any, desired: DesiredState, now: datetime) -> None:
        """Start a run of ``resource`` if its schedule fired (and nothing forbids it)."""
        key = resource.key
        if self._engine.owns is not None and not self._engine.owns(key):
            return
        expr = resource.spec["schedule"]  # a cron string or {calendar: EXPR}
        tz = str(resource.spec.get("timezone", "UTC"))
        due = self._next.get(key)
        if due is None:
            self._next[key] = next_fire(expr, now, tz)
            return
        if now < due:
            return
        self._next[key] = next_fire(expr, now, tz)
        record = await self._store.get_resource(key)
        if record is None or record.suspended or record.applied_revision is None:
            return
        running = self._running.get(key)
        if running is not None and not running.done():
            if resource.spec.get("concurrencyPolicy", "Forbid") == "Forbid":
                log.warning("previous run still going; skipped",
                            extra={"resource": str(key)})
                return
        target = desired.target_of(resource)
        if target is None:
            return
        if self._engine.provider_for(target).capabilities.schedules_natively:
            return  # e.g. a systemd timer on the host fires it, not this daemon
        self._running[key] = asyncio.create_task(self._run_once(resource, target, record))

    async def _run_once(self, resource: Any, target: Any, record: Any) -> None:
        try:
            await self._engine.run_schedule(resource, target, record)
        except ReconcilerError as exc:
            log.error("schedule run failed", extra={"resource": str(resource.key),
                                                    **exc.log_fields()})
        except Exception as exc:
            log.error("schedule run failed unexpectedly", exc_info=exc,
                      extra={"resource": str(resource.key),
                             **UnexpectedError.of(exc).log_fields()})
