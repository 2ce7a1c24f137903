"""Which applied Services drifted, observed concurrently (``reconciler apply --live``).

One observation is a round trip to the Service's hosts; a fleet of 1,000 Services observed one
after another spent a whole round trip per Service before the pass could start. They are
observed at once, up to ``OBSERVE_CONCURRENCY`` in flight (the SSH transport further caps the
channels per host connection).
"""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING

from reconciler.errors import ReconcilerError
from reconciler.plan.planner import BLOCKED, UNCHANGED, PlanItem
from reconciler.spec.model import DesiredState, ResourceKey

if TYPE_CHECKING:
    from reconciler.rollout.engine import Reconciler

log = logging.getLogger("reconciler.rollout")

OBSERVE_CONCURRENCY = 64


async def drifted(engine: Reconciler, desired: DesiredState,
                  concurrency: int = OBSERVE_CONCURRENCY) -> set[ResourceKey]:
    """Applied Services, unchanged or blocked, whose live state differs from the record."""
    items = [item for item in (await engine.plan(desired)).items
             if item.action in (UNCHANGED, BLOCKED) and item.key.kind == "Service"
             and item.resource is not None and item.record is not None]
    slots = asyncio.Semaphore(max(1, concurrency))
    out: set[ResourceKey] = set()

    async def check(item: PlanItem) -> None:
        assert item.resource is not None and item.record is not None
        async with slots:
            try:
                if await engine.drift_of(item.resource, item.record, desired) is not None:
                    out.add(item.key)
            except ReconcilerError as exc:
                log.warning("observe failed", extra={"resource": str(item.key),
                                                     "error": exc.message})

    await asyncio.gather(*(check(i) for i in items))
    return out
