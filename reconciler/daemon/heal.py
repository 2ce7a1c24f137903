"""Self-heal: compare the live state of applied Services with their applied revision and ask the
daemon to redeploy what drifted."""

from __future__ import annotations

import asyncio
import logging
from datetime import UTC, datetime
from typing import Protocol

from reconciler.backoff import TIMER_FLOOR_S, jittered
from reconciler.daemon.config import DaemonConfig
from reconciler.errors import ReconcilerError, UnexpectedError
from reconciler.notifications.sink import EventSink
from reconciler.observe import metrics
from reconciler.rollout.drift import LooksByTarget
from reconciler.rollout.engine import Reconciler
from reconciler.spec.model import DesiredState, Resource, ResourceKey
from reconciler.state.store import ResourceRecord, Store

log = logging.getLogger("reconciler.daemon")


class HealedDaemon(Protocol):
    """What self-heal reads of the daemon (loop.py ``Daemon``) and asks of it."""

    @property
    def desired(self) -> DesiredState | None: ...

    @property
    def reconciling(self) -> bool: ...

    @property
    def stopping(self) -> bool: ...

    @property
    def passed(self) -> asyncio.Event: ...

    @property
    def events(self) -> EventSink | None: ...

    def queue_redeploy(self, keys: set[ResourceKey]) -> None: ...


class SelfHeal:
    """The self-heal checks of ``daemon``'s desired state; what drifted is queued for the next
    pass when ``--heal`` is on (else only reported)."""

    def __init__(self, daemon: HealedDaemon, cfg: DaemonConfig, engine: Reconciler,
                 store: Store) -> None:
        self._daemon = daemon
        self._cfg = cfg
        self._engine = engine
        self._store = store

    async def run(self) -> None:
        """Compare live state with the applied revision; redeploy what drifted (self-heal).

        The first check runs right after the first pass (instances that died while the daemon
        was down, e.g. a host reboot, are healed within seconds, not an interval later); then
        every ``--heal-interval``."""
        daemon = self._daemon
        await daemon.passed.wait()
        delay = 0.0
        while not daemon.stopping:
            await asyncio.sleep(delay)
            delay = jittered(self._cfg.heal_interval or self._cfg.interval, floor=TIMER_FLOOR_S)
            desired = daemon.desired
            if desired is None or daemon.reconciling:
                continue  # mid-pass, instances restarting on purpose are not drift
            drifted = await self.check(desired)
            await self._engine.close_retired_providers()  # a Target the check found edited
            if drifted and daemon.events is not None:
                daemon.events.drift_detected(drifted, desired)
            if drifted and self._cfg.heal:
                daemon.queue_redeploy(set(drifted))

    async def check(self, desired: DesiredState) -> dict[ResourceKey, str]:
        """One check of every applied Service this daemon owns: the drifted ones with what
        drifted; the statuses and the drift metric are updated. The Services are looked at
        concurrently, as ``apply``'s live look does (``LooksByTarget``: per Target, so a host's
        looks join one remote command where the provider batches them)."""
        drifted: dict[ResourceKey, str] = {}
        observed: list[ResourceKey] = []  # running as recorded: healthy, seen now
        # Two queries per pass, not two per Service: an idle daemon must stay cheap.
        records = {r.key: r for r in await self._store.list_resources(with_specs=False)}
        now = datetime.now(UTC)
        locked = {lock.name for lock in await self._store.list_locks()
                  if lock.expires_at > now}
        applied: dict[ResourceKey, ResourceRecord] = {}

        async def look(resource: Resource) -> None:
            try:
                detail = await self._engine.drift_of(resource, applied[resource.key], desired)
            except ReconcilerError as exc:
                log.warning("observe failed", extra={"resource": str(resource.key),
                                                     "error": exc.message})
                return
            except Exception as exc:  # one Service's observation must not end self-heal
                log.warning("observe failed unexpectedly", exc_info=exc,
                            extra={"resource": str(resource.key),
                                   "error": UnexpectedError.of(exc).message})
                return
            if detail is None:
                observed.append(resource.key)
            else:
                drifted[resource.key] = detail
                await self._store.update_status(resource.key, sync_status="OutOfSync",
                                                health_status="Degraded")
                log.warning("drift detected", extra={"resource": str(resource.key),
                                                     "detail": detail})

        looked_at = []
        for resource in desired.of_kind("Service"):
            if self._engine.owns is not None and not self._engine.owns(resource.key):
                continue
            record = records.get(resource.key)
            if record is None or record.applied_revision is None or record.suspended:
                continue
            if f"resource:{resource.key}" in locked:
                continue  # being deployed (by us or another reconciler)
            applied[resource.key] = record
            looked_at.append(resource)
        await LooksByTarget(self._engine, desired).run(looked_at, look)
        # one statement each, so `status` says how fresh the health it shows is
        await self._store.mark_observed(observed, "Healthy")
        await self._store.mark_observed(drifted)
        metrics.DRIFT_RESOURCES.set(len(drifted))
        return drifted
