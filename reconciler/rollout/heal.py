"""Self-heal of one Service, per instance: only the instances whose live state differs from the
applied revision are redeployed (at that revision), one at a time, each health-gated; the
healthy ones are not touched.

The applied revision is what is healed to, also when git asks for another one that is blocked
(rolled back, waiting for a new commit): a blocked Service keeps running on its blocked-at
revision. Slotted strategies (blue-green, weighted canary) are healed by their own rollout.
"""

from __future__ import annotations

import logging

from reconciler.errors import ReconcilerError
from reconciler.plan.planner import BLOCKED, PlanItem
from reconciler.providers import Instance, InstanceState, Provider
from reconciler.rollout.gate import Gate
from reconciler.rollout.journal import Journal
from reconciler.rollout.outcome import CONVERGED, DeploymentFailed, Outcome
from reconciler.rollout.releases import Releases, resource_from_document
from reconciler.rollout.strategies import Strategy
from reconciler.spec.model import DesiredState, Resource
from reconciler.state import store as st
from reconciler.state.store import DeploymentRecord, ResourceRecord

log = logging.getLogger("reconciler.rollout")

HEAL = "heal"  # the strategy a heal deployment is recorded under


def drifted_instances(instances: list[Instance], states: list[InstanceState],
                      revision: str) -> list[Instance]:
    """The instances not running ``revision`` (stopped, exited, missing, another revision,
    edited by hand, unreachable), in the provider's order."""
    by_id = {s.instance.id: s for s in states}
    out = []
    for instance in instances:
        state = by_id.get(instance.id)
        if state is None or not state.running or (
                state.revision is not None and state.revision != revision):
            out.append(instance)
    return out


class Healing(Gate, Journal, Releases):
    """Redeploying the drifted instances of an applied Service."""

    @staticmethod
    def heals_per_instance(item: PlanItem) -> bool:
        """A drift heal this module does (not a rollout): an applied, in-place Service whose
        desired revision is the applied one, or is blocked."""
        record, resource = item.record, item.resource
        if item.key.kind != "Service" or record is None or resource is None \
                or record.applied_revision is None:
            return False
        if item.action != BLOCKED and item.revision != record.applied_revision:
            return False
        return not Strategy.of(resource).slotted

    async def heal_service(self, item: PlanItem, target: Resource, desired: DesiredState,
                           trigger: str, opened: list[DeploymentRecord]) -> Outcome:
        key = item.key
        record = await self.store.get_resource(key)
        assert record is not None and record.applied_revision is not None
        revision = record.applied_revision
        good = await self._applied_deployment(record)
        document = good.spec if good is not None and good.spec else record.applied_spec
        if not document:
            raise DeploymentFailed(f"{key}: the applied document of {revision} is not recorded")
        resource = resource_from_document(key, document)
        commit = good.config_commit if good is not None else record.config_commit
        provider = self.provider_for(target)
        instances = await provider.instances(resource)
        drifted = drifted_instances(instances, await provider.observe(resource), revision)
        blocked = item.action == BLOCKED
        if not drifted:
            return await self._healed_nothing(item, record)
        dep = await self.store.create_deployment(
            key, from_revision=revision, to_revision=revision, config_commit=commit,
            trigger=trigger, strategy=HEAL, spec=document)
        opened.append(dep)
        names = ", ".join(i.id for i in drifted)
        await self.store.transition(dep.id, st.IN_PROGRESS,
                                    message=f"heal {len(drifted)} of {len(instances)} "
                                            f"instance(s): {names}")
        self.emit(key, "healing", f"{names} -> {revision} ({len(drifted)} of "
                                  f"{len(instances)} instance(s))")
        failures = await self._heal(dep, provider, resource, revision, commit, drifted)
        summary = f"healed {len(drifted) - len(failures)} of {len(instances)} instance(s)"
        if failures:
            error = "; ".join(failures)
            await self.store.transition(dep.id, st.FAILED, error=error, message=error)
            await self.store.update_status(key, health_status="Degraded", last_error=error,
                                           **({} if blocked else {"last_result": st.FAILED,
                                                                  "sync_status": "OutOfSync"}))
            self.emit(key, "heal failed", error)
            if blocked:
                return Outcome(key, item.action, BLOCKED, item.revision,
                               f"{item.reason}; heal failed: {error}",
                               deployment=dep.identifier)
            return Outcome(key, item.action, st.FAILED, revision, error,
                           deployment=dep.identifier)
        await self.store.transition(dep.id, st.SUCCEEDED, message=f"healthy: {summary}")
        self.emit(key, "healed", f"{names} at {revision}")
        if blocked:
            # Still not what git asks for: healthy on the blocked-at revision, out of sync.
            await self.store.update_status(key, health_status="Healthy")
            return Outcome(key, item.action, BLOCKED, item.revision,
                           f"{item.reason}; {summary} at {revision}",
                           deployment=dep.identifier)
        await self.store.update_status(key, sync_status="Synced", health_status="Healthy",
                                       last_result=st.SUCCEEDED, last_error=None)
        return Outcome(key, item.action, st.SUCCEEDED, revision, summary,
                       deployment=dep.identifier)

    async def _heal(self, dep: DeploymentRecord, provider: Provider, resource: Resource,
                    revision: str, commit: str | None, drifted: list[Instance]) -> list[str]:
        """Redeploy each drifted instance in turn, health-gated; the failures, one per
        instance (one unreachable host does not keep the others from being healed)."""
        release = self.release_for(resource, revision, commit)
        failures: list[str] = []
        for instance in drifted:
            try:
                started = await self.step(dep.id, "deploy", instance,
                                          provider.deploy(release, instance),
                                          f"revision {revision} (heal)")
                healthy, message = await self.health_gate(dep.id, provider, resource, instance,
                                                          started)
                if not healthy:
                    failures.append(f"{instance.id}: health check failed: {message}")
            except ReconcilerError as exc:
                failures.append(exc.message if instance.id in exc.message
                                else f"{instance.id}: {exc.message}")
            except (OSError, TimeoutError) as exc:
                failures.append(f"{instance.id}: {type(exc).__name__}: {exc}")
        return failures

    async def _healed_nothing(self, item: PlanItem, record: ResourceRecord) -> Outcome:
        """Drift reported, gone by now (it restarted on its own): nothing deployed."""
        if item.action == BLOCKED:
            return Outcome(item.key, item.action, BLOCKED, item.revision, item.reason)
        await self.store.update_status(item.key, sync_status="Synced", health_status="Healthy")
        return Outcome(item.key, item.action, CONVERGED, record.applied_revision,
                       "no instance drifted any more")

    async def _applied_deployment(self, record: ResourceRecord) -> DeploymentRecord | None:
        """The newest succeeded deployment of the applied revision (its document and commit)."""
        for dep in await self.store.list_deployments(record.key, limit=50):
            if dep.status == st.SUCCEEDED and dep.to_revision == record.applied_revision \
                    and dep.spec and dep.strategy not in ("run", "delete"):
                return dep
        return None
