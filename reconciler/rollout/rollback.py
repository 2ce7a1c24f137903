"""Rollback after a failed rollout: slots switch back, in-place instances go back to the last good
revision recorded in the database; the deployment closes rolled_back or rollback_failed.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence

from reconciler.errors import ReconcilerError
from reconciler.observe import metrics
from reconciler.providers import Instance, Provider
from reconciler.rollout.gate import Gate
from reconciler.rollout.journal import Journal
from reconciler.rollout.outcome import DeploymentFailed
from reconciler.rollout.releases import Releases, resource_from_document
from reconciler.rollout.runner import RolloutRun
from reconciler.spec.model import Resource, ResourceKey
from reconciler.state import store as st
from reconciler.state.store import DeploymentRecord

log = logging.getLogger("reconciler.rollout")

# How long a rollback keeps trying an instance the rollout could not reach (after the reachable
# ones are restored): the apply ends, naming it, instead of waiting on a frozen host.
UNREACHED_ROLLBACK_S = 30.0


class Rollbacks(Gate, Journal, Releases):
    """Reverting a failed Service rollout and closing its deployment."""

    async def revert_slots(self, dep: DeploymentRecord, run: RolloutRun, key: ResourceKey,
                           bad_revision: str, reason: str,
                           error: str | None = None, *, judged: bool = True
                           ) -> tuple[str, str]:
        """A slotted rollout failed: traffic back to the old slot (still running), new slot
        stopped. Nothing is redeployed, which is the point of slots."""
        metrics.ROLLBACKS_TOTAL.labels(reason).inc()
        self.emit(key, "rolling back", "traffic back to the old slot")
        try:
            kept, message = await run.revert_slots()
        except ReconcilerError as exc:
            return await self._rollback_ended(dep, key, bad_revision, error, failed=exc.message,
                                              message=f"revert failed: {exc.message}",
                                              judged=judged)
        if not kept:
            await self.store.transition(dep.id, st.FAILED, error=error, message=message)
            await self.store.update_status(key, last_result=st.FAILED, last_error=error or dep.error
                                           or "deployment failed", health_status="Degraded",
                                           sync_status="OutOfSync")
            return st.FAILED, message
        return await self._rollback_ended(dep, key, bad_revision, error, message=message)

    async def _rollback_ended(self, dep: DeploymentRecord, key: ResourceKey, bad_revision: str,
                              error: str | None, *, message: str,
                              failed: str | None = None, judged: bool = True
                              ) -> tuple[str, str]:
        """Close a reverted deployment: rolled_back, or rollback_failed with why (``failed``).
        The bad revision is remembered (not retried until a new commit) when it was rolled
        back or judged bad by a gate; a failed rollback of an unjudged one is retried."""
        if failed is not None:
            await self.store.transition(dep.id, st.ROLLBACK_FAILED, message=failed, error=error)
            await self.store.update_status(key, last_result=st.ROLLBACK_FAILED,
                                           last_error=failed, health_status="Degraded",
                                           sync_status="OutOfSync",
                                           failed_revision=bad_revision if judged else None)
            self.emit(key, "rollback failed", failed)
            return st.ROLLBACK_FAILED, message
        await self.store.transition(dep.id, st.ROLLED_BACK, message=message, error=error)
        await self.store.update_status(key, last_result=st.ROLLED_BACK, health_status="Healthy",
                                       sync_status="OutOfSync", failed_revision=bad_revision,
                                       last_error=error or dep.error)
        self.emit(key, "rolled back", message)
        return st.ROLLED_BACK, message

    async def rollback(self, dep: DeploymentRecord, provider: Provider, key: ResourceKey,
                       bad_revision: str, instances: list[Instance],
                       reason: str, error: str | None = None, *, judged: bool = True,
                       unreached: Sequence[Instance] = ()) -> tuple[str, str]:
        """Back to the last good revision recorded in the database (not memory)."""
        good = await self.store.last_good(key)
        if good is None or good.to_revision == bad_revision or not good.spec:
            # Nothing to go back to: take the broken release down and leave it failed; the
            # daemon retries with backoff.
            for instance in instances:
                try:
                    await self.step(dep.id, "stop", instance,
                                    provider.stop(self._resource_of(dep, key), instance))
                except ReconcilerError as exc:
                    log.warning("stopping failed release failed",
                                extra={"resource": str(key), "error": exc.message})
            await self.store.transition(dep.id, st.FAILED, error=error,
                                        message="no previous good revision to roll back to")
            await self.store.update_status(key, last_result=st.FAILED, last_error=error or dep.error
                                           or "deployment failed", health_status="Degraded",
                                           sync_status="OutOfSync")
            return st.FAILED, "no previous good revision to roll back to"
        previous = resource_from_document(key, good.spec)
        self.emit(key, "rolling back", f"-> {good.to_revision}")
        metrics.ROLLBACKS_TOTAL.labels(reason).inc()
        try:
            release = self.release_for(previous, good.to_revision, good.config_commit)
        except ReconcilerError as exc:
            return await self._rollback_ended(
                dep, key, bad_revision, error, failed=exc.message, judged=judged,
                message=f"rollback to {good.to_revision} failed: {exc.message}")
        # Every instance is tried even when one fails: an unreachable host must not leave the
        # reachable ones on the bad revision. The reachable ones go first; one whose deploy
        # failed (unreachable, frozen) last, and only for UNREACHED_ROLLBACK_S. The failures
        # are reported together.
        failures: list[str] = []
        last = {i.id for i in unreached}
        ordered = [i for i in instances if i.id not in last] + [i for i in instances
                                                                if i.id in last]

        async def restore(instance: Instance) -> None:
            started = await self.step(dep.id, "rollback", instance,
                                      provider.deploy(release, instance),
                                      f"revision {good.to_revision}")
            healthy, message = await self.health_gate(dep.id, provider, previous, instance,
                                                      started)
            if not healthy:
                raise DeploymentFailed(f"{instance.id}: previous revision unhealthy: {message}")

        for instance in ordered:
            try:
                if instance.id in last:
                    try:
                        async with asyncio.timeout(UNREACHED_ROLLBACK_S):
                            await restore(instance)
                    except TimeoutError:
                        raise DeploymentFailed(
                            f"{instance.id}: unreachable during the rollout; rollback gave up "
                            f"after {UNREACHED_ROLLBACK_S:g}s") from None
                else:
                    await restore(instance)
            except ReconcilerError as exc:
                failures.append(exc.message if instance.id in exc.message
                                else f"{instance.id}: {exc.message}")
            except (OSError, TimeoutError) as exc:
                failures.append(f"{instance.id}: {type(exc).__name__}: {exc}")
        if failures:
            failed = "; ".join(failures)
            done = len(instances) - len(failures)
            return await self._rollback_ended(
                dep, key, bad_revision, error, failed=failed, judged=judged,
                message=f"rollback to {good.to_revision} failed on {len(failures)} of "
                        f"{len(instances)} instance(s) ({done} rolled back): {failed}")
        return await self._rollback_ended(dep, key, bad_revision, error,
                                          message=f"rolled back to {good.to_revision}")

    @staticmethod
    def _resource_of(dep: DeploymentRecord, key: ResourceKey) -> Resource:
        return resource_from_document(key, dep.spec or {"metadata": {}, "spec": {}})

