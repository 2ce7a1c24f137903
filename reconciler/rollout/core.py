"""What every part of the engine shares: the store, the providers it loaded, the rollouts that
outlived their pass, progress events. ``Reconciler`` (engine.py) sets these up.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

from reconciler.errors import ReconcilerError
from reconciler.providers import Provider, ProviderContext, load_provider
from reconciler.rollout.outcome import Outcome, ProgressFn, ReconcileResult
from reconciler.rollout.status_sink import CommitStatusSink
from reconciler.source.git import GitSource
from reconciler.source.revisions import Revisions
from reconciler.spec.model import DesiredState, Resource, ResourceKey
from reconciler.state import store as st
from reconciler.state.store import Store

log = logging.getLogger("reconciler.rollout")

# Rollouts in flight at once in a pass, over all Targets (each Target: `concurrency`).
MAX_IN_FLIGHT = 1024

# The log level of a progress event: failures at ``error`` and reverts at ``warning``, so the
# `level == "error"` / `"warning"` filters of docs/monitoring.md catch them; the rest is ``info``.
HEALTH_CHECK = "health check"  # progress of a gate: one event per probe, for a terminal
EVENT_LEVELS = {
    HEALTH_CHECK: logging.DEBUG,
    "failed": logging.ERROR,
    "rollback failed": logging.ERROR,
    "rolling back": logging.WARNING,
    "rolled back": logging.WARNING,
    "health check failed": logging.WARNING,
}


class EngineCore:
    """The state the engine's parts share; each part is a mixin of ``Reconciler``."""

    store: Store
    state_dir: Path
    source: GitSource | None  # the config repo
    owner: str
    progress: ProgressFn | None
    # The last output lines of the instance whose health gate failed, by resource: the
    # Outcome of its deployment carries them (rollout/lastlines.py)
    failed_output: dict[ResourceKey, tuple[str, ...]]
    concurrency: int
    environments: set[str] | None
    owns: Callable[[ResourceKey], bool] | None
    stopping: bool
    revisions: Revisions
    _providers: dict[tuple[ResourceKey, str], Provider]
    # Providers of Targets edited or deleted since: closed when nothing may use them any more.
    _retired: list[Provider]
    # Leases lost to another reconciler (a stall past the TTL): no new step may start under them.
    lost_leases: set[str]
    # Service rollouts that outlived their pass (a canary paused until promoted).
    rollouts: dict[ResourceKey, asyncio.Task[Outcome]]
    # Resources the current pass is applying now, with when each started (time.monotonic()):
    # what the daemon names when a pass overruns (daemon/overrun.py).
    applying: dict[ResourceKey, float]
    # Deployments this process carries out beside its passes (a Schedule's run): open in the
    # journal, and alive — not a crash's leftover for recovery to close.
    running_deployments: set[str]
    # Where the state of each environment at the config commit is told (commit statuses).
    status_sink: CommitStatusSink | None

    async def record_succeeded(self, key: ResourceKey, revision: str, resource: Resource,
                               commit: str | None) -> None:
        """A deployment of ``resource`` at ``revision`` succeeded: it is what runs now."""
        await self.store.record_applied(key, revision=revision, spec_hash=resource.hash,
                                        spec=resource.document(), config_commit=commit)
        await self.store.update_status(key, sync_status="Synced", health_status="Healthy",
                                       last_result=st.SUCCEEDED, last_error=None,
                                       failed_revision=None)

    def emit(self, key: ResourceKey, phase: str, message: str = "",
             error: ReconcilerError | None = None) -> None:
        extra: dict[str, Any] = {"resource": str(key), "phase": phase}
        if error is not None:  # the log line carries the code and remediation of the failure
            extra.update(code=error.code, hint=error.hint)
        log.log(EVENT_LEVELS.get(phase, logging.INFO), message or phase, extra=extra)
        if self.progress:
            self.progress(key, phase, message)

    def provider_for(self, target: Resource) -> Provider:
        cache_key = (target.key, target.hash)
        provider = self._providers.get(cache_key)
        if provider is None:
            ctx = ProviderContext(state_dir=self.state_dir,
                                  logger=logging.getLogger(f"reconciler.provider.{target.name}"))
            provider = load_provider(target, ctx)
            # The Target was edited: its earlier provider is closed once nothing may use it
            for key in [k for k in self._providers if k[0] == target.key]:
                self._retired.append(self._providers.pop(key))
            self._providers[cache_key] = provider
        return provider

    def retire_providers_of_deleted_targets(self, desired: DesiredState) -> None:
        """Retire the providers of Targets no longer in ``desired``, as an edited Target's: a
        later use (a recovery, a prune) loads the Target's recorded spec afresh."""
        for cache_key in [k for k in self._providers if k[0] not in desired.resources]:
            self._retired.append(self._providers.pop(cache_key))

    async def close_retired_providers(self) -> None:
        """Close the providers of Targets edited or deleted since they were loaded (their
        connections, or a daemon keeps one more per host and edit), unless a rollout or
        deployment that may still use one is under way."""
        if not self._retired or self.rollouts_in_progress or self.running_deployments \
                or self.applying:
            return
        retired, self._retired = self._retired, []
        await self._close_providers(retired)

    async def _close_providers(self, providers: list[Provider]) -> None:
        for provider in providers:
            try:
                await provider.close()
            except Exception as exc:  # closing must not mask the pass's own result
                log.warning("provider close failed", extra={"error": str(exc)})

    def rollouts_per_target(self, target: Resource | None) -> int:
        """``concurrency``, or all of them (the pass's cap) for a Target whose provider bounds
        and batches the actions on each host itself (``host_batching``)."""
        if target is None:
            return self.concurrency
        try:
            batching = self.provider_for(target).capabilities.host_batching
        except ReconcilerError:  # a Target that cannot load: its rollouts record why
            return self.concurrency
        return max(self.concurrency, MAX_IN_FLIGHT) if batching else self.concurrency

    async def close(self) -> None:
        if self.rollouts_in_progress:
            # Detached rollouts (paused canaries) stop at their next step boundary, closed as
            # cancelled: the next start resumes them.
            self.stopping = True
            await self.finish_rollouts()
        providers, self._retired = [*self._retired, *self._providers.values()], []
        self._providers.clear()
        await self._close_providers(providers)

    @property
    def rollouts_in_progress(self) -> list[ResourceKey]:
        return [k for k, t in self.rollouts.items() if not t.done()]

    async def settle(self, result: ReconcileResult) -> ReconcileResult:
        """For one-shot callers (``apply``): wait for the rollouts that outlived the pass
        (paused canaries, until promoted or aborted) and put how they ended into ``result``."""
        finished = {o.key: o for o in await self.finish_rollouts()}
        if finished:
            result.outcomes = [finished.get(o.key, o) for o in result.outcomes]
        return result

    async def finish_rollouts(self) -> list[Outcome]:
        """Wait for the rollouts that outlived their pass (paused canaries) and return how
        they ended."""
        outcomes: list[Outcome] = []
        while self.rollouts:
            key, task = next(iter(self.rollouts.items()))
            try:
                outcomes.append(await task)
            finally:
                self.rollouts.pop(key, None)
        return outcomes

