"""``copy_store``: move the recorded history from one store to another (e.g. SQLite to
PostgreSQL when a fleet outgrows the embedded database). What ``reconciler db copy`` runs.

Copied: every resource (deleted ones too) with its desired/applied state and statuses, every
deployment with its events and steps, and the audit trail, keeping ids, identifiers
(``env/Kind/name#n``), statuses and timestamps. Not copied: leases (they belong to running
processes and expire anyway) and webhook delivery ids (a short-lived replay guard). A
resource's ``created_at`` is not part of the Store interface: the copy uses its first
deployment's time (or its last update).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from reconciler.errors import StoreError
from reconciler.spec.model import ResourceKey
from reconciler.state.server_store import ServerStore
from reconciler.state.store import Store


@dataclass(frozen=True)
class CopyResult:
    resources: int
    deployments: int
    events: int
    steps: int
    audit: int = 0


async def copy_store(src: Store, dst: Store) -> CopyResult:
    """Copy ``src``'s history into ``dst`` (migrated, and empty: refused otherwise).

    Resources are copied first, then deployments oldest first, then audit events. Each row is
    its own transaction with the backends' usual retry: an interrupted copy leaves a partial
    destination, which the emptiness check then refuses; drop and re-create that database and
    copy again.
    """
    if not isinstance(dst, ServerStore):
        raise StoreError(f"db copy writes to PostgreSQL or MySQL, not {type(dst).__name__}")
    if not await dst.is_empty():
        raise StoreError("the destination database already holds resources or deployments; "
                         "copy into a freshly migrated, empty database")
    resources = await src.list_resources(include_deleted=True)
    deployments = list(reversed(await src.list_deployments(limit=0)))  # oldest first
    first_seen: dict[ResourceKey, datetime] = {}
    for deployment in deployments:
        if deployment.created_at is not None:
            first_seen.setdefault(deployment.key, deployment.created_at)
    for resource in resources:
        created = first_seen.get(resource.key) or resource.updated_at
        if created is None:
            raise StoreError(f"{resource.key}: no timestamp to copy")
        await dst.import_resource(resource, created)
    events = steps = 0
    for deployment in deployments:
        await dst.import_deployment(deployment)
        events += len(deployment.events)
        steps += len(deployment.steps)
    audit = list(reversed(await src.list_audit(limit=0)))  # oldest first
    for event in audit:
        await dst.import_audit(event)
    return CopyResult(len(resources), len(deployments), events, steps, len(audit))


__all__ = ["CopyResult", "copy_store"]
