"""The health gate of one instance: its probes (where the instance runs) or, with none, the
provider's own signal; journaled as a ``health`` step.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from typing import Any

from reconciler.errors import ProviderError
from reconciler.health import wait_healthy, wait_settled
from reconciler.observe import metrics
from reconciler.observe.tracing import span
from reconciler.providers import Instance, InstanceState, Provider, observe_one, probe_site
from reconciler.rollout.core import EngineCore
from reconciler.rollout.strategies import health_for
from reconciler.spec.model import Resource


async def _why_not_running(observed: Callable[[], Awaitable[InstanceState | None]]) -> str:
    """What the provider says of an instance that failed its probes and is not running (e.g.
    which sandbox setting stopped it); empty when it runs or cannot be observed."""
    try:
        state = await observed()
    except ProviderError:
        return ""
    if state is None or state.running or not state.detail:
        return ""
    return f"; the instance is not running: {state.detail}"


class Gate(EngineCore):
    """The health gate of one instance."""

    async def health_gate(self, deployment_id: str, provider: Provider, resource: Resource,
                          instance: Instance) -> tuple[bool, str]:
        health = health_for(resource, instance)
        step = await self.store.start_step(deployment_id, "health", instance.id)
        started = time.monotonic()

        def observed() -> Any:
            return observe_one(provider, resource, instance)

        async def is_running() -> bool:
            state = await observed()
            return bool(state and state.running)

        with span("health_gate", resource=str(resource.key), instance=instance.id):
            if health:
                state = await observed()
                # exec probes run where the provider's capability says (host, container)
                runner, cwd = probe_site(provider, instance, state)
                result = await wait_healthy(health, instance, transport=runner, cwd=cwd,
                                            is_running=is_running)
                ok, message = result.healthy, result.message
                if not ok:
                    message += await _why_not_running(observed)
            else:
                # No health section: healthy when the provider reports the instance running and
                # its own health signal (Docker healthcheck, Coolify status), once decided, is
                # not negative.
                state = await wait_settled(observed)
                problem = state.problem if state is not None else "not found"
                ok, message = problem is None, problem or "running"
        metrics.HEALTH_CHECK_DURATION.observe(time.monotonic() - started)
        if not ok:
            metrics.HEALTH_CHECK_FAILURES.inc()
        await self.store.finish_step(step, "succeeded" if ok else "failed", message)
        return ok, message
