"""Which applied Services drifted, observed concurrently (``reconciler apply --live``).

One observation is a round trip to the Service's hosts; a fleet of 1,000 Services observed one
after another spent a whole round trip per Service before the pass could start. They are
observed at once, as the pass rolls out: the limit follows the Targets (their hosts), not the
count of resources. Each Target has up to ``OBSERVE_CONCURRENCY`` observations in flight, or all
of its Services where its provider bounds and batches the looks at each host itself
(``host_batching``: the SSH provider joins a host's concurrent looks into one remote command);
about ``MAX_IN_FLIGHT`` in all. A limit over all resources in plan order (the plan sorts by
Target) looked at one or two of 20 one-host Targets at a time. The daemon's self-heal check
looks the same way (``LooksByTarget``).
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Awaitable, Callable, Iterable
from typing import TYPE_CHECKING

from reconciler.errors import ReconcilerError
from reconciler.plan.planner import BLOCKED, UNCHANGED
from reconciler.rollout.core import MAX_IN_FLIGHT
from reconciler.spec.model import DesiredState, Resource, ResourceKey

if TYPE_CHECKING:
    from reconciler.rollout.engine import Reconciler

log = logging.getLogger("reconciler.rollout")

OBSERVE_CONCURRENCY = 64  # per Target whose provider does not batch its looks per host


class LooksByTarget:
    """Looks at applied Services, as many at once as their Targets allow: up to ``concurrency``
    per Target, all of a Target's where its provider batches the looks at each host
    (``host_batching``), every Target at once, about ``MAX_IN_FLIGHT`` in all. Each Target's
    Services are taken in turn by a few workers, so a look at 50,000 Services holds that many
    workers, not 50,000 tasks. Shared by ``apply``'s live look and the daemon's self-heal
    check."""

    def __init__(self, engine: Reconciler, desired: DesiredState,
                 concurrency: int = OBSERVE_CONCURRENCY) -> None:
        self._engine = engine
        self._desired = desired
        self._concurrency = max(1, concurrency)

    async def run(self, resources: Iterable[Resource],
                  look: Callable[[Resource], Awaitable[None]]) -> None:
        """``look`` at each of ``resources`` (``look`` says what went wrong itself)."""
        queues: dict[ResourceKey | None, deque[Resource]] = {}
        limits: dict[ResourceKey | None, int] = {}
        for resource in resources:
            target = self._desired.target_of(resource)
            key = target.key if target is not None else None
            if key not in queues:
                queues[key] = deque()
                batched = target is not None and _looks_batched(self._engine, target)
                limits[key] = MAX_IN_FLIGHT if batched else self._concurrency
            queues[key].append(resource)
        wanted = {key: min(len(queue), limits[key]) for key, queue in queues.items()}
        total = sum(wanted.values())
        if total > MAX_IN_FLIGHT:  # shared out, at least one worker per Target
            wanted = {key: max(1, n * MAX_IN_FLIGHT // total) for key, n in wanted.items()}

        async def worker(queue: deque[Resource]) -> None:
            while queue:
                await look(queue.popleft())

        await asyncio.gather(*(worker(queues[key]) for key, n in wanted.items()
                               for _ in range(n)))


async def drifted(engine: Reconciler, desired: DesiredState,
                  concurrency: int = OBSERVE_CONCURRENCY) -> set[ResourceKey]:
    """Applied Services, unchanged or blocked, whose live state differs from the record."""
    items = [item for item in (await engine.plan(desired)).items
             if item.action in (UNCHANGED, BLOCKED) and item.key.kind == "Service"
             and item.resource is not None and item.record is not None]
    records = {item.key: item.record for item in items if item.record is not None}
    out: set[ResourceKey] = set()

    async def check(resource: Resource) -> None:
        try:
            if await engine.drift_of(resource, records[resource.key], desired) is not None:
                out.add(resource.key)
        except ReconcilerError as exc:
            log.warning("observe failed", extra={"resource": str(resource.key),
                                                 "error": exc.message})

    await LooksByTarget(engine, desired, concurrency).run(
        [item.resource for item in items if item.resource is not None], check)
    return out


def _looks_batched(engine: Reconciler, target: Resource) -> bool:
    """Whether the Target's provider joins concurrent looks at a host (``host_batching``)."""
    try:
        return engine.provider_for(target).capabilities.host_batching
    except ReconcilerError:  # a Target that cannot load: its observations fail, each says why
        return False
