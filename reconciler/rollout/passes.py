"""One reconcile pass: plan, then every acting resource as soon as what it depends on is done (a
DAG, bounded concurrency), deletions last; each resource leased while it deploys.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Iterable

from reconciler.errors import StoreError
from reconciler.observe import metrics
from reconciler.observe.tracing import span
from reconciler.plan.planner import (
    BLOCKED,
    CREATE,
    DEFERRED,
    DELETE,
    ORPHAN,
    SUSPENDED,
    UNCHANGED,
    UPDATE,
    Plan,
    PlanItem,
    gc_paused,
    gc_resumed,
    recorded_target,
)
from reconciler.rollout.core import MAX_IN_FLIGHT
from reconciler.rollout.failures import fail_resource, recorded
from reconciler.rollout.heal import Healing
from reconciler.rollout.leases import Leases
from reconciler.rollout.outcome import (
    CONVERGED,
    SKIPPED,
    DeploymentFailed,
    Outcome,
    ReconcileResult,
)
from reconciler.rollout.planning import plan_against_store
from reconciler.rollout.prune import Pruning
from reconciler.rollout.recovery import Recovered, Recovery
from reconciler.rollout.runnables import Runnables
from reconciler.rollout.runner import Interrupted
from reconciler.rollout.services import Services
from reconciler.rollout.status_sink import report_finished, report_started
from reconciler.spec.model import DesiredState, ResourceKey
from reconciler.state import store as st
from reconciler.state.store import DeploymentRecord, ResourceRecord

log = logging.getLogger("reconciler.rollout")


class Passes(Services, Healing, Runnables, Recovery, Pruning, Leases):
    """Planning and running one reconcile pass."""

    # -- planning ---------------------------------------------------------------------------
    async def plan(self, desired: DesiredState, *, prune: bool = False, force: bool = False,
                   redeploy: Iterable[ResourceKey] = (), plan_rows: bool = False) -> Plan:
        """The plan against the recorded state. ``plan_rows``: the records of unchanged items
        carry only what the plan reads (``Store.plan_listing``), for a caller that shows the
        plan and keeps no record (``diff``)."""
        with gc_paused():
            return await self._plan(desired, prune=prune, force=force, redeploy=redeploy,
                                    plan_rows=plan_rows)

    async def _plan(self, desired: DesiredState, *, prune: bool, force: bool,
                    redeploy: Iterable[ResourceKey], plan_rows: bool = False) -> Plan:
        return await plan_against_store(
            self.store, desired, self.revisions, environments=self.environments,
            owns=self.owns, prune=prune, force=force, redeploy=redeploy, plan_rows=plan_rows)

    # -- the pass ---------------------------------------------------------------------------
    async def reconcile(
        self,
        desired: DesiredState,
        *,
        trigger: str = "apply",
        prune: bool = False,
        force: bool = False,
        only: Iterable[ResourceKey] | None = None,
        redeploy: Iterable[ResourceKey] = (),
    ) -> ReconcileResult:
        # The collector stays off but while resources are rolled out: a no-op pass is all
        # bookkeeping (gc_paused).
        with span("reconcile", commit=desired.commit or "", trigger=trigger), gc_paused():
            started = time.monotonic()
            for key, task in list(self.rollouts.items()):
                if task.done():  # a detached rollout ended since the last pass
                    self.rollouts.pop(key, None)
                    if not task.cancelled() and task.exception() is not None:
                        log.error("detached rollout failed", extra={
                            "resource": str(key), "error": repr(task.exception())})
            await self.close_retired_providers()
            recovered = await self.recover()
            try:
                result = await self._reconcile(desired, recovered, started, trigger=trigger,
                                               prune=prune, force=force, only=only,
                                               redeploy=redeploy)
            except BaseException:
                await recovered.abandon()
                raise
            self.retire_providers_of_deleted_targets(desired)
            await self.close_retired_providers()  # a Target this pass found edited or deleted
            return result

    async def _reconcile(self, desired: DesiredState, recovered: Recovered, started: float, *,
                         trigger: str, prune: bool, force: bool,
                         only: Iterable[ResourceKey] | None,
                         redeploy: Iterable[ResourceKey]) -> ReconcileResult:
        healing = set(redeploy)  # drifted: only their drifted instances are redeployed
        with span("plan"):
            plan = await self.plan(desired, prune=prune, force=force, redeploy=redeploy)
        result = ReconcileResult(commit=desired.commit)
        selected = set(only) if only is not None else None
        outcomes: dict[ResourceKey, Outcome] = {}
        # Concurrency follows the Targets (their hosts), not the count of resources: each Target
        # runs up to `concurrency` rollouts at once (its provider caps the actions per host),
        # so 20 one-host Targets are all busy at once instead of 8 of them; a global cap keeps
        # a pass over hundreds of Targets within the store's and the event loop's means.
        in_flight = asyncio.Semaphore(max(self.concurrency, MAX_IN_FLIGHT))
        per_target: dict[ResourceKey | None, asyncio.Semaphore] = {}

        def slots(item: PlanItem) -> asyncio.Semaphore:
            target = (item.resource.target_key if item.resource is not None
                      else recorded_target(item))
            sem = per_target.get(target)
            if sem is None:
                sem = per_target[target] = asyncio.Semaphore(
                    self.rollouts_per_target(desired.get(target) if target else None))
            return sem

        if self.status_sink is not None:  # only queued: never waits on a git host
            report_started(self.status_sink, desired.commit, plan.items, selected)

        async def run(item: PlanItem) -> None:
            # an interrupted deployment of this resource being adopted ends first
            adopted, resumed = await recovered.adoption(item.key)
            if adopted is not None and item.action in (CREATE, UPDATE, UNCHANGED) \
                    and item.revision == adopted.revision:
                outcomes[item.key] = Outcome(
                    item.key, item.action, st.SUCCEEDED, item.revision,
                    f"adopted after an interruption: {adopted.instances} instance(s) ran it",
                    deployment=adopted.deployment, adopted=True)
                return
            if adopted is not None and item.record is not None:
                # git moved on since: deployed from what was adopted, not the record planned
                item.record = await self.store.get_resource(item.key) or item.record
            async with in_flight, slots(item):
                if self.stopping:
                    result.interrupted = True
                    return
                blocked_by = self._blocking_dependency(item, outcomes)
                if blocked_by is not None:
                    dep_out = outcomes[blocked_by]
                    message = (f"waiting for {blocked_by} (dependency {dep_out.result}"
                               + (f": {dep_out.message[:200]}" if dep_out.message else "") + ")")
                    if item.resource is not None and item.revision is not None:
                        # Recorded so `status` shows what git wants and why it is not live.
                        await self.store.record_desired(
                            item.key, revision=item.revision, spec_hash=item.resource.hash,
                            spec=item.resource.document(), config_commit=desired.commit)
                        await self.store.update_status(item.key, sync_status="OutOfSync",
                                                       last_error=message)
                    outcomes[item.key] = Outcome(item.key, item.action, SKIPPED, item.revision,
                                                 message, waiting=True)
                    self.emit(item.key, "waiting", message)
                    return
                why = "resume" if resumed else trigger
                opened: list[DeploymentRecord] = []  # the deployment this attempt created
                self.applying[item.key] = time.monotonic()
                try:
                    with span("rollout", resource=str(item.key), action=item.action,
                              revision=item.revision or ""):
                        outcomes[item.key] = await self._apply_item(
                            item, desired, why, opened, heal=item.key in healing)
                except (StoreError, Interrupted):
                    # The database itself failed (disk full, server gone): not this resource's
                    # fault. The pass ends with the store's code and hint; the journal written
                    # so far lets the next start recover. Interrupted: stopping, resumed later.
                    raise
                except Exception as exc:
                    # The boundary of one resource: errors before a deployment exists (secrets,
                    # provider config) and anything unforeseen are recorded on the resource
                    # (and its deployment, never left in_progress), and the pass goes on.
                    failure = await fail_resource(self.store, item.key, exc, opened)
                    outcomes[item.key] = Outcome(item.key, item.action, st.FAILED, item.revision,
                                                 recorded(failure), code=failure.code,
                                                 hint=failure.hint)
                    self.emit(item.key, "failed", recorded(failure), failure)
                finally:
                    self.applying.pop(item.key, None)

        # A DAG, not waves: each resource starts as soon as what it depends on (and its
        # Target) is done, so one slow rollout holds only its dependents. Waiting only on
        # resources earlier in the plan order rules out a deadlock even on a leftover cycle;
        # only resources that act this pass are waited on (the others are done already).
        # plan.items is plan.order flattened, deletions moved to its end.
        acting: list[PlanItem] = []
        rerecorded = False
        for i in plan.items:
            k = i.key
            if (selected is not None and k not in selected) or i.action == DELETE:
                continue
            if i.action == UNCHANGED and i.key not in recovered.adoptions:
                # Nothing to do, and no task, event or span for it: a no-op pass over a
                # large fleet must stay cheap.
                outcomes[k] = Outcome(k, i.action, CONVERGED, i.revision)
                if i.rerecord and i.resource is not None and i.revision is not None:
                    await self.store.record_applied(
                        k, revision=i.revision, spec_hash=i.resource.hash,
                        spec=i.resource.document(), config_commit=desired.commit)
                    rerecorded = True
                if desired_moved(i):  # a plain comparison: no await for the common case
                    await self._rerecord_desired(i, desired)
                    rerecorded = True
            else:
                acting.append(i)
        if acting:
            position = {i.key: n for n, i in enumerate(acting)}
            finished = {i.key: asyncio.Event() for i in acting}

            async def when_ready(item: PlanItem) -> None:
                try:
                    resource = item.resource
                    needs = list(resource.depends_on) if resource is not None else []
                    if resource is not None and resource.target_key is not None:
                        needs.append(resource.target_key)
                    for dep in needs:
                        if dep in finished and position[dep] < position[item.key]:
                            await finished[dep].wait()
                    await run(item)
                finally:
                    finished[item.key].set()

            with gc_resumed():
                await asyncio.gather(*(when_ready(i) for i in acting))
        deletes = [i for i in plan.items if i.action == DELETE
                   and (selected is None or i.key in selected)]
        if deletes:
            # Deletions run in reverse dependency order (a Target's resources before it); a
            # Target whose resource could not be pruned stays, so the next pass still knows
            # where that resource runs and how to reach it.
            kept_targets: set[ResourceKey] = set()
            with gc_resumed():
                for item in deletes:
                    if item.key in kept_targets:
                        message = "waiting: a resource on this Target could not be pruned"
                        outcomes[item.key] = Outcome(item.key, item.action, SKIPPED, None,
                                                     message, waiting=True)
                        self.emit(item.key, "waiting", message)
                        continue
                    await run(item)
                    out = outcomes.get(item.key)
                    target = recorded_target(item)
                    if out is not None and not out.ok and target is not None:
                        kept_targets.add(target)
        await recovered.settle()  # adoptions of resources that did not act this pass
        result.outcomes = [outcomes[i.key] for i in plan.items if i.key in outcomes]
        if self.status_sink is not None:
            report_finished(self.status_sink, desired.commit, plan.items, outcomes,
                            interrupted=result.interrupted)
        result.duration_s = time.monotonic() - started
        metrics.RECONCILE_DURATION.observe(result.duration_s)
        converged = result.converged
        metrics.RECONCILE_TOTAL.labels("converged" if converged else "failed").inc()
        if converged:
            metrics.LAST_SUCCESSFUL_SYNC.set_to_current_time()
        acted = rerecorded or any(o.result != CONVERGED for o in result.outcomes)
        # A no-op pass changed no status: publish from the records the plan already read.
        await self.publish_metrics(None if acted else [i.record for i in plan.items
                                                       if i.record is not None])
        return result

    async def _rerecord_desired(self, item: PlanItem, desired: DesiredState) -> None:
        """An unchanged item whose record still names another desired revision (git went back
        to the applied one, say by reverting a commit that was rolled back) is recorded as
        wanted again, which makes it Synced."""
        resource = item.resource
        assert resource is not None and item.revision is not None
        await self.store.record_desired(item.key, revision=item.revision,
                                        spec_hash=resource.hash, spec=resource.document(),
                                        config_commit=desired.commit)

    async def publish_metrics(self, records: list[ResourceRecord] | None = None) -> None:
        if records is None:
            records = await self.store.list_resources(with_specs=False)
        rows = [(r.key.environment, r.key.kind, r.key.name, r.sync_status, r.health_status)
                for r in records]
        metrics.publish_resources(rows)

    def _blocking_dependency(self, item: PlanItem,
                             outcomes: dict[ResourceKey, Outcome]) -> ResourceKey | None:
        if item.resource is None or item.action not in (CREATE, UPDATE):
            return None
        for dep in item.resource.depends_on:
            out = outcomes.get(dep)
            if out is not None and not out.ok:
                return dep
        return None

    async def _apply_item(self, item: PlanItem, desired: DesiredState, trigger: str,
                          opened: list[DeploymentRecord] | None = None, *,
                          heal: bool = False) -> Outcome:
        key = item.key
        # Drift of an applied Service: its drifted instances go back to the applied revision
        # (also when git's revision is blocked), the others are left alone.
        heal = heal and self.heals_per_instance(item)
        if item.error is not None and item.action in (CREATE, UPDATE):
            raise item.error  # its revision could not be computed (see _plan)
        opened = opened if opened is not None else []
        if item.action in (UNCHANGED, SUSPENDED):
            return Outcome(key, item.action, CONVERGED if item.action == UNCHANGED else SKIPPED,
                           item.revision, item.reason)
        if item.action == DEFERRED:
            # Outside its sync window: shown as pending, applied by the pass after it opens.
            await self.store.update_status(key, sync_status="OutOfSync",
                                           last_error=item.reason or "deferred")
            self.emit(key, DEFERRED, item.reason)
            return Outcome(key, item.action, SKIPPED, item.revision, item.reason)
        if item.action in (BLOCKED, ORPHAN) and not heal:
            sync = "OutOfSync"
            await self.store.update_status(key, sync_status=sync)
            self.emit(key, item.action, item.reason)
            return Outcome(key, item.action, item.action, item.revision, item.reason)
        if item.action == DELETE:
            return await self.delete(item, desired, opened)
        resource = item.resource
        assert resource is not None and item.revision is not None
        if item.action != BLOCKED:
            await self.store.record_desired(key, revision=item.revision,
                                            spec_hash=resource.hash, spec=resource.document(),
                                            config_commit=desired.commit)
        if key.kind == "Target":
            await self.store.record_applied(key, revision=item.revision, spec_hash=resource.hash,
                                            spec=resource.document(),
                                            config_commit=desired.commit)
            await self.store.update_status(key, sync_status="Synced", health_status="Healthy",
                                           last_result=st.SUCCEEDED, last_error=None)
            await self.audit_target(key, "deploy", trigger, revision=item.revision,
                                    config_commit=desired.commit,
                                    message=f"target recorded ({item.action})")
            self.emit(key, "synced", f"target recorded at {item.revision}")
            return Outcome(key, item.action, CONVERGED, item.revision)
        target = desired.target_of(resource)
        if target is None:
            raise DeploymentFailed(f"{key}: target {resource.spec.get('target')!r} not found")
        running = self.rollouts.get(key)
        if running is not None and not running.done():
            msg = "waiting: a rollout of this resource is in progress (paused or waiting)"
            return Outcome(key, item.action, SKIPPED, item.revision, msg, waiting=True)
        lock = f"resource:{key}"
        if not await self.take_lease(lock):
            holder = await self.store.lock_owner(lock)
            msg = f"resource lock held by {holder or 'another reconciler'}"
            self.emit(key, "locked", msg)
            return Outcome(key, item.action, SKIPPED, item.revision, f"waiting: {msg}",
                           waiting=True)
        self.lost_leases.discard(lock)
        if key.kind == "Service" and not heal and item.action in (CREATE, UPDATE):
            # The plan was read before the lease: another reconciler (a replica that held the
            # shard until now, an `apply` beside the daemon) may have deployed it meanwhile.
            now = await self.store.get_resource(key)
            if (now is not None and now.applied_revision == item.revision
                    and now.applied_hash == resource.hash):
                await self.store.release_lock(lock, self.owner)
                msg = f"{item.revision} was deployed meanwhile by another reconciler"
                self.emit(key, "synced", msg)
                return Outcome(key, item.action, CONVERGED, item.revision, msg)
        if key.kind != "Service" or heal:
            runnable = key.kind != "Service"
            renew = asyncio.create_task(self.renew(lock))
            try:
                if runnable:
                    return await self.deploy_runnable(item, resource, target, desired, trigger,
                                                      opened)
                return await self.heal_service(item, target, desired, trigger, opened)
            finally:
                renew.cancel()
                await asyncio.gather(renew, return_exceptions=True)
                await self.store.release_lock(lock, self.owner)
        detached = asyncio.Event()

        async def rollout() -> Outcome:
            renew = asyncio.create_task(self.renew(lock))
            try:
                return await self.deploy_service(item, resource, target, desired, trigger,
                                                 opened, on_detach=detached.set)
            except Exception as exc:
                if detached.is_set() and not isinstance(exc, (StoreError, Interrupted)):
                    # A paused rollout no pass awaits any more: close its deployment here.
                    await fail_resource(self.store, key, exc, opened)
                raise
            finally:
                renew.cancel()
                await asyncio.gather(renew, return_exceptions=True)
                await self.store.release_lock(lock, self.owner)

        task = asyncio.create_task(rollout())
        self.rollouts[key] = task
        waiter = asyncio.create_task(detached.wait())
        try:
            await asyncio.wait({task, waiter}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            waiter.cancel()
        if task.done():
            self.rollouts.pop(key, None)
            return task.result()
        msg = "waiting: rollout paused (`reconciler promote` / `abort`, or `resume`)"
        self.emit(key, "paused", msg)
        return Outcome(key, item.action, SKIPPED, item.revision, msg, waiting=True)


def desired_moved(item: PlanItem) -> bool:
    """Does the record name another desired revision than the plan (only then is it written:
    a no-op pass reads the records it already has and writes nothing)?"""
    record, resource = item.record, item.resource
    if record is None or resource is None or item.revision is None:
        return False
    return record.desired_revision != item.revision or record.desired_hash != resource.hash
