"""The health gate of one instance: its probes (where the instance runs) or, with none, the
provider's own signal; journaled as a ``health`` step.
"""

from __future__ import annotations

import time
from typing import Any

from reconciler.health import wait_healthy
from reconciler.observe import metrics
from reconciler.observe.tracing import span
from reconciler.providers import Instance, Provider
from reconciler.rollout.core import EngineCore
from reconciler.rollout.strategies import health_for
from reconciler.spec.model import Resource


class Gate(EngineCore):
    """The health gate of one instance."""

    async def health_gate(self, deployment_id: str, provider: Provider, resource: Resource,
                          instance: Instance) -> tuple[bool, str]:
        health = health_for(resource, instance)
        step = await self.store.start_step(deployment_id, "health", instance.id)
        started = time.monotonic()

        one = getattr(provider, "observe_instance", None)

        async def observed() -> Any:
            if one is not None:  # providers that can look at a single instance (one host)
                return await one(resource, instance)
            states = {s.instance.id: s for s in await provider.observe(resource)}
            return states.get(instance.id)

        async def is_running() -> bool:
            state = await observed()
            return bool(state and state.running)

        with span("health_gate", resource=str(resource.key), instance=instance.id):
            if health:
                state = await observed()
                cwd = state.facts.get("working_dir") if state is not None else None
                # exec probes run where the instance is (providers with remote hosts say how)
                transport_for = getattr(provider, "transport_for", None)
                transport = transport_for(instance) if transport_for is not None else None
                result = await wait_healthy(health, instance, transport=transport, cwd=cwd,
                                            is_running=is_running)
                ok, message = result.healthy, result.message
            else:
                # No health section: healthy when the provider reports the instance running and
                # its own health signal (Docker healthcheck, Coolify status) is not negative.
                state = await observed()
                ok = bool(state and state.running and state.facts.get("healthy") is not False)
                message = "running" if ok else (state.detail or "not healthy" if state
                                                else "not found")
        metrics.HEALTH_CHECK_DURATION.observe(time.monotonic() - started)
        if not ok:
            metrics.HEALTH_CHECK_FAILURES.inc()
        await self.store.finish_step(step, "succeeded" if ok else "failed", message)
        return ok, message
