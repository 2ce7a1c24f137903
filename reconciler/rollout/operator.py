"""Operator actions on one resource: ``reconciler rollback`` (an earlier good revision).
"""

from __future__ import annotations

from reconciler.errors import ReconcilerError
from reconciler.observe import metrics
from reconciler.rollout.leases import Leases
from reconciler.rollout.outcome import DeploymentFailed, Outcome
from reconciler.rollout.prune import Pruning
from reconciler.rollout.releases import resource_from_document
from reconciler.rollout.rollback import Rollbacks
from reconciler.rollout.runner import Interrupted, RolloutRun
from reconciler.rollout.strategies import BLUE_GREEN, ROLLING, Strategy
from reconciler.spec.model import ResourceKey
from reconciler.state import store as st


class OperatorActions(Rollbacks, Pruning, Leases):
    """What an operator asks of one resource."""

    async def manual_rollback(self, key: ResourceKey, to_revision: str | None = None) -> Outcome:
        lock = f"resource:{key}"
        if not await self.take_lease(lock):
            raise DeploymentFailed(f"{key}: another reconciler is deploying it; try again",
                                   hint="wait for the running deployment to finish")
        try:
            return await self._manual_rollback(key, to_revision)
        finally:
            await self.store.release_lock(lock, self.owner)

    async def _manual_rollback(self, key: ResourceKey, to_revision: str | None) -> Outcome:
        """Deploy an earlier succeeded revision (the previous one by default), recorded with
        trigger ``manual`` and strategy ``rollback``. The revision git still asks for is
        remembered as rolled back, so the daemon does not undo this until a new commit."""
        record = await self.store.get_resource(key)
        if record is None:
            raise DeploymentFailed(f"{key}: no such resource in the database")
        history = await self.store.list_deployments(key, limit=500)
        good = [d for d in history if d.status == st.SUCCEEDED and d.spec
                and d.strategy not in ("run", "delete")]
        if to_revision:
            choice = next((d for d in good if d.to_revision.startswith(to_revision)), None)
            if choice is None:
                raise DeploymentFailed(f"{key}: no succeeded deployment of revision {to_revision}")
        else:
            choice = next((d for d in good if d.to_revision != record.applied_revision), None)
            if choice is None:
                raise DeploymentFailed(f"{key}: no earlier good revision to roll back to")
        assert choice.spec is not None
        resource = resource_from_document(key, choice.spec)
        target = await self.target_from_store(resource)
        if target is None:
            raise DeploymentFailed(f"{key}: its Target is not recorded")
        provider = self.provider_for(target)
        dep = await self.store.create_deployment(
            key, from_revision=record.applied_revision, to_revision=choice.to_revision,
            config_commit=choice.config_commit, trigger="manual", strategy="rollback",
            spec=choice.spec)
        await self.store.transition(dep.id, st.IN_PROGRESS,
                                    message=f"manual rollback to {choice.to_revision}")
        metrics.ROLLBACKS_TOTAL.labels("manual").inc()
        self.emit(key, "rolling back", f"-> {choice.to_revision}")
        try:
            release = self.release_for(resource, choice.to_revision, choice.config_commit)
            if key.kind == "Service":
                # The Service's own mechanics without its ceremony: slots switch back at once,
                # in-place strategies move every instance in batches; no pauses or analysis.
                own = Strategy.of(resource)
                how = (Strategy(type=BLUE_GREEN, ports=own.ports, traffic=own.traffic,
                                scale_down_delay_s=0.0) if own.slotted
                       else Strategy(type=own.type if own.type == ROLLING else "recreate",
                                     max_parallel=own.max_parallel,
                                     max_unavailable=own.max_unavailable))
                run = RolloutRun(self, dep, provider, resource, release, how)
                await run.execute([] if how.slotted else await provider.instances(resource))
            else:
                for instance in await provider.instances(resource):
                    await self.step(dep.id, "install", instance,
                                    provider.deploy(release, instance))
        except Interrupted as exc:
            message = f"stopped at {exc}"
            await self.store.transition(dep.id, st.CANCELLED, message=message)
            return Outcome(key, "rollback", st.CANCELLED, choice.to_revision, message,
                           dep.identifier)
        except ReconcilerError as exc:
            await self.store.transition(dep.id, st.FAILED, error=exc.message)
            await self.store.update_status(key, last_result=st.FAILED, last_error=exc.message)
            return Outcome(key, "rollback", st.FAILED, choice.to_revision, exc.message,
                           dep.identifier)
        await self.store.transition(dep.id, st.SUCCEEDED, message="rolled back by operator")
        await self.store.record_applied(key, revision=choice.to_revision,
                                        spec_hash=resource.hash, spec=choice.spec,
                                        config_commit=choice.config_commit)
        pinned = record.desired_revision if record.desired_revision != choice.to_revision \
            else None
        await self.store.update_status(key, last_result=st.SUCCEEDED, last_error=None,
                                       health_status="Healthy",
                                       sync_status="OutOfSync" if pinned else "Synced",
                                       failed_revision=pinned)
        self.emit(key, "rolled back", f"now at {choice.to_revision}")
        return Outcome(key, "rollback", st.SUCCEEDED, choice.to_revision, "rolled back",
                       dep.identifier)

