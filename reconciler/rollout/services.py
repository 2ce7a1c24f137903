"""A Service rollout: its strategy run (``RolloutRun``), then success, or rollback and the
deployment's final status.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from reconciler.errors import ReconcilerError, StoreError
from reconciler.observe import metrics
from reconciler.plan.planner import PlanItem
from reconciler.providers import Provider
from reconciler.rollout.failures import failure_of, recorded
from reconciler.rollout.outcome import Outcome
from reconciler.rollout.rollback import Rollbacks
from reconciler.rollout.runner import Aborted, Interrupted, RolloutFailed, RolloutRun
from reconciler.rollout.strategies import Strategy
from reconciler.spec.model import DesiredState, Resource, ResourceKey
from reconciler.state import store as st
from reconciler.state.store import DeploymentRecord


class Services(Rollbacks):
    """Service rollouts."""

    async def deploy_service(self, item: PlanItem, resource: Resource, target: Resource,
                             desired: DesiredState, trigger: str,
                             opened: list[DeploymentRecord], *,
                             on_detach: Callable[[], None] = lambda: None) -> Outcome:
        key, revision = item.key, item.revision
        assert revision is not None
        provider = self.provider_for(target)
        provider_name = str(target.spec.get("provider"))
        strategy = Strategy.of(resource)
        metrics.init_deployment_series(provider_name, strategy.type)
        previous = item.record.applied_revision if item.record else None
        dep = await self.store.create_deployment(
            key, from_revision=previous, to_revision=revision, config_commit=desired.commit,
            trigger=trigger, strategy=strategy.type, spec=resource.document())
        opened.append(dep)
        started = time.monotonic()
        await self.store.transition(dep.id, st.IN_PROGRESS,
                                    message=f"{strategy.type} via {provider_name}")
        await self.store.update_status(key, health_status="Progressing", sync_status="OutOfSync")
        self.emit(key, "deploying", f"{previous or 'nothing'} -> {revision} ({strategy.type})")
        self.failed_output.pop(key, None)  # only this deployment's gates count
        error: str | None = None
        failure: ReconcilerError | None = None  # its code and hint go with the outcome
        reason = "error"
        summary = ""
        run: RolloutRun | None = None
        try:
            release = self.release_for(resource, revision, desired.commit)
            run = RolloutRun(self, dep, provider, resource, release, strategy,
                             on_detach=on_detach)
            instances = [] if strategy.slotted else await provider.instances(resource)
            if instances:
                run.done = await self._gated_before(dep, provider, resource, revision)
            summary = await run.execute(instances)
        except Interrupted as exc:
            return await self._interrupted(dep, key, item, revision, str(exc))
        except StoreError:
            raise
        except Aborted as exc:
            error, reason, failure = exc.message, "abort", exc
        except RolloutFailed as exc:
            error, failure = exc.message, exc
            reason = exc.gate
        except ReconcilerError as exc:
            error, failure = exc.message, exc
        except (OSError, TimeoutError) as exc:
            error = f"{type(exc).__name__}: {exc}"
        except Exception as exc:  # unforeseen: this deployment fails, moved instances go back
            failure = failure_of(key, exc)
            error = recorded(failure)
        duration = time.monotonic() - started
        metrics.DEPLOYMENT_DURATION.labels(provider_name).observe(duration)
        if error is None:
            await self.store.transition(dep.id, st.SUCCEEDED, message=f"healthy: {summary}")
            await self.record_succeeded(key, revision, resource, desired.commit)
            metrics.DEPLOYMENTS_TOTAL.labels(provider_name, strategy.type, st.SUCCEEDED).inc()
            self.emit(key, "succeeded", f"{revision} healthy ({summary})")
            return Outcome(key, item.action, st.SUCCEEDED, revision, deployment=dep.identifier)
        # The deployment stays in_progress while it is reverted, and takes its final status
        # (rolled_back, rollback_failed, failed) in one transition: a crash mid-revert leaves
        # an open deployment with an open step, which recovery closes and the next pass redoes.
        self.emit(key, "failed", error, failure)
        # A revision a gate judged (health, analysis, an operator's abort) is remembered as bad
        # even when its rollback fails; one that met an unreachable target is not, so the
        # daemon retries it with backoff instead of waiting for a new commit.
        judged = reason in ("health", "analysis", "abort")
        if run is not None and strategy.slotted and run.slot_new is not None:
            status, message = await self.revert_slots(dep, run, key, revision, reason,
                                                        error, judged=judged)
        elif run is not None and run.moved:
            # Every instance moved so far goes back, newest batch first.
            status, message = await self.rollback(dep, provider, key, revision,
                                                  list(reversed(run.moved)), reason=reason,
                                                  error=error, judged=judged,
                                                  unreached=run.unreached)
        else:
            # Nothing was touched: nothing to roll back; the daemon retries with backoff.
            await self.store.transition(dep.id, st.FAILED, error=error, message=error)
            await self.store.update_status(key, last_result=st.FAILED, last_error=error,
                                           sync_status="OutOfSync")
            metrics.DEPLOYMENTS_TOTAL.labels(provider_name, strategy.type, st.FAILED).inc()
            return Outcome(key, item.action, st.FAILED, revision, error,
                           deployment=dep.identifier, code=failure.code if failure else "",
                           hint=failure.hint if failure else "",
                           last_output=self.failed_output.pop(key, ()))
        metrics.DEPLOYMENTS_TOTAL.labels(provider_name, strategy.type, status).inc()
        return Outcome(key, item.action, status, revision, f"{error}; {message}",
                       deployment=dep.identifier, code=failure.code if failure else "",
                       hint=failure.hint if failure else "",
                       last_output=self.failed_output.pop(key, ()))

    async def _gated_before(self, dep: DeploymentRecord, provider: Provider,
                            resource: Resource, revision: str) -> set[str]:
        """Instances that interrupted deployments of this same revision (the ones right
        before ``dep``, closed as cancelled by a stop or by recovery) moved and gated, and that
        still run it: a resumed rollout continues after them."""
        gated: set[str] = set()
        for earlier in await self.store.list_deployments(dep.key, limit=10):
            if earlier.id == dep.id:
                continue
            if earlier.status != st.CANCELLED or earlier.to_revision != revision:
                break
            gated |= {s.instance for s in earlier.steps
                      if s.action == "health" and s.status == "succeeded"}
        if not gated:
            return gated
        running = {s.instance.id for s in await provider.observe(resource)
                   if s.running and s.revision == revision}
        return gated & running

    async def _interrupted(self, dep: DeploymentRecord, key: ResourceKey, item: PlanItem,
                           revision: str, where: str) -> Outcome:
        """Stopping mid-rollout (SIGTERM): the deployment is closed as cancelled at a step
        boundary, and the next start deploys the same revision again (a resume: instances
        already moved are found at it)."""
        message = f"stopped at {where}; resumed by the next reconcile"
        await self.store.transition(dep.id, st.CANCELLED, message=message)
        await self.store.update_status(key, last_result=st.CANCELLED, last_error=message)
        self.emit(key, "interrupted", message)
        return Outcome(key, item.action, st.CANCELLED, revision, f"waiting: {message}",
                       deployment=dep.identifier, waiting=True)

