"""Apply a plan through providers, journaling every action before it runs.

One ``reconcile(desired) -> ReconcileResult`` entry point (Flux's shape). For each resource:
record what git wants, create a ``pending`` deployment, then for every provider action write a
journal step first, act, and close the step. A Service is only ``succeeded`` once its health gate
passes; otherwise it is rolled back to the last good revision and recorded ``rolled_back``.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import os
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

from reconciler.errors import ReconcilerError, StoreError, UnexpectedError
from reconciler.health import wait_healthy
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
    item_changes,
    make_plan,
)
from reconciler.providers import (
    Exporter,
    Instance,
    Provider,
    ProviderContext,
    Release,
    load_provider,
)
from reconciler.rollout.runner import Aborted, Interrupted, RolloutFailed, RolloutRun
from reconciler.rollout.strategies import (
    BLUE_GREEN,
    ROLLING,
    SLOTS,
    Strategy,
    health_for,
    slot_resource,
)
from reconciler.source.git import GitSource
from reconciler.spec.durations import parse_duration
from reconciler.spec.model import DesiredState, Resource, ResourceKey, spec_hash
from reconciler.spec.secrets import resolve_env
from reconciler.state import store as st
from reconciler.state.audit import actor_for_trigger, current_actor
from reconciler.state.store import DeploymentRecord, ResourceRecord, Store

log = logging.getLogger("reconciler.rollout")

# Outcomes of one resource in one pass.
CONVERGED = "converged"
SKIPPED = "skipped"
# Planned revision of a resource whose revision could not be computed (never a real one).
UNRESOLVED = "unresolved"

ProgressFn = Callable[[ResourceKey, str, str], None]


@dataclass
class Outcome:
    key: ResourceKey
    action: str
    result: str  # converged | skipped | a deployment status
    revision: str | None = None
    message: str = ""
    deployment: str | None = None
    code: str = ""  # the FRnnn code of the error behind a failure (docs/errors.md)
    hint: str = ""  # its one-line remediation

    @property
    def ok(self) -> bool:
        return self.result in (CONVERGED, st.SUCCEEDED, SKIPPED) and not self.message.startswith(
            "waiting"
        )

    def to_json(self) -> dict[str, Any]:
        doc: dict[str, Any] = {"resource": str(self.key), "action": self.action,
                               "result": self.result, "revision": self.revision,
                               "message": self.message, "deployment": self.deployment}
        if self.code:
            doc.update(code=self.code, hint=self.hint)
        return doc


@dataclass(repr=False)
class ReconcileResult:
    commit: str | None
    outcomes: list[Outcome] = field(default_factory=list)
    duration_s: float = 0.0
    interrupted: bool = False

    def __repr__(self) -> str:  # short: asyncio reprs task results
        return (f"ReconcileResult(commit={self.commit!r}, resources={len(self.outcomes)}, "
                f"converged={self.converged})")

    @property
    def converged(self) -> bool:
        return not self.interrupted and all(o.ok for o in self.outcomes)

    def failed(self) -> list[Outcome]:
        return [o for o in self.outcomes if not o.ok]

    def to_json(self) -> dict[str, Any]:
        return {"commit": self.commit, "converged": self.converged,
                "durationSeconds": round(self.duration_s, 3),
                "resources": [o.to_json() for o in self.outcomes]}


class DeploymentFailed(ReconcilerError):
    code = "FR800"
    hint = ("`reconciler history NAME` shows the deployment and the step that failed; fix the "
            "cause named above and commit again (or `reconciler rollback NAME`)")
    exit_code = 1


LEASE_SECONDS = 60.0  # a resource lease; renewed every LEASE_SECONDS / 3 while deploying


def _start_time(pid: int) -> str | None:
    """The process start time (clock ticks since boot): tells a live pid from a reused one."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat.rsplit(")", 1)[1].split()[19]


def process_identity() -> str:
    """``host:pid:starttime`` — who holds a lease, checkable for liveness on this host."""
    pid = os.getpid()
    return f"{os.uname().nodename}:{pid}:{_start_time(pid) or 0}"


def owner_alive(owner: str) -> bool | None:
    """True/False for an owner on this host; None when it is elsewhere (trust the lease)."""
    host, _, rest = owner.partition(":")
    pid_text, _, start = rest.partition(":")
    if host != os.uname().nodename or not pid_text.isdigit():
        return None
    return _start_time(int(pid_text)) == start


def resource_from_document(key: ResourceKey, document: dict[str, Any],
                           file: str = "<recorded>") -> Resource:
    """Rebuild a Resource from a recorded document (for rollbacks and deletions)."""
    meta = document.get("metadata") or {}
    spec = document.get("spec") or {}
    deps: list[ResourceKey] = []
    res = Resource(key=key, labels=dict(meta.get("labels") or {}), spec=spec, file=file,
                   depends_on=deps)
    res.hash = spec_hash(res.document())
    return res


class Reconciler:
    """Drives desired state into the fleet. One instance per process; safe to call repeatedly."""

    def __init__(
        self,
        store: Store,
        *,
        state_dir: Path,
        source: GitSource | None = None,
        owner: str | None = None,
        progress: ProgressFn | None = None,
        concurrency: int = 8,
        environments: set[str] | None = None,
        owns: Callable[[ResourceKey], bool] | None = None,
    ) -> None:
        self.store = store
        self.state_dir = state_dir
        self.source = source
        self.owner = owner or process_identity()
        self.progress = progress
        self.concurrency = concurrency
        # Reconcile only these environments (None: all): other environments' records are
        # neither planned nor pruned.
        self.environments = environments or None
        # Replicas: only resources whose shard this process holds (None: all of them).
        self.owns = owns
        self.stopping = False  # set on SIGTERM: finish in-flight steps, start nothing new
        self._providers: dict[tuple[ResourceKey, str], Provider] = {}
        self._app_sources: dict[str, GitSource] = {}
        self._lost_leases: set[str] = set()
        # Service rollouts that outlived their pass (a canary paused until promoted): the task
        # holds the resource's lease; later passes leave the resource alone until it ends.
        self._rollouts: dict[ResourceKey, asyncio.Task[Outcome]] = {}
        # revision_of of resources without a source, by (document hash, Target's document hash):
        # a pure function of the two, and most of the per-resource cost of a no-op plan.
        self._revisions: dict[tuple[str, str], str] = {}

    # -- helpers --------------------------------------------------------------------------
    def _emit(self, key: ResourceKey, phase: str, message: str = "",
              error: ReconcilerError | None = None) -> None:
        extra: dict[str, Any] = {"resource": str(key), "phase": phase}
        if error is not None:  # the log line carries the code and remediation of the failure
            extra.update(code=error.code, hint=error.hint)
        log.info(message or phase, extra=extra)
        if self.progress:
            self.progress(key, phase, message)

    def provider_for(self, target: Resource) -> Provider:
        cache_key = (target.key, target.hash)
        provider = self._providers.get(cache_key)
        if provider is None:
            ctx = ProviderContext(state_dir=self.state_dir,
                                  logger=logging.getLogger(f"reconciler.provider.{target.name}"))
            provider = load_provider(target, ctx)
            self._providers[cache_key] = provider
        return provider

    async def close(self) -> None:
        if self.rollouts_in_progress:
            # Detached rollouts (paused canaries) stop at their next step boundary, closed as
            # cancelled: the next start resumes them.
            self.stopping = True
            await self.finish_rollouts()
        for provider in self._providers.values():
            try:
                await provider.close()
            except Exception as exc:  # closing must not mask the pass's own result
                log.warning("provider close failed", extra={"error": str(exc)})
        self._providers.clear()

    def _app_source(self, spec: dict[str, Any]) -> GitSource:
        repo = str(spec["repo"])
        src = self._app_sources.get(repo)
        if src is None:
            src = GitSource(repo, ref=spec.get("ref"), state_dir=self.state_dir)
            self._app_sources[repo] = src
        return src

    def revision_of(self, resource: Resource, desired: DesiredState) -> str:
        """Content address of what would be deployed: the document, its Target, and the
        identity of its source (a git tree id, an app commit, an artifact digest)."""
        target = desired.target_of(resource)
        memo: tuple[str, str] | None = None
        if resource.hash and not resource.spec.get("source") and (target is None or target.hash):
            memo = (resource.hash, target.hash if target is not None else "")
            known = self._revisions.get(memo)
            if known is not None:
                return known
        parts = [_deploy_hash(resource)]
        if target is not None:
            parts.append(_deploy_hash(target))
        source = resource.spec.get("source") or {}
        if "path" in source and self.source is not None and desired.commit:
            parts.append(self.source.tree_id(desired.commit, str(source["path"])) or "missing")
        elif "git" in source:
            app = self._app_source(source["git"])
            parts.append(app.sync().commit)
        elif "artifact" in source:
            parts.append(str(source["artifact"].get("sha256", "")))
        revision = hashlib.sha256("\0".join(parts).encode()).hexdigest()[:12]
        if memo is not None:
            if (len(self._revisions) >= 100_000
                    and len(self._revisions) >= 2 * len(desired.resources)):
                self._revisions.clear()
            self._revisions[memo] = revision
        return revision

    def release_for(self, resource: Resource, revision: str, commit: str | None) -> Release:
        env = resolve_env(resource.spec.get("env") or {})
        source = resource.spec.get("source") or {}
        export: Exporter | None = None
        if "path" in source:
            if self.source is None or commit is None:
                raise DeploymentFailed(f"{resource.key}: source.path needs a config repo commit")
            export = partial(self.source.export, commit, str(source["path"]))
        elif "git" in source:
            app = self._app_source(source["git"])
            app_commit = app.commit or app.sync().commit
            export = partial(app.export, app_commit, str(source["git"].get("path", "")))
        elif "artifact" in source:
            from reconciler.source.artifact import fetch_artifact

            artifact = source["artifact"]
            export = partial(fetch_artifact, str(artifact["url"]), str(artifact["sha256"]))
        return Release(resource=resource, revision=revision, config_commit=commit,
                       export=export, env=env)

    # -- crash recovery ---------------------------------------------------------------------
    async def recover(self) -> list[ResourceKey]:
        """Close deployments a crash left open. They are marked ``cancelled`` with the step that
        was interrupted; the resource keeps its last applied revision, so the next plan deploys
        the desired one again (resume) — or, if it is gone from git, prunes/orphans it."""
        resumed: list[ResourceKey] = []
        for dep in await self.store.unfinished_deployments():
            if self.owns is not None and not self.owns(dep.key):
                continue  # another replica's shard
            running = self._rollouts.get(dep.key)
            if running is not None and not running.done():
                continue  # our own detached rollout (a paused canary), alive and well
            holder = await self.store.lock_owner(f"resource:{dep.key}")
            if holder is not None and holder != self.owner:
                if owner_alive(holder) is not False:
                    continue  # a live reconciler (or an unexpired remote lease) is on it
                await self.store.release_lock(f"resource:{dep.key}", holder)
            open_steps = [s for s in dep.steps if s.finished_at is None]
            for step in open_steps:
                await self.store.finish_step(step.id, "interrupted", "reconciler stopped")
            where = open_steps[-1].action if open_steps else "before the first step"
            await self.store.transition(
                dep.id, st.CANCELLED,
                message=f"interrupted during {where}; resumed by the next reconcile",
            )
            await self.store.update_status(dep.key, last_result=st.CANCELLED,
                                           last_error=f"interrupted during {where}")
            log.warning("recovered interrupted deployment",
                        extra={"resource": str(dep.key), "deployment": dep.identifier})
            resumed.append(dep.key)
        return resumed

    # -- planning ---------------------------------------------------------------------------
    async def plan(self, desired: DesiredState, *, prune: bool = False, force: bool = False,
                   redeploy: Iterable[ResourceKey] = ()) -> Plan:
        with gc_paused():
            return await self._plan(desired, prune=prune, force=force, redeploy=redeploy)

    async def _plan(self, desired: DesiredState, *, prune: bool, force: bool,
                    redeploy: Iterable[ResourceKey]) -> Plan:
        # Light records (no documents) for the whole fleet; full ones only where something
        # changes, so a plan costs O(changed) in document decoding, not O(fleet).
        records = await self.store.list_resources(with_specs=False)
        if self.environments:
            desired = desired.only(self.environments)
            records = [r for r in records if r.key.environment in self.environments]
        unresolved: dict[ResourceKey, Exception] = {}

        def revision(resource: Resource) -> str:
            # One resource whose revision cannot be computed must not stop the plan of the
            # others: it is planned with a placeholder and fails when applied.
            try:
                return self.revision_of(resource, desired)
            except StoreError:
                raise
            except Exception as exc:
                unresolved[resource.key] = exc
                return UNRESOLVED

        plan = make_plan(desired, records, revision, prune=prune, force=force,
                         redeploy=redeploy)
        if unresolved:
            for item in plan.items:
                exc = unresolved.get(item.key)
                if exc is not None:
                    item.error, item.revision = exc, None
                    message = exc.message if isinstance(exc, ReconcilerError) else repr(exc)
                    item.reason = f"revision unknown: {message}"
        if self.owns is not None:
            owns = self.owns
            plan.items = [i for i in plan.items if owns(i.key)]
            plan.order = [[k for k in layer if owns(k)] for layer in plan.order]
        for item in plan.items:
            if item.record is not None and item.action not in (UNCHANGED, SUSPENDED):
                full = await self.store.get_resource(item.key)
                if full is not None:
                    item.record = full
                    item.changes = item_changes(item)
        return plan

    async def drift_of(self, resource: Resource, record: ResourceRecord,
                       desired: DesiredState) -> str | None:
        """Why the live state of an applied Service differs from its record (None: it does
        not). Observed through the provider: a stopped process, a moved release, a replaced
        container, a commit changed by hand."""
        target = desired.target_of(resource)
        if target is None or record.applied_revision is None:
            return None
        provider = self.provider_for(target)
        strategy = Strategy.of(resource)
        if strategy.slotted:
            # Slots: in sync when one slot runs the applied revision on every instance.
            details = []
            for slot in SLOTS:
                slotted = slot_resource(resource, slot, int(strategy.ports[slot]))
                states = await provider.observe(slotted)
                if states and all(s.running and s.revision in (None, record.applied_revision)
                                  for s in states):
                    return None
                details += [f"{s.instance.id} (slot {slot}): {s.detail or 'not running'}"
                            for s in states if s.running or s.detail]
            return ", ".join(details) or "no slot runs the applied revision"
        states = await provider.observe(resource)
        bad = [s for s in states if not s.running
               or (s.revision is not None and s.revision != record.applied_revision)]
        if states and not bad:
            return None
        return ", ".join(f"{s.instance.id}: {s.detail or 'not running'}"
                         + (f" (revision {s.revision})" if s.running else "")
                         for s in bad) or "no instance found"

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
            return await self._reconcile(desired, trigger=trigger, prune=prune, force=force,
                                         only=only, redeploy=redeploy)

    async def _reconcile(self, desired: DesiredState, *, trigger: str, prune: bool, force: bool,
                         only: Iterable[ResourceKey] | None,
                         redeploy: Iterable[ResourceKey]) -> ReconcileResult:
        started = time.monotonic()
        for key, task in list(self._rollouts.items()):
            if task.done():  # a detached rollout ended since the last pass
                self._rollouts.pop(key, None)
                if not task.cancelled() and task.exception() is not None:
                    log.error("detached rollout failed", extra={
                        "resource": str(key), "error": repr(task.exception())})
        resumed = set(await self.recover())
        with span("plan"):
            plan = await self.plan(desired, prune=prune, force=force, redeploy=redeploy)
        result = ReconcileResult(commit=desired.commit)
        selected = set(only) if only is not None else None
        outcomes: dict[ResourceKey, Outcome] = {}
        sem = asyncio.Semaphore(self.concurrency)

        async def run(item: PlanItem) -> None:
            async with sem:
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
                                                 message)
                    self._emit(item.key, "waiting", message)
                    return
                why = "resume" if item.key in resumed else trigger
                opened: list[DeploymentRecord] = []  # the deployment this attempt created
                try:
                    with span("rollout", resource=str(item.key), action=item.action,
                              revision=item.revision or ""):
                        outcomes[item.key] = await self._apply_item(item, desired, why, opened)
                except (StoreError, Interrupted):
                    # The database itself failed (disk full, server gone): not this resource's
                    # fault. The pass ends with the store's code and hint; the journal written
                    # so far lets the next start recover. Interrupted: stopping, resumed later.
                    raise
                except Exception as exc:
                    # The boundary of one resource: errors before a deployment exists (secrets,
                    # provider config) and anything unforeseen are recorded on the resource
                    # (and its deployment, never left in_progress), and the pass goes on.
                    failure = self._failure(item.key, exc)
                    for dep in opened:
                        await self._close_failed(dep, failure)
                    await self.store.update_status(item.key, last_result=st.FAILED,
                                                   last_error=_recorded(failure))
                    outcomes[item.key] = Outcome(item.key, item.action, st.FAILED, item.revision,
                                                 _recorded(failure), code=failure.code,
                                                 hint=failure.hint)
                    self._emit(item.key, "failed", _recorded(failure), failure)

        # A DAG, not waves: each resource starts as soon as what it depends on (and its
        # Target) is done, so one slow rollout holds only its dependents. Waiting only on
        # resources earlier in the plan order rules out a deadlock even on a leftover cycle;
        # only resources that act this pass are waited on (the others are done already).
        # plan.items is plan.order flattened, deletions moved to its end.
        acting: list[PlanItem] = []
        for i in plan.items:
            k = i.key
            if (selected is not None and k not in selected) or i.action == DELETE:
                continue
            if i.action == UNCHANGED:
                # Nothing to do, and no task, event or span for it: a no-op pass over a
                # large fleet must stay cheap.
                outcomes[k] = Outcome(k, i.action, CONVERGED, i.revision)
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
            with gc_resumed():
                for item in deletes:
                    await run(item)
        result.outcomes = [outcomes[i.key] for i in plan.items if i.key in outcomes]
        result.duration_s = time.monotonic() - started
        metrics.RECONCILE_DURATION.observe(result.duration_s)
        converged = result.converged
        metrics.RECONCILE_TOTAL.labels("converged" if converged else "failed").inc()
        if converged:
            metrics.LAST_SUCCESSFUL_SYNC.set_to_current_time()
        acted = any(o.result != CONVERGED for o in result.outcomes)
        # A no-op pass changed no status: publish from the records the plan already read.
        await self.publish_metrics(None if acted else [i.record for i in plan.items
                                                       if i.record is not None])
        return result

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

    @staticmethod
    def _failure(key: ResourceKey, exc: Exception) -> ReconcilerError:
        """The project's error for ``exc``; an unforeseen one is logged with its traceback."""
        if isinstance(exc, ReconcilerError):
            return exc
        log.error("unexpected error; this resource failed, the pass goes on",
                  exc_info=exc, extra={"resource": str(key), "error_type": type(exc).__name__,
                                       "code": UnexpectedError.code})
        return UnexpectedError.of(exc)

    async def _close_failed(self, dep: DeploymentRecord, failure: ReconcilerError) -> None:
        """An error escaped a deployment's own handling: close it (and its open steps) as
        failed, so it never stays in_progress."""
        current = await self.store.get_deployment(dep.id)
        if current is None or current.status not in st.UNFINISHED_STATUSES:
            return
        for step in current.steps:
            if step.finished_at is None:
                await self.store.finish_step(step.id, st.STEP_FAILED, failure.code)
        text = _recorded(failure)
        await self.store.transition(dep.id, st.FAILED, error=text, message=text)

    async def _apply_item(self, item: PlanItem, desired: DesiredState, trigger: str,
                          opened: list[DeploymentRecord] | None = None) -> Outcome:
        key = item.key
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
            self._emit(key, DEFERRED, item.reason)
            return Outcome(key, item.action, SKIPPED, item.revision, item.reason)
        if item.action in (BLOCKED, ORPHAN):
            sync = "OutOfSync"
            await self.store.update_status(key, sync_status=sync)
            self._emit(key, item.action, item.reason)
            return Outcome(key, item.action, item.action, item.revision, item.reason)
        if item.action == DELETE:
            return await self._delete(item, desired, opened)
        resource = item.resource
        assert resource is not None and item.revision is not None
        await self.store.record_desired(key, revision=item.revision, spec_hash=resource.hash,
                                        spec=resource.document(), config_commit=desired.commit)
        if key.kind == "Target":
            await self.store.record_applied(key, revision=item.revision, spec_hash=resource.hash,
                                            spec=resource.document(),
                                            config_commit=desired.commit)
            await self.store.update_status(key, sync_status="Synced", health_status="Healthy",
                                           last_result=st.SUCCEEDED, last_error=None)
            await self._audit_target(key, "deploy", trigger, revision=item.revision,
                                     config_commit=desired.commit,
                                     message=f"target recorded ({item.action})")
            self._emit(key, "synced", f"target recorded at {item.revision}")
            return Outcome(key, item.action, CONVERGED, item.revision)
        target = desired.target_of(resource)
        if target is None:
            raise DeploymentFailed(f"{key}: target {resource.spec.get('target')!r} not found")
        running = self._rollouts.get(key)
        if running is not None and not running.done():
            msg = "waiting: a rollout of this resource is in progress (paused or waiting)"
            return Outcome(key, item.action, SKIPPED, item.revision, msg)
        lock = f"resource:{key}"
        if not await self.take_lease(lock):
            holder = await self.store.lock_owner(lock)
            msg = f"resource lock held by {holder or 'another reconciler'}"
            self._emit(key, "locked", msg)
            return Outcome(key, item.action, SKIPPED, item.revision, f"waiting: {msg}")
        self._lost_leases.discard(lock)
        if key.kind != "Service":
            renew = asyncio.create_task(self._renew(lock))
            try:
                return await self._deploy_runnable(item, resource, target, desired, trigger,
                                                   opened)
            finally:
                renew.cancel()
                await asyncio.gather(renew, return_exceptions=True)
                await self.store.release_lock(lock, self.owner)
        detached = asyncio.Event()

        async def rollout() -> Outcome:
            renew = asyncio.create_task(self._renew(lock))
            try:
                return await self._deploy_service(item, resource, target, desired, trigger,
                                                  opened, on_detach=detached.set)
            except Exception as exc:
                if detached.is_set() and not isinstance(exc, (StoreError, Interrupted)):
                    # A paused rollout no pass awaits any more: close its deployment here.
                    failure = self._failure(key, exc)
                    for dep in opened:
                        await self._close_failed(dep, failure)
                    await self.store.update_status(key, last_result=st.FAILED,
                                                   last_error=_recorded(failure))
                raise
            finally:
                renew.cancel()
                await asyncio.gather(renew, return_exceptions=True)
                await self.store.release_lock(lock, self.owner)

        task = asyncio.create_task(rollout())
        self._rollouts[key] = task
        waiter = asyncio.create_task(detached.wait())
        try:
            await asyncio.wait({task, waiter}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            waiter.cancel()
        if task.done():
            self._rollouts.pop(key, None)
            return task.result()
        msg = "waiting: rollout paused (`reconciler promote` / `abort`, or `resume`)"
        self._emit(key, "paused", msg)
        return Outcome(key, item.action, SKIPPED, item.revision, msg)

    @property
    def rollouts_in_progress(self) -> list[ResourceKey]:
        return [k for k, t in self._rollouts.items() if not t.done()]

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
        while self._rollouts:
            key, task = next(iter(self._rollouts.items()))
            try:
                outcomes.append(await task)
            finally:
                self._rollouts.pop(key, None)
        return outcomes

    async def take_lease(self, name: str) -> bool:
        """Take a resource lease; a lease left by a dead process on this host is taken over."""
        if await self.store.acquire_lock(name, self.owner, ttl_seconds=LEASE_SECONDS):
            return True
        holder = await self.store.lock_owner(name)
        if holder is not None and owner_alive(holder) is False:
            log.warning("taking over a lease of a dead reconciler",
                        extra={"lock": name, "holder": holder})
            await self.store.release_lock(name, holder)
            return await self.store.acquire_lock(name, self.owner, ttl_seconds=LEASE_SECONDS)
        return False

    async def _renew(self, name: str) -> None:
        while True:
            await asyncio.sleep(LEASE_SECONDS / 3)
            try:
                renewed = await self.store.acquire_lock(name, self.owner,
                                                        ttl_seconds=LEASE_SECONDS)
            except ReconcilerError as exc:
                log.warning("lease renewal failed", extra={"lock": name, "error": exc.message})
                continue  # the lease is still ours until it expires; try again
            if not renewed:
                # Another reconciler took the resource (we stalled past the TTL): no further
                # provider step may start under this deployment.
                log.error("lease lost; stopping this deployment", extra={"lock": name})
                self._lost_leases.add(name)
                return

    # -- Services ----------------------------------------------------------------------------
    async def _deploy_service(self, item: PlanItem, resource: Resource, target: Resource,
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
        self._emit(key, "deploying", f"{previous or 'nothing'} -> {revision} ({strategy.type})")
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
            summary = await run.execute(instances)
        except Interrupted as exc:
            return await self._interrupted(dep, key, item, revision, str(exc))
        except StoreError:
            raise
        except Aborted as exc:
            error, reason, failure = exc.message, "abort", exc
        except RolloutFailed as exc:
            error, failure = exc.message, exc
            reason = "analysis" if "analysis" in error else "health"
        except ReconcilerError as exc:
            error, failure = exc.message, exc
        except (OSError, TimeoutError) as exc:
            error = f"{type(exc).__name__}: {exc}"
        except Exception as exc:  # unforeseen: this deployment fails, moved instances go back
            failure = self._failure(key, exc)
            error = _recorded(failure)
        duration = time.monotonic() - started
        metrics.DEPLOYMENT_DURATION.labels(provider_name).observe(duration)
        if error is None:
            await self.store.transition(dep.id, st.SUCCEEDED, message=f"healthy: {summary}")
            await self.store.record_applied(key, revision=revision, spec_hash=resource.hash,
                                            spec=resource.document(),
                                            config_commit=desired.commit)
            await self.store.update_status(key, sync_status="Synced", health_status="Healthy",
                                           last_result=st.SUCCEEDED, last_error=None,
                                           failed_revision=None)
            metrics.DEPLOYMENTS_TOTAL.labels(provider_name, strategy.type, st.SUCCEEDED).inc()
            self._emit(key, "succeeded", f"{revision} healthy ({summary})")
            return Outcome(key, item.action, st.SUCCEEDED, revision, deployment=dep.identifier)
        # The deployment stays in_progress while it is reverted, and takes its final status
        # (rolled_back, rollback_failed, failed) in one transition: a crash mid-revert leaves
        # an open deployment with an open step, which recovery closes and the next pass redoes.
        self._emit(key, "failed", error, failure)
        # A revision a gate judged (health, analysis, an operator's abort) is remembered as bad
        # even when its rollback fails; one that met an unreachable target is not, so the
        # daemon retries it with backoff instead of waiting for a new commit.
        judged = reason in ("health", "analysis", "abort")
        if run is not None and strategy.slotted and run.slot_new is not None:
            status, message = await self._revert_slots(dep, run, key, revision, reason,
                                                        error, judged=judged)
        elif run is not None and run.moved:
            # Every instance moved so far goes back, newest batch first.
            status, message = await self._rollback(dep, provider, key, revision,
                                                   list(reversed(run.moved)), reason=reason,
                                                   error=error, judged=judged)
        else:
            # Nothing was touched: nothing to roll back; the daemon retries with backoff.
            await self.store.transition(dep.id, st.FAILED, error=error, message=error)
            await self.store.update_status(key, last_result=st.FAILED, last_error=error,
                                           sync_status="OutOfSync")
            metrics.DEPLOYMENTS_TOTAL.labels(provider_name, strategy.type, st.FAILED).inc()
            return Outcome(key, item.action, st.FAILED, revision, error,
                           deployment=dep.identifier, code=failure.code if failure else "",
                           hint=failure.hint if failure else "")
        metrics.DEPLOYMENTS_TOTAL.labels(provider_name, strategy.type, status).inc()
        return Outcome(key, item.action, status, revision, f"{error}; {message}",
                       deployment=dep.identifier, code=failure.code if failure else "",
                       hint=failure.hint if failure else "")

    async def _interrupted(self, dep: DeploymentRecord, key: ResourceKey, item: PlanItem,
                           revision: str, where: str) -> Outcome:
        """Stopping mid-rollout (SIGTERM): the deployment is closed as cancelled at a step
        boundary, and the next start deploys the same revision again (a resume: instances
        already moved are found at it)."""
        message = f"stopped at {where}; resumed by the next reconcile"
        await self.store.transition(dep.id, st.CANCELLED, message=message)
        await self.store.update_status(key, last_result=st.CANCELLED, last_error=message)
        self._emit(key, "interrupted", message)
        return Outcome(key, item.action, st.CANCELLED, revision, f"waiting: {message}",
                       deployment=dep.identifier)

    async def _revert_slots(self, dep: DeploymentRecord, run: RolloutRun, key: ResourceKey,
                            bad_revision: str, reason: str,
                            error: str | None = None, *, judged: bool = True
                            ) -> tuple[str, str]:
        """A slotted rollout failed: traffic back to the old slot (still running), new slot
        stopped. Nothing is redeployed, which is the point of slots."""
        metrics.ROLLBACKS_TOTAL.labels(reason).inc()
        self._emit(key, "rolling back", "traffic back to the old slot")
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
            self._emit(key, "rollback failed", failed)
            return st.ROLLBACK_FAILED, message
        await self.store.transition(dep.id, st.ROLLED_BACK, message=message, error=error)
        await self.store.update_status(key, last_result=st.ROLLED_BACK, health_status="Healthy",
                                       sync_status="OutOfSync", failed_revision=bad_revision,
                                       last_error=error or dep.error)
        self._emit(key, "rolled back", message)
        return st.ROLLED_BACK, message

    async def _health_gate(self, deployment_id: str, provider: Provider, resource: Resource,
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

    async def _step(self, deployment_id: str, action: str, instance: Instance,
                    operation: Any, detail: str = "") -> Any:
        """Journal first, then act: a crash between the two leaves an open step to recover."""
        if self._lost_leases:
            dep = await self.store.get_deployment(deployment_id)
            if dep is not None and f"resource:{dep.key}" in self._lost_leases:
                raise DeploymentFailed(f"{dep.key}: lease lost to another reconciler; "
                                       f"{action} not started")
        step = await self.store.start_step(deployment_id, action, instance.id, detail or None)
        try:
            with span(f"provider.{action}", instance=instance.id):
                value = await operation
        except BaseException as exc:
            message = exc.message if isinstance(exc, ReconcilerError) else type(exc).__name__
            await self.store.finish_step(step, "failed", message)
            raise
        await self.store.finish_step(step, "succeeded", detail or None)
        return value

    async def _rollback(self, dep: DeploymentRecord, provider: Provider, key: ResourceKey,
                        bad_revision: str, instances: list[Instance],
                        reason: str, error: str | None = None, *, judged: bool = True
                        ) -> tuple[str, str]:
        """Back to the last good revision recorded in the database (not memory)."""
        good = await self.store.last_good(key)
        if good is None or good.to_revision == bad_revision or not good.spec:
            # Nothing to go back to: take the broken release down and leave it failed; the
            # daemon retries with backoff.
            for instance in instances:
                try:
                    await self._step(dep.id, "stop", instance,
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
        self._emit(key, "rolling back", f"-> {good.to_revision}")
        metrics.ROLLBACKS_TOTAL.labels(reason).inc()
        try:
            release = self.release_for(previous, good.to_revision, good.config_commit)
        except ReconcilerError as exc:
            return await self._rollback_ended(
                dep, key, bad_revision, error, failed=exc.message, judged=judged,
                message=f"rollback to {good.to_revision} failed: {exc.message}")
        # Every instance is tried even when one fails: an unreachable host must not leave the
        # reachable ones on the bad revision. The failures are reported together.
        failures: list[str] = []
        for instance in instances:
            try:
                await self._step(dep.id, "rollback", instance, provider.deploy(release, instance),
                                 f"revision {good.to_revision}")
                healthy, message = await self._health_gate(dep.id, provider, previous, instance)
                if not healthy:
                    raise DeploymentFailed(f"{instance.id}: previous revision unhealthy: {message}")
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

    # -- Jobs and Schedules -------------------------------------------------------------------
    async def _deploy_runnable(self, item: PlanItem, resource: Resource, target: Resource,
                               desired: DesiredState, trigger: str,
                               opened: list[DeploymentRecord]) -> Outcome:
        """A Job runs to completion on each new revision; a Schedule is installed (the daemon's
        scheduler, or the provider's own timer, runs it on its cron schedule)."""
        key, revision = item.key, item.revision
        assert revision is not None
        provider = self.provider_for(target)
        provider_name = str(target.spec.get("provider"))
        previous = item.record.applied_revision if item.record else None
        strategy = "run" if key.kind == "Job" else "install"
        metrics.init_deployment_series(provider_name, strategy)
        dep = await self.store.create_deployment(
            key, from_revision=previous, to_revision=revision, config_commit=desired.commit,
            trigger=trigger, strategy=strategy, spec=resource.document())
        opened.append(dep)
        await self.store.transition(dep.id, st.IN_PROGRESS)
        self._emit(key, "running" if key.kind == "Job" else "installing", revision)
        error: str | None = None
        output: str | None = None
        exit_code: int | None = None
        try:
            release = self.release_for(resource, revision, desired.commit)
            instances = await provider.instances(resource)
            if key.kind == "Job":
                attempts = 1 + int(resource.spec.get("backoffLimit", 0))
                for attempt in range(attempts):
                    outputs = []
                    exit_code = 0
                    for instance in instances:
                        run = await self._step(dep.id, "run", instance,
                                               provider.run(release, instance),
                                               f"attempt {attempt + 1}/{attempts}")
                        outputs.append(run.output)
                        exit_code = exit_code or run.exit_code
                    output = "\n".join(outputs)[-65536:]
                    if exit_code == 0:
                        break
                    error = f"exited with code {exit_code}"
                    if attempt + 1 < attempts:
                        await asyncio.sleep(min(2 ** attempt, 30))
                if exit_code == 0:
                    error = None
                metrics.JOB_RUNS_TOTAL.labels("Job", "succeeded" if exit_code == 0
                                              else "failed").inc()
            else:
                for instance in instances:
                    await self._step(dep.id, "install", instance,
                                     provider.deploy(release, instance), f"revision {revision}")
        except ReconcilerError as exc:
            error = exc.message
        except (OSError, TimeoutError) as exc:
            error = f"{type(exc).__name__}: {exc}"
        except Exception as exc:  # unforeseen: this run fails, the pass goes on
            error = _recorded(self._failure(key, exc))
        if error is None:
            await self.store.transition(dep.id, st.SUCCEEDED, output=output, exit_code=exit_code)
            await self.store.record_applied(key, revision=revision, spec_hash=resource.hash,
                                            spec=resource.document(),
                                            config_commit=desired.commit)
            await self.store.update_status(key, sync_status="Synced", health_status="Healthy",
                                           last_result=st.SUCCEEDED, last_error=None,
                                           failed_revision=None)
            metrics.DEPLOYMENTS_TOTAL.labels(provider_name, strategy, st.SUCCEEDED).inc()
            self._emit(key, "succeeded", f"{revision}" + (f" exit {exit_code}"
                                                          if exit_code is not None else ""))
            return Outcome(key, item.action, st.SUCCEEDED, revision, deployment=dep.identifier)
        await self.store.transition(dep.id, st.FAILED, error=error, output=output,
                                    exit_code=exit_code, message=error)
        await self.store.update_status(key, sync_status="OutOfSync", health_status="Degraded",
                                       last_result=st.FAILED, last_error=error)
        metrics.DEPLOYMENTS_TOTAL.labels(provider_name, strategy, st.FAILED).inc()
        self._emit(key, "failed", error)
        return Outcome(key, item.action, st.FAILED, revision, error, deployment=dep.identifier)

    async def run_schedule(self, resource: Resource, target: Resource, record: ResourceRecord,
                           trigger: str = "schedule") -> DeploymentRecord:
        """One run of an installed Schedule at its applied revision, journaled like a Job."""
        key = resource.key
        revision = record.applied_revision or ""
        provider = self.provider_for(target)
        dep = await self.store.create_deployment(
            key, from_revision=revision, to_revision=revision, config_commit=record.config_commit,
            trigger=trigger, strategy="run", spec=resource.document())
        await self.store.transition(dep.id, st.IN_PROGRESS)
        error: str | None = None
        output = ""
        exit_code: int | None = None
        try:
            release = self.release_for(resource, revision, record.config_commit)
            for instance in await provider.instances(resource):
                run = await self._step(dep.id, "run", instance, provider.run(release, instance))
                output += run.output
                exit_code = exit_code or run.exit_code
            if exit_code:
                error = f"exited with code {exit_code}"
        except ReconcilerError as exc:
            error = exc.message
        except Interrupted:
            raise
        except Exception as exc:  # unforeseen: this run fails, never left in_progress
            error = _recorded(self._failure(key, exc))
        status = st.SUCCEEDED if error is None else st.FAILED
        await self.store.transition(dep.id, status, error=error, output=output[-65536:],
                                    exit_code=exit_code, message=error)
        await self.store.update_status(key, last_result=status, last_error=error,
                                       health_status="Healthy" if error is None else "Degraded")
        metrics.JOB_RUNS_TOTAL.labels("Schedule", status).inc()
        self._emit(key, "ran", error or f"exit {exit_code}")
        found = await self.store.get_deployment(dep.id)
        assert found is not None
        return found

    # -- manual rollback ----------------------------------------------------------------------
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
        target = await self._target_from_store(resource)
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
        self._emit(key, "rolling back", f"-> {choice.to_revision}")
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
                    await self._step(dep.id, "install", instance,
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
        self._emit(key, "rolled back", f"now at {choice.to_revision}")
        return Outcome(key, "rollback", st.SUCCEEDED, choice.to_revision, "rolled back",
                       dep.identifier)

    # -- deletion ---------------------------------------------------------------------------
    async def _delete(self, item: PlanItem, desired: DesiredState,
                      opened: list[DeploymentRecord]) -> Outcome:
        key, record = item.key, item.record
        assert record is not None
        if key.kind != "Target":
            document = record.applied_spec or record.desired_spec or {}
            resource = resource_from_document(key, document)
            target = self._recorded_target(resource, desired)
            target_doc = target or await self._target_from_store(resource)
            if target_doc is not None:
                provider = self.provider_for(target_doc)
                dep = await self.store.create_deployment(
                    key, from_revision=record.applied_revision,
                    to_revision=record.applied_revision or "none", config_commit=desired.commit,
                    trigger="prune", strategy="delete", spec=document)
                opened.append(dep)
                await self.store.transition(dep.id, st.IN_PROGRESS, message="pruning")
                try:
                    for variant in variants_of(resource):
                        for instance in await provider.instances(variant):
                            await self._step(dep.id, "remove", instance,
                                             provider.remove(variant, instance))
                except ReconcilerError as exc:
                    await self.store.transition(dep.id, st.FAILED, error=exc.message)
                    return Outcome(key, DELETE, st.FAILED, None, exc.message, dep.identifier)
                await self.store.transition(dep.id, st.SUCCEEDED, message="removed")
        await self.store.mark_deleted(key)
        if key.kind == "Target":
            await self._audit_target(key, "prune", "prune", revision=record.applied_revision,
                                     config_commit=desired.commit, message="target removed")
        self._emit(key, "deleted")
        return Outcome(key, DELETE, st.SUCCEEDED, None, "removed")

    async def _audit_target(self, key: ResourceKey, action: str, trigger: str, *,
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

    async def _target_from_store(self, resource: Resource) -> Resource | None:
        tkey = resource.target_key
        if tkey is None:
            return None
        rec = await self.store.get_resource(tkey)
        if rec is None or not (rec.applied_spec or rec.desired_spec):
            return None
        return resource_from_document(tkey, rec.applied_spec or rec.desired_spec or {})


# Document hash -> the hash without sync windows (a function of the document): a Target with
# windows is hashed again for every resource on it otherwise.
_WINDOWLESS: dict[str, str] = {}


def _recorded(failure: ReconcilerError) -> str:
    """What a failure leaves on the resource and deployment: an unforeseen error carries its
    code in the text (nothing else tells it apart there); the others their message."""
    return failure.recorded if isinstance(failure, UnexpectedError) else failure.message


def _deploy_hash(resource: Resource) -> str:
    """The document's hash without its sync windows: they say when a change may go out, not
    what runs, so editing them must not make every resource on a Target a new revision."""
    if "syncWindows" not in resource.spec:
        return resource.hash
    known = _WINDOWLESS.get(resource.hash) if resource.hash else None
    if known is not None:
        return known
    document = resource.document()
    document["spec"] = {k: v for k, v in resource.spec.items() if k != "syncWindows"}
    digest = spec_hash(document)
    if resource.hash:
        if len(_WINDOWLESS) >= 20_000:
            _WINDOWLESS.clear()
        _WINDOWLESS[resource.hash] = digest
    return digest


def variants_of(resource: Resource) -> list[Resource]:
    """The resource as providers know it: itself, plus its slots when its strategy has ports
    (blue-green, weighted canary run each slot under its own name)."""
    strategy = resource.spec.get("strategy") or {}
    ports = strategy.get("ports") if isinstance(strategy, dict) else None
    if not ports:
        return [resource]
    return [resource, *(slot_resource(resource, slot, int(ports[slot])) for slot in SLOTS)]


def parse_seconds(value: Any, default: float) -> float:
    return parse_duration(str(value)) if value is not None else default
