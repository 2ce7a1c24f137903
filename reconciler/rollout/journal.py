"""Journal first, then act: every provider action of a deployment is a step written before it
runs and closed after, so a crash leaves an open step for recovery to close.
"""

from __future__ import annotations

from typing import Any

from reconciler.errors import ReconcilerError
from reconciler.observe.tracing import span
from reconciler.providers import Instance
from reconciler.rollout.core import EngineCore
from reconciler.rollout.outcome import DeploymentFailed


class Journal(EngineCore):
    """Every provider action of a deployment, journaled as a step around it."""

    async def step(self, deployment_id: str, action: str, instance: Instance,
                   operation: Any, detail: str = "") -> Any:
        """Journal first, then act: a crash between the two leaves an open step to recover."""
        if self.lost_leases:
            dep = await self.store.get_deployment(deployment_id)
            if dep is not None and f"resource:{dep.key}" in self.lost_leases:
                raise DeploymentFailed(f"{dep.key}: lease lost to another reconciler; "
                                       f"{action} not started")
        step = await self.store.start_step(deployment_id, action, instance.id, detail or None)
        try:
            with span(f"provider.{action}", instance=instance.id):
                value = await operation
        except BaseException as exc:
            message = exc.message if isinstance(exc, ReconcilerError) else type(exc).__name__
            await self.store.finish_step(step, "failed", message)
            raise
        await self.store.finish_step(step, "succeeded", detail or None)
        return value
