"""Crash recovery: deployments a crash left open are closed as cancelled at the interrupted step;
the next plan deploys the desired revision again.
"""

from __future__ import annotations

import logging

from reconciler.rollout.core import EngineCore
from reconciler.rollout.leases import owner_alive
from reconciler.spec.model import ResourceKey
from reconciler.state import store as st

log = logging.getLogger("reconciler.rollout")


class Recovery(EngineCore):
    """Closing the deployments a crash left open."""

    async def recover(self) -> list[ResourceKey]:
        """Close deployments a crash left open. They are marked ``cancelled`` with the step that
        was interrupted; the resource keeps its last applied revision, so the next plan deploys
        the desired one again (resume) — or, if it is gone from git, prunes/orphans it."""
        resumed: list[ResourceKey] = []
        for dep in await self.store.unfinished_deployments():
            if self.owns is not None and not self.owns(dep.key):
                continue  # another replica's shard
            running = self.rollouts.get(dep.key)
            if running is not None and not running.done():
                continue  # our own detached rollout (a paused canary), alive and well
            holder = await self.store.lock_owner(f"resource:{dep.key}")
            if holder is not None and holder != self.owner:
                if owner_alive(holder) is not False:
                    continue  # a live reconciler (or an unexpired remote lease) is on it
                await self.store.release_lock(f"resource:{dep.key}", holder)
            open_steps = [s for s in dep.steps if s.finished_at is None]
            for step in open_steps:
                await self.store.finish_step(step.id, "interrupted", "reconciler stopped")
            where = open_steps[-1].action if open_steps else "before the first step"
            await self.store.transition(
                dep.id, st.CANCELLED,
                message=f"interrupted during {where}; resumed by the next reconcile",
            )
            await self.store.update_status(dep.key, last_result=st.CANCELLED,
                                           last_error=f"interrupted during {where}")
            log.warning("recovered interrupted deployment",
                        extra={"resource": str(dep.key), "deployment": dep.identifier})
            resumed.append(dep.key)
        return resumed
