"""Deleting what git no longer has (prune), and the audit row of a Target change.
"""

from __future__ import annotations

from reconciler.errors import ReconcilerError
from reconciler.plan.planner import DELETE, PlanItem
from reconciler.rollout.journal import Journal
from reconciler.rollout.outcome import Outcome
from reconciler.rollout.releases import Releases, resource_from_document, variants_of
from reconciler.spec.model import DesiredState, Resource, ResourceKey
from reconciler.state import store as st
from reconciler.state.audit import actor_for_trigger, current_actor
from reconciler.state.store import DeploymentRecord


class Pruning(Journal, Releases):
    """Deleting resources gone from git; Target audit rows."""

    async def delete(self, item: PlanItem, desired: DesiredState,
                     opened: list[DeploymentRecord]) -> Outcome:
        key, record = item.key, item.record
        assert record is not None
        note = ""
        if key.kind != "Target":
            document = record.applied_spec or record.desired_spec or {}
            resource = resource_from_document(key, document)
            target = self._recorded_target(resource, desired)
            target_doc = target or await self.target_from_store(resource)
            if target_doc is not None:
                dep = await self.store.create_deployment(
                    key, from_revision=record.applied_revision,
                    to_revision=record.applied_revision or "none", config_commit=desired.commit,
                    trigger="prune", strategy="delete", spec=document)
                opened.append(dep)
                await self.store.transition(dep.id, st.IN_PROGRESS, message="pruning")
                try:
                    provider = self.provider_for(target_doc)
                    for variant in variants_of(resource):
                        for instance in await provider.instances(variant):
                            await self.step(dep.id, "remove", instance,
                                            provider.remove(variant, instance))
                except ReconcilerError as exc:
                    await self.store.transition(dep.id, st.FAILED, error=exc.message)
                    if record.applied_revision is not None:
                        return Outcome(key, DELETE, st.FAILED, None, exc.message,
                                       dep.identifier, code=exc.code, hint=exc.hint)
                    # Never deployed (its first attempt failed, often because the host never
                    # answered): no revision of it ever ran, and a cleanup that cannot reach the
                    # host would fail every pass for good. It is forgotten; the failed cleanup
                    # stays in its history.
                    note = f" (never deployed; cleanup failed: {exc.message})"
                    self.emit(key, "cleanup-failed", exc.message, exc)
                else:
                    await self.store.transition(dep.id, st.SUCCEEDED, message="removed")
        await self.store.mark_deleted(key)
        if key.kind == "Target":
            await self.audit_target(key, "prune", "prune", revision=record.applied_revision,
                                    config_commit=desired.commit, message="target removed")
        self.emit(key, "deleted", note.strip())
        return Outcome(key, DELETE, st.SUCCEEDED, None, "removed" + note)

    async def audit_target(self, key: ResourceKey, action: str, trigger: str, *,
                           revision: str | None, config_commit: str | None,
                           message: str) -> None:
        """A Target change has no deployment (nothing runs) to write its audit row, so it is
        recorded here, with the actor a deployment's row would name: the pass's (or CLI
        user's) actor, else the trigger's. Never the document: it may hold secret references
        and an audit message is free text."""
        await self.store.record_audit(action, actor=current_actor() or actor_for_trigger(trigger),
                                      outcome=st.SUCCEEDED, resource=key, revision=revision,
                                      config_commit=config_commit, message=message)

    @staticmethod
    def _recorded_target(resource: Resource, desired: DesiredState) -> Resource | None:
        return desired.target_of(resource)


# Document hash -> the hash without sync windows (a function of the document): a Target with
