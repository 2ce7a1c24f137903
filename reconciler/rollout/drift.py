"""Which applied Services drifted, observed concurrently (``reconciler apply --live``).

One observation is a round trip to the Service's hosts; a fleet of 1,000 Services observed one
after another spent a whole round trip per Service before the pass could start. They are
observed at once, as the pass rolls out: the limit follows the Targets (their hosts), not the
count of resources. Each Target has up to ``OBSERVE_CONCURRENCY`` observations in flight, or all
of its Services where its provider bounds and batches the looks at each host itself
(``host_batching``: the SSH provider joins a host's concurrent looks into one remote command);
``MAX_IN_FLIGHT`` in all. A limit over all resources in plan order (the plan sorts by Target)
looked at one or two of 20 one-host Targets at a time. The daemon's self-heal check looks the
same way (``LookSlots``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING

from reconciler.errors import ReconcilerError
from reconciler.plan.planner import BLOCKED, UNCHANGED, PlanItem
from reconciler.rollout.core import MAX_IN_FLIGHT
from reconciler.spec.model import DesiredState, Resource, ResourceKey

if TYPE_CHECKING:
    from reconciler.rollout.engine import Reconciler

log = logging.getLogger("reconciler.rollout")

OBSERVE_CONCURRENCY = 64  # per Target whose provider does not batch its looks per host


class LookSlots:
    """How many looks at applied Services may be in flight: up to ``concurrency`` per Target,
    all of a Target's where its provider batches the looks at each host (``host_batching``),
    ``MAX_IN_FLIGHT`` in all. Shared by ``apply``'s live look and the daemon's self-heal check."""

    def __init__(self, engine: Reconciler, desired: DesiredState,
                 concurrency: int = OBSERVE_CONCURRENCY) -> None:
        self._engine = engine
        self._desired = desired
        self._concurrency = max(1, concurrency)
        self._in_flight = asyncio.Semaphore(MAX_IN_FLIGHT)
        self._per_target: dict[ResourceKey | None, asyncio.Semaphore] = {}

    @contextlib.asynccontextmanager
    async def slot(self, resource: Resource) -> AsyncIterator[None]:
        # the Target's slot first: a Target at its limit holds none of the shared ones
        async with self._target_slot(resource), self._in_flight:
            yield

    def _target_slot(self, resource: Resource) -> asyncio.Semaphore:
        target = self._desired.target_of(resource)
        key = target.key if target is not None else None
        sem = self._per_target.get(key)
        if sem is None:
            batched = target is not None and _looks_batched(self._engine, target)
            sem = self._per_target[key] = asyncio.Semaphore(
                MAX_IN_FLIGHT if batched else self._concurrency)
        return sem


async def drifted(engine: Reconciler, desired: DesiredState,
                  concurrency: int = OBSERVE_CONCURRENCY) -> set[ResourceKey]:
    """Applied Services, unchanged or blocked, whose live state differs from the record."""
    items = [item for item in (await engine.plan(desired)).items
             if item.action in (UNCHANGED, BLOCKED) and item.key.kind == "Service"
             and item.resource is not None and item.record is not None]
    slots = LookSlots(engine, desired, concurrency)
    out: set[ResourceKey] = set()

    async def check(item: PlanItem) -> None:
        assert item.resource is not None and item.record is not None
        async with slots.slot(item.resource):
            try:
                if await engine.drift_of(item.resource, item.record, desired) is not None:
                    out.add(item.key)
            except ReconcilerError as exc:
                log.warning("observe failed", extra={"resource": str(item.key),
                                                     "error": exc.message})

    await asyncio.gather(*(check(i) for i in items))
    return out


def _looks_batched(engine: Reconciler, target: Resource) -> bool:
    """Whether the Target's provider joins concurrent looks at a host (``host_batching``)."""
    try:
        return engine.provider_for(target).capabilities.host_batching
    except ReconcilerError:  # a Target that cannot load: its observations fail, each says why
        return False
