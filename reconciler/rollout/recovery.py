"""Crash recovery: the deployments a crash (or a killed replica) left open.

Each open step is closed as interrupted. Then, if the interrupted Service rollout had already
done its provider work — every instance observed running exactly its target revision — it is
**adopted**: the rollout's own health gate runs on every instance, and on success the deployment
succeeds with an ``adopt`` step per instance in its journal; nothing is deployed or restarted
again. Anything else (an instance on another revision or unreachable, a failed gate, a revert
already begun, a strategy whose gates are not only health gates, a Job) is closed as
``cancelled`` at the interrupted step, and the next plan deploys the desired revision again (a
resume: instances an interrupted attempt moved and gated are found at it and kept).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field

from reconciler.errors import ReconcilerError, StoreError
from reconciler.observe import metrics
from reconciler.providers import Instance, InstanceState, Provider
from reconciler.rollout.gate import Gate
from reconciler.rollout.leases import Leases, owner_alive
from reconciler.rollout.releases import Releases, resource_from_document
from reconciler.rollout.strategies import RECREATE, ROLLING, Strategy
from reconciler.spec.model import Resource, ResourceKey
from reconciler.state import store as st
from reconciler.state.store import DeploymentRecord

log = logging.getLogger("reconciler.rollout")

# The journal step of an instance an interrupted deployment is adopted on: found running the
# deployment's target revision after the interruption (its detail: what was observed).
ADOPT = "adopt"
# Strategies whose only gates are the instances' health gates: re-running those gates is the
# whole judgement of a rollout that already moved every instance (a canary's analysis or a
# blue-green traffic switch is not re-run here; those resume instead).
_ADOPTABLE = frozenset({RECREATE, ROLLING})
# Steps of a rollout going forward (or of an adoption an earlier recovery did not finish); any
# other (rollback, stop, retire) means a revert began.
_FORWARD = frozenset({"deploy", "health", ADOPT})


@dataclass(frozen=True)
class _Candidate:
    """An interrupted Service rollout that may be adopted, with what adopting it needs."""

    dep: DeploymentRecord
    resource: Resource
    target: Resource


@dataclass(frozen=True)
class Adopted:
    """An interrupted deployment recovery adopted: it ended ``succeeded`` at ``revision``."""

    deployment: str  # its identifier
    revision: str
    instances: int


@dataclass
class Recovered:
    """What recovery made of the deployments a crash left open.

    ``resumed``: cancelled, for the pass to deploy again (trigger ``resume``). ``adoptions``:
    being adopted, each a task ending with the ``Adopted`` deployment, or None when it was
    cancelled instead (then it resumes too). The pass awaits a resource's adoption before that
    resource's turn and every adoption before it ends, so one resource's gates hold only it."""

    resumed: set[ResourceKey] = field(default_factory=set)
    adoptions: dict[ResourceKey, asyncio.Task[Adopted | None]] = field(default_factory=dict)

    async def adoption(self, key: ResourceKey) -> tuple[Adopted | None, bool]:
        """(the adopted deployment or None, whether ``key`` resumes an interrupted one)."""
        task = self.adoptions.get(key)
        if task is None:
            return None, key in self.resumed
        adopted = await task
        return adopted, adopted is None

    async def settle(self) -> None:
        """Wait for every adoption; raise the first error (the store's)."""
        for result in await asyncio.gather(*self.adoptions.values(), return_exceptions=True):
            if isinstance(result, BaseException):
                raise result

    async def abandon(self) -> None:
        """The pass failed: stop the adoptions still gating (their deployments stay open, an
        open step each, for the next recovery)."""
        for task in self.adoptions.values():
            task.cancel()
        await asyncio.gather(*self.adoptions.values(), return_exceptions=True)


class Recovery(Gate, Releases, Leases):
    """Closing — or adopting — the deployments a crash left open."""

    async def recover(self) -> Recovered:
        """Close the deployments a crash left open.

        Adoptable ones are adopted by tasks that run beside the pass (an adopted deployment
        ends ``succeeded``: the resource is applied at its revision). The others end
        ``cancelled`` with the step that was interrupted; the resource keeps its last applied
        revision, so the next plan deploys the desired one again (resume) — or, if it is gone
        from git, prunes/orphans it."""
        recovered = Recovered()
        limits: dict[ResourceKey, asyncio.Semaphore] = {}
        for dep in await self.store.unfinished_deployments():
            if self.owns is not None and not self.owns(dep.key):
                continue  # another replica's shard
            running = self.rollouts.get(dep.key)
            if running is not None and not running.done():
                continue  # our own detached rollout (a paused canary), alive and well
            if dep.id in self.running_deployments:
                continue  # our own Schedule run, going on beside the pass
            holder = await self.store.lock_owner(f"resource:{dep.key}")
            if holder is not None and holder != self.owner:
                if owner_alive(holder) is not False:
                    continue  # a live reconciler (or an unexpired remote lease) is on it
                await self.store.release_lock(f"resource:{dep.key}", holder)
            open_steps = [s for s in dep.steps if s.finished_at is None]
            for step in open_steps:
                await self.store.finish_step(step.id, "interrupted", "reconciler stopped")
            where = open_steps[-1].action if open_steps else "before the first step"
            candidate = await self._candidate(dep)
            if candidate is None:
                await self._cancel(dep, where)
                recovered.resumed.add(dep.key)
                continue
            # per Target, as many adoptions at once as a pass would roll out
            limit = limits.get(candidate.target.key)
            if limit is None:
                limit = limits[candidate.target.key] = asyncio.Semaphore(
                    self.rollouts_per_target(candidate.target))
            recovered.adoptions[dep.key] = asyncio.create_task(
                self._adopt_or_cancel(candidate, where, limit))
        return recovered

    async def _cancel(self, dep: DeploymentRecord, where: str) -> None:
        await self.store.transition(
            dep.id, st.CANCELLED,
            message=f"interrupted during {where}; resumed by the next reconcile",
        )
        await self.store.update_status(dep.key, last_result=st.CANCELLED,
                                       last_error=f"interrupted during {where}")
        log.warning("recovered interrupted deployment",
                    extra={"resource": str(dep.key), "deployment": dep.identifier})

    async def _adopt_or_cancel(self, candidate: _Candidate, where: str,
                               limit: asyncio.Semaphore) -> Adopted | None:
        async with limit:
            adopted = await self._adopt(candidate)
        if adopted is None:
            await self._cancel(candidate.dep, where)
        return adopted

    # -- adoption ---------------------------------------------------------------------------
    async def _candidate(self, dep: DeploymentRecord) -> _Candidate | None:
        """``dep`` with its resource and Target when its journal allows adopting it: a Service
        rollout in place, to a new revision (a forced redeploy of the running revision must
        restart every instance: finding them at it proves nothing), going forward (no failed
        step, no revert begun), with its document and Target recorded."""
        if (dep.key.kind != "Service" or dep.status != st.IN_PROGRESS or not dep.spec
                or dep.strategy not in _ADOPTABLE or dep.from_revision == dep.to_revision):
            return None
        if any(s.action not in _FORWARD or s.status == "failed" for s in dep.steps):
            return None
        resource = resource_from_document(dep.key, dep.spec)
        strategy = Strategy.of(resource)
        if strategy.slotted or strategy.type != dep.strategy:
            return None
        target = await self.target_from_store(resource)
        return _Candidate(dep, resource, target) if target is not None else None

    async def _adopt(self, candidate: _Candidate) -> Adopted | None:
        """Adopt one interrupted deployment, or None: it is to be cancelled."""
        dep, resource = candidate.dep, candidate.resource
        lock = f"resource:{dep.key}"
        if not await self.take_lease(lock):
            return None  # someone else took it since: cancelled and resumed as before
        renew = asyncio.create_task(self.renew(lock))
        try:
            provider = self.provider_for(candidate.target)
            instances = await provider.instances(resource)
            found = running_target(instances, await provider.observe(resource),
                                   dep.to_revision)
            if found is None:
                return None
            return await self._gate_adopted(dep, provider, resource, candidate.target,
                                            list(zip(instances, found, strict=True)))
        except StoreError:
            raise
        except (ReconcilerError, OSError, TimeoutError) as exc:
            # could not look (a host unreachable): resumed as before, which retries it
            message = exc.message if isinstance(exc, ReconcilerError) else repr(exc)
            log.warning("adopting an interrupted deployment failed; resuming it instead",
                        extra={"resource": str(dep.key), "deployment": dep.identifier,
                               "error": message})
            return None
        finally:
            renew.cancel()
            await asyncio.gather(renew, return_exceptions=True)
            await self.store.release_lock(lock, self.owner)

    async def _gate_adopted(self, dep: DeploymentRecord, provider: Provider,
                            resource: Resource, target: Resource,
                            found: list[tuple[Instance, InstanceState]]) -> Adopted | None:
        """Every instance runs the target: journal what was found, gate each instance as the
        rollout would have, and on success record the deployment as succeeded."""
        key, revision = dep.key, dep.to_revision
        for instance, state in found:
            step = await self.store.start_step(dep.id, ADOPT, instance.id,
                                               f"revision {revision} running: {state.identity}")
            await self.store.finish_step(step, "succeeded")
        self.emit(key, "adopting", f"{len(found)} instance(s) already run {revision} after an "
                                   "interruption; health-gating them")
        results = await asyncio.gather(*(self.health_gate(dep.id, provider, resource, i)
                                         for i, _ in found))
        bad = [f"{i.id}: {msg}" for (i, _), (ok, msg) in zip(found, results, strict=True)
               if not ok]
        if bad:
            self.emit(key, "health check failed", "; ".join(bad) + "; resuming the rollout")
            return None
        summary = f"adopted after an interruption: {len(found)} instance(s) ran {revision}"
        await self.store.transition(dep.id, st.SUCCEEDED, message=f"healthy: {summary}")
        await self.record_succeeded(key, revision, resource, dep.config_commit)
        metrics.DEPLOYMENTS_TOTAL.labels(str(target.spec.get("provider")), dep.strategy,
                                         st.SUCCEEDED).inc()
        self.emit(key, "adopted", f"{revision} healthy ({summary})")
        return Adopted(dep.identifier, revision, len(found))


def running_target(instances: Sequence[Instance], states: Sequence[InstanceState],
                   revision: str) -> list[InstanceState] | None:
    """The observed state of each instance (in their order) when every one runs exactly
    ``revision`` with no problem of its own, and nothing observed runs anything else;
    otherwise None."""
    if not instances:
        return None
    if any(s.revision != revision or s.problem is not None for s in states):
        return None
    by_id = {s.instance.id: s for s in states}
    found = [by_id[i.id] for i in instances if i.id in by_id]
    return found if len(found) == len(instances) else None
