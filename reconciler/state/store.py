"""The store interface: every backend (SQLite, PostgreSQL, MySQL) implements ``Store``.

Records are plain dataclasses so the rest of the pipeline never sees a backend's row type.
Nothing here may hold a secret value: specs are stored with secret *references* only.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Protocol

from reconciler.errors import StoreError
from reconciler.spec.model import ResourceKey
from reconciler.state.notices import Claim

# Deployment statuses (docs/architecture.md "Deployment record").
PENDING = "pending"
IN_PROGRESS = "in_progress"
SUCCEEDED = "succeeded"
FAILED = "failed"
ROLLED_BACK = "rolled_back"
ROLLBACK_FAILED = "rollback_failed"
CANCELLED = "cancelled"
DEPLOYMENT_STATUSES = (
    PENDING, IN_PROGRESS, SUCCEEDED, FAILED, ROLLED_BACK, ROLLBACK_FAILED, CANCELLED
)
FINAL_STATUSES = frozenset({SUCCEEDED, FAILED, ROLLED_BACK, ROLLBACK_FAILED, CANCELLED})
UNFINISHED_STATUSES = frozenset({PENDING, IN_PROGRESS})

# Resource status vocabularies (the comments on ResourceRecord, as values backends can check).
SYNC_STATUSES = ("Synced", "OutOfSync", "Unknown")
HEALTH_STATUSES = ("Healthy", "Degraded", "Progressing", "Missing", "Suspended", "Unknown")
# Provider step journal: a step is "started" before the action runs, then finished once;
# "interrupted" closes a step a crash left open (its outcome is unknown).
STEP_STARTED = "started"
STEP_SUCCEEDED = "succeeded"
STEP_FAILED = "failed"
STEP_INTERRUPTED = "interrupted"
STEP_STATUSES = (STEP_STARTED, STEP_SUCCEEDED, STEP_FAILED, STEP_INTERRUPTED)

# Allowed journal transitions; anything else is a programming error and is refused.
TRANSITIONS: dict[str, frozenset[str]] = {
    PENDING: frozenset({IN_PROGRESS, CANCELLED, FAILED}),
    IN_PROGRESS: frozenset({SUCCEEDED, FAILED, ROLLED_BACK, ROLLBACK_FAILED, CANCELLED}),
    FAILED: frozenset({ROLLED_BACK, ROLLBACK_FAILED}),
}


class TransitionError(StoreError):
    """A deployment status change that TRANSITIONS does not allow (a programming error)."""

    code = "FR302"
    hint = ("a bug (deployment statuses only move forward, see TRANSITIONS in "
            "reconciler/state/store.py): report it with `reconciler history NAME -o json`")


@dataclass
class ResourceRecord:
    """What the store knows about one resource."""

    key: ResourceKey
    id: str
    desired_revision: str | None = None
    desired_hash: str | None = None
    desired_spec: dict[str, Any] | None = None
    applied_revision: str | None = None
    applied_hash: str | None = None
    applied_spec: dict[str, Any] | None = None
    config_commit: str | None = None
    sync_status: str = "Unknown"  # Synced | OutOfSync | Unknown
    # Healthy | Degraded | Progressing | Missing | Suspended | Unknown
    health_status: str = "Unknown"
    last_result: str | None = None  # a deployment status
    last_error: str | None = None
    failed_revision: str | None = None  # rolled back: not re-deployed until it changes
    suspended: bool = False
    deleted: bool = False
    updated_at: datetime | None = None
    # When health_status was last observed live (a gate, the daemon's check, `status --live`)
    health_observed_at: datetime | None = None


@dataclass
class DeploymentRecord:
    id: str
    identifier: str
    key: ResourceKey
    status: str
    from_revision: str | None
    to_revision: str
    config_commit: str | None
    trigger: str
    strategy: str
    error: str | None = None
    output: str | None = None
    exit_code: int | None = None
    spec: dict[str, Any] | None = None  # the document deployed (secret references only)
    created_at: datetime | None = None
    started_at: datetime | None = None
    finished_at: datetime | None = None
    events: list[DeploymentEvent] = field(default_factory=list)
    steps: list[StepRecord] = field(default_factory=list)


@dataclass
class DeploymentEvent:
    status: str
    message: str | None
    at: datetime


@dataclass
class StepRecord:
    id: str
    seq: int
    action: str
    instance: str
    status: str  # started | succeeded | failed | interrupted
    detail: str | None
    started_at: datetime
    finished_at: datetime | None = None


@dataclass
class LockInfo:
    """A lease as stored (it may have expired: compare ``expires_at`` with now)."""

    name: str
    owner: str
    acquired_at: datetime
    expires_at: datetime


@dataclass
class AuditRecord:
    """One audited state change: who (``actor``) did what (``action``) to which resource, at
    which config commit and revision, and how it ended (``outcome``, a deployment status).

    Actors: ``cli:<user>@<host>``, ``webhook:<provider>:<delivery id>``, ``poll``, ``watch``
    (a commit seen on the local repo), ``heal`` (drift), ``schedule``, ``replica:<owner>``,
    ``startup``, ``retry``, ``sighup``. Never a secret: messages are the same redacted texts
    the deployment journal keeps.
    """

    id: str
    identifier: str
    at: datetime
    actor: str
    action: str  # deploy | run | install | rollback | prune | suspend | resume | sync | …
    outcome: str  # a deployment status (succeeded, failed, rolled_back, …)
    resource: str | None = None  # "environment/Kind/name"
    deployment: str | None = None  # the deployment identifier ("…#n"), when there is one
    config_commit: str | None = None
    revision: str | None = None
    message: str | None = None


@dataclass
class MigrationInfo:
    version: int
    name: str
    checksum: str
    applied_at: datetime | None  # None: pending


class Store(Protocol):
    """Backend-neutral persistence of resources, the deployment journal and locks."""

    url: str

    # -- schema ------------------------------------------------------------------
    async def migrate(self) -> list[MigrationInfo]:
        """Apply pending migrations; return the ones applied now."""

    async def migration_status(self) -> list[MigrationInfo]: ...

    async def close(self) -> None: ...

    # -- resources ---------------------------------------------------------------
    async def get_resource(self, key: ResourceKey) -> ResourceRecord | None: ...

    async def get_resources(self, keys: Iterable[ResourceKey]
                            ) -> dict[ResourceKey, ResourceRecord]:
        """The records of those of ``keys`` the store has (documents included), read together:
        a plan reads the full records of every resource that changes."""

    async def list_resources(self, include_deleted: bool = False, *,
                             with_specs: bool = True) -> list[ResourceRecord]:
        """Every resource; ``with_specs=False`` leaves ``desired_spec``/``applied_spec`` None
        (a plan reads every row but needs the documents of the few that changed)."""

    async def plan_listing(self) -> list[ResourceRecord]:
        """Every resource not deleted, with only what a plan reads of it: key, id, applied
        and failed revision, last result, suspended; every other field at its default. For a
        one-shot plan (``diff``) that keeps no record: fewer columns to read and convert."""

    async def record_desired(
        self,
        key: ResourceKey,
        *,
        revision: str,
        spec_hash: str,
        spec: dict[str, Any],
        config_commit: str | None,
    ) -> ResourceRecord:
        """Create the resource if needed and store what git now wants."""

    async def record_applied(
        self,
        key: ResourceKey,
        *,
        revision: str,
        spec_hash: str,
        spec: dict[str, Any],
        config_commit: str | None,
    ) -> None:
        """The desired revision is now live (a deployment succeeded)."""

    async def update_status(self, key: ResourceKey, **fields: Any) -> None:
        """Set any of sync_status, health_status, last_result, last_error, failed_revision."""

    async def mark_observed(self, keys: Iterable[ResourceKey],
                            health_status: str | None = None) -> None:
        """These resources' health was observed now (and is ``health_status``, when given):
        one statement for many, so a check over a whole fleet stays cheap. Unknown keys are
        skipped."""

    async def set_suspended(self, key: ResourceKey, suspended: bool) -> None: ...

    async def mark_deleted(self, key: ResourceKey) -> None: ...

    # -- deployment journal -------------------------------------------------------
    async def create_deployment(
        self,
        key: ResourceKey,
        *,
        from_revision: str | None,
        to_revision: str,
        config_commit: str | None,
        trigger: str,
        strategy: str,
        spec: dict[str, Any] | None = None,
    ) -> DeploymentRecord:
        """Insert a ``pending`` deployment (and its first event)."""

    async def transition(
        self,
        deployment_id: str,
        status: str,
        *,
        message: str | None = None,
        error: str | None = None,
        output: str | None = None,
        exit_code: int | None = None,
    ) -> None:
        """Move a deployment to ``status`` (checked against TRANSITIONS) and log an event."""

    async def start_step(self, deployment_id: str, action: str, instance: str,
                         detail: str | None = None) -> str:
        """Journal a provider action *before* it runs; returns the step id."""

    async def finish_step(self, step_id: str, status: str, detail: str | None = None) -> None: ...

    async def get_deployment(self, deployment_id: str) -> DeploymentRecord | None: ...

    async def list_deployments(self, key: ResourceKey | None = None,
                               limit: int = 50) -> list[DeploymentRecord]:
        """Newest first, with events and steps."""

    async def unfinished_deployments(self) -> list[DeploymentRecord]:
        """Deployments left ``pending`` / ``in_progress`` (a crash): oldest first."""

    async def last_good(self, key: ResourceKey) -> DeploymentRecord | None:
        """The newest ``succeeded`` deployment of a resource."""

    # -- locks -----------------------------------------------------------------------
    async def acquire_lock(self, name: str, owner: str, ttl_seconds: float) -> bool:
        """Take or renew a named lease; False if another owner holds an unexpired one."""

    async def release_lock(self, name: str, owner: str) -> None: ...

    async def lock_owner(self, name: str) -> str | None:
        """Who holds an unexpired lease on ``name`` (None: free or expired)."""

    async def lock_owners(self, names: Sequence[str]) -> dict[str, str]:
        """``lock_owner`` of several names in one query: name -> owner of each unexpired one."""

    async def database_now(self) -> datetime:
        """The clock leases are judged by: the database server's (PostgreSQL, MySQL), this
        host's for SQLite (one host)."""

    async def list_locks(self) -> list[LockInfo]:
        """Every lease row, by name: lets crash recovery find (and release, passing the recorded
        owner to ``release_lock``) leases of a process that is gone."""

    # -- webhooks ----------------------------------------------------------------------
    async def record_delivery(self, provider: str, delivery_id: str) -> bool:
        """Remember a webhook delivery id; False when it was seen before (a replay)."""

    async def prune_deliveries(self, before: datetime) -> int:
        """Forget delivery ids received before ``before``; returns how many."""

    # -- audit -------------------------------------------------------------------------
    async def record_audit(
        self,
        action: str,
        *,
        actor: str,
        outcome: str,
        resource: ResourceKey | None = None,
        deployment: str | None = None,
        config_commit: str | None = None,
        revision: str | None = None,
        message: str | None = None,
    ) -> AuditRecord:
        """Append one audit event. (``transition`` writes one by itself, in its transaction,
        when a deployment reaches a final status; its actor is the current
        ``reconciler.state.audit`` actor, else derived from the deployment's trigger.)"""

    async def list_audit(self, limit: int = 50, resource: ResourceKey | None = None,
                         since: datetime | None = None) -> list[AuditRecord]:
        """Newest first; ``limit <= 0`` means all; ``since`` keeps events at or after it."""

    async def prune_audit(self, before: datetime, *, batch_size: int = 1000) -> int:
        """Delete audit events recorded before ``before`` (retention), in batches of
        ``batch_size`` rows, one transaction each; return how many were deleted."""

    # -- notifications (rules: reconciler/state/notices.py) --------------------------------
    async def claim_notice(self, destination: str, subject: str, kind: str, message_id: str,
                           repeat_s: float, *, continues: Collection[str] = ()) -> Claim:
        """Claim telling ``kind`` of ``subject`` to ``destination``: exactly one of the replicas
        sharing the database wins within ``repeat_s``."""

    async def close_notice(self, destination: str, subject: str) -> bool:
        """The problem is over; True when this call removed it (its recovery is to be sent)."""

    async def notice_delivered(self, message_id: str) -> None: ...

    async def release_notice(self, message_id: str) -> int:
        """Drop the undelivered claims of a message that could not be delivered."""
