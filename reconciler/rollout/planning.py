"""The plan of a desired state against the store's records: what a pass plans and what
``diff`` shows. Its own module, apart from the pass that runs the plan, so that a command that
only plans (``diff``) does not import the rollout machinery (docs/performance.md, session 9).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

from reconciler.errors import ReconcilerError
from reconciler.plan.planner import (
    SUSPENDED,
    UNCHANGED,
    UPDATE,
    Plan,
    item_changes,
    make_plan,
    name_target_changes,
    order_deletions,
    with_content_reason,
)
from reconciler.source.revisions import Revisions
from reconciler.spec.model import DesiredState, ResourceKey
from reconciler.state.store import Store


async def plan_against_store(
    store: Store,
    desired: DesiredState,
    revisions: Revisions,
    *,
    environments: set[str] | None = None,
    owns: Callable[[ResourceKey], bool] | None = None,
    prune: bool = False,
    force: bool = False,
    redeploy: Iterable[ResourceKey] = (),
    plan_rows: bool = False,
) -> Plan:
    """``make_plan`` of ``desired`` against the records of ``store`` (of ``environments``
    only, when given; the items ``owns`` says this replica holds, when given), with the full
    records and field changes of the items that act. ``plan_rows``: unchanged items' records
    carry only what the plan reads (``Store.plan_listing``)."""
    # Light records (no documents) for the whole fleet; full ones only where something
    # changes, so a plan costs O(changed) in document decoding, not O(fleet).
    records = (await store.plan_listing() if plan_rows
               else await store.list_resources(with_specs=False))
    if environments:
        desired = desired.only(environments)
        records = [r for r in records if r.key.environment in environments]
    # Revisions are resolved first (this may fetch an app repo): planning itself is pure.
    unresolved: dict[ResourceKey, Exception] = {}
    plan = make_plan(desired, records, revisions.resolve(desired, unresolved),
                     prune=prune, force=force, redeploy=redeploy)
    if unresolved:  # planned with a placeholder: fails when applied, the others go on
        for item in plan.items:
            exc = unresolved.get(item.key)
            if exc is not None:
                item.error, item.revision = exc, None
                message = exc.message if isinstance(exc, ReconcilerError) else repr(exc)
                item.reason = f"revision unknown: {message}"
    for item in plan.items:
        if (item.action == UPDATE and item.record is not None and item.resource is not None
                and item.error is None
                and item.record.applied_revision
                == revisions.legacy_revision_of(item.resource, desired)):
            # Applied before connection-only Target fields were left out of revisions:
            # the same deployment under its old name, not a reason to redeploy the fleet.
            item.action, item.reason, item.changes = UNCHANGED, "", []
            item.rerecord = True
    if owns is not None:
        plan.items = [i for i in plan.items if owns(i.key)]
        plan.order = [[k for k in layer if owns(k)] for layer in plan.order]
    changing = [item for item in plan.items
                if item.record is not None and item.action not in (UNCHANGED, SUSPENDED)]
    fulls = await store.get_resources(i.key for i in changing) if changing else {}
    for item in changing:
        full = fulls.get(item.key)
        if full is not None:
            item.record = full
            item.changes = item_changes(item)
            if item.action == UPDATE and not item.changes and item.resource is not None:
                # planned from a light record: the document's changes were unknown
                item.reason = with_content_reason(item.reason, item.resource)
    order_deletions(plan)  # by the recorded documents, read just above
    name_target_changes(plan)
    return plan
