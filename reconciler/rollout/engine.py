"""Apply a plan through providers, journaling every action before it runs.

One ``reconcile(desired) -> ReconcileResult`` entry point (Flux's shape). For each resource:
record what git wants, create a ``pending`` deployment, then for every provider action write a
journal step first, act, and close the step. A Service is only ``succeeded`` once its health gate
passes; otherwise it is rolled back to the last good revision and recorded ``rolled_back``.

``Reconciler`` is the façade; each job is a module of its own:

- outcome.py: what a resource's turn and a pass came to (``Outcome``, ``ReconcileResult``)
- core.py: what the parts share (store, loaded providers, detached rollouts, events)
- passes.py: planning and the pass scheduler (a DAG of resources, deletions last)
- leases.py: resource leases (take, take over from the dead, renew)
- releases.py: the ``Release`` of a resource at a revision; resources from recorded documents
- journal.py: journal first, then act (one step per provider action)
- gate.py: the health gate of one instance
- services.py / rollback.py: Service rollouts, and reverting them
- heal.py: self-heal of a drifted Service, only its drifted instances (also when blocked)
- runnables.py: Jobs and Schedules
- prune.py: deleting what git no longer has
- operator.py: operator actions (manual rollback)
- recovery.py: closing what a crash left open, or adopting what it had finished
- ``reconciler.source.revisions``: revisions, resolved before planning
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path

from reconciler.providers import Provider
from reconciler.rollout.leases import LEASE_SECONDS, owner_alive, process_identity
from reconciler.rollout.operator import OperatorActions
from reconciler.rollout.outcome import (
    CONVERGED,
    SKIPPED,
    DeploymentFailed,
    Outcome,
    ProgressFn,
    ReconcileResult,
)
from reconciler.rollout.passes import Passes
from reconciler.rollout.releases import resource_from_document, variants_of
from reconciler.rollout.status_sink import CommitStatusSink
from reconciler.rollout.strategies import SLOTS, Strategy, slot_resource
from reconciler.source.git import GitSource
from reconciler.source.revisions import Revisions
from reconciler.spec.model import DesiredState, Resource, ResourceKey
from reconciler.state.store import ResourceRecord, Store

__all__ = [
    "CONVERGED",
    "LEASE_SECONDS",
    "SKIPPED",
    "DeploymentFailed",
    "Outcome",
    "ProgressFn",
    "ReconcileResult",
    "Reconciler",
    "owner_alive",
    "process_identity",
    "resource_from_document",
    "variants_of",
]


class Reconciler(Passes, OperatorActions):
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
        status_sink: CommitStatusSink | None = None,
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
        self._retired: list[Provider] = []
        self.lost_leases: set[str] = set()
        # Service rollouts that outlived their pass (a canary paused until promoted): the task
        # holds the resource's lease; later passes leave the resource alone until it ends.
        self.rollouts: dict[ResourceKey, asyncio.Task[Outcome]] = {}
        self.running_deployments: set[str] = set()
        self.applying: dict[ResourceKey, float] = {}
        self.failed_output: dict[ResourceKey, tuple[str, ...]] = {}
        self.revisions = Revisions(source, state_dir)
        self.status_sink = status_sink

    def revision_of(self, resource: Resource, desired: DesiredState) -> str:
        """Content address of what would be deployed (``reconciler.source.revisions``)."""
        return self.revisions.revision_of(resource, desired)

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

