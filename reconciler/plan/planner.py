"""Desired state vs recorded state → an ordered plan (no side effects)."""

from __future__ import annotations

import contextlib
import gc
from collections import Counter
from collections.abc import Iterable, Iterator, Mapping
from contextvars import ContextVar
from dataclasses import dataclass, field
from datetime import UTC, datetime
from json import dumps
from json.encoder import encode_basestring_ascii
from operator import attrgetter
from typing import Any

from reconciler.plan.diff import FieldChange, diff_documents
from reconciler.plan.ordering import layered, waves
from reconciler.plan.windows import Deferrals, iso, windows_ignored
from reconciler.spec.model import DesiredState, Resource, ResourceKey
from reconciler.state.store import ResourceRecord

CREATE = "create"
UPDATE = "update"
DELETE = "delete"
UNCHANGED = "unchanged"
BLOCKED = "blocked"  # the desired revision was rolled back: waits for a new commit (or --force)
SUSPENDED = "suspended"
ORPHAN = "orphan"  # recorded but gone from git, and pruning is off
DEFERRED = "deferred"  # a change outside its sync window: applied when the window opens

ACTING = frozenset({CREATE, UPDATE, DELETE})
_IN_SYNC = frozenset({UNCHANGED, SUSPENDED})
DRIFT = "drift"  # `diff --live`: recorded as applied, but the live state differs
SYMBOLS = {CREATE: "+", UPDATE: "~", DELETE: "-", ORPHAN: "-", BLOCKED: "!", SUSPENDED: "=",
           DEFERRED: ">", UNCHANGED: " ", DRIFT: "~"}


@dataclass
class PlanItem:
    key: ResourceKey
    action: str
    revision: str | None
    resource: Resource | None = None
    record: ResourceRecord | None = None
    changes: list[FieldChange] = field(default_factory=list)
    reason: str = ""
    opens_at: datetime | None = None  # DEFERRED: when its sync windows next allow the change
    # The revision could not be computed (an app repository that cannot be cloned, …): the
    # item fails with this error when applied; the rest of the plan is unaffected.
    error: Exception | None = None
    # UNCHANGED, but applied under an older revision formula (``legacy_revision_of``): the
    # pass records ``revision`` as applied without deploying anything.
    rerecord: bool = False

    @property
    def in_sync(self) -> bool:
        return self.action in _IN_SYNC

    def to_json(self) -> dict[str, Any]:
        environment, kind, name = key = self.key
        record = self.record
        doc: dict[str, Any] = {
            "resource": "/".join(key),  # str(key), without a Python-level __str__ call
            "environment": environment,
            "kind": kind,
            "name": name,
            "action": self.action,
            "revision": self.revision,
            "appliedRevision": record.applied_revision if record is not None else None,
            "reason": self.reason,
        }
        if self.action == DEFERRED:
            doc["opensAt"] = iso(self.opens_at) if self.opens_at else None
        doc["changes"] = [c.to_json() for c in self.changes] if self.changes else []
        return doc


_action_of = attrgetter("action")
# The parts of an item's text that follow from (environment, kind, action), made once each.
_Heads = dict[tuple[str, str, str], tuple[str, str, str]]


def _plain_items_text(items: Iterable[PlanItem], parts: list[str]) -> None:
    """``PlanItem.to_json`` of each item as JSON text, as ``json.dumps`` writes it, appended
    to ``parts``: an item without changes whose values are plain strings written from them
    directly (the parts that follow from (environment, kind, action) made once), any other
    through ``json.dumps``. One loop with no call per item: it runs for every resource of
    the fleet."""
    heads: _Heads = {}
    enc = encode_basestring_ascii
    for item in items:
        record = item.record
        applied = record.applied_revision if record is not None else None
        environment, kind, name = item.key
        revision, reason, action = item.revision, item.reason, item.action
        if (item.changes or action == DEFERRED
                or not (type(environment) is type(kind) is type(name) is type(action)
                        is type(reason) is str)
                or not (revision is None or type(revision) is str)
                or not (applied is None or type(applied) is str)):
            parts.append(dumps(item.to_json(), default=str))
            continue
        head = heads.get((environment, kind, action))
        if head is None:
            # a JSON string escapes character by character: the text of "env/kind/" + name
            # is that of "env/kind/" without its closing quote, then that of name without
            # its opening one
            head = heads[(environment, kind, action)] = (
                '{"resource": ' + enc(f"{environment}/{kind}/")[:-1],
                f', "environment": {enc(environment)}, "kind": {enc(kind)}, "name": ',
                f', "action": {enc(action)}, "revision": ')
        quoted = enc(name)
        revision_text = "null" if revision is None else enc(revision)
        applied_text = (revision_text if applied == revision
                        else "null" if applied is None else enc(applied))
        parts.append(f'{head[0]}{quoted[1:]}{head[1]}{quoted}{head[2]}{revision_text}, '
                     f'"appliedRevision": {applied_text}, "reason": '
                     f'{enc(reason) if reason else _EMPTY}, "changes": []}}')


_EMPTY = encode_basestring_ascii("")


@dataclass(repr=False)
class Plan:
    commit: str | None
    items: list[PlanItem]
    order: list[list[ResourceKey]]

    def __repr__(self) -> str:
        # Short on purpose: asyncio reprs finished task results, and a 10,000-item default
        # repr took most of a second.
        return f"Plan(commit={self.commit!r}, items={len(self.items)}, {self.counts()})"

    @property
    def in_sync(self) -> bool:
        return all(action in _IN_SYNC for action in self.counts())

    def by_key(self) -> dict[ResourceKey, PlanItem]:
        return {i.key: i for i in self.items}

    def counts(self) -> dict[str, int]:
        """Items by action, in the order each action first appears (counted in C)."""
        return dict(Counter(map(_action_of, self.items)))

    def to_json(self) -> dict[str, Any]:
        return {
            "commit": self.commit,
            "inSync": self.in_sync,
            "summary": self.counts(),
            "resources": [i.to_json() for i in self.items],
        }

    def json_text(self) -> str:
        """``json.dumps(self.to_json(), default=str)``, the same text, without a dict per
        item: an item with no changes (every unchanged resource of a fleet) is written from
        its strings directly (``diff -o json`` prints every item; a dict each and their
        encoding were ~45 ms of a 10,000-resource warm diff)."""
        return "".join(self.json_pieces())

    def json_pieces(self, items_per_piece: int = 256) -> Iterator[str]:
        """``json_text`` in pieces, in order (joined, they are that text): ``diff`` writes
        a long plan out piece by piece, without one string of all of it and its copies (for
        10,000 resources ~9 MB of memory, a tenth of the process's, each page of it a fault)."""
        counts = self.counts()
        head = {"commit": self.commit, "inSync": all(a in _IN_SYNC for a in counts),
                "summary": counts}
        yield dumps(head, default=str)[:-1] + ', "resources": ['
        items = self.items
        for start in range(0, len(items), items_per_piece):
            parts: list[str] = []
            _plain_items_text(items[start:start + items_per_piece], parts)
            yield (", " if start else "") + ", ".join(parts)
        yield "]}"


class _Pause:
    """One gc_paused() that turned the collector off; ``active`` until it ends."""

    __slots__ = ("active",)

    def __init__(self) -> None:
        self.active = True


# The pause the current task runs in (tasks copy the context: a task created inside a pause
# runs in it too, one created inside gc_resumed() does not).
_current_pause: ContextVar[_Pause | None] = ContextVar("reconciler_gc_pause", default=None)


@contextlib.contextmanager
def gc_paused() -> Iterator[None]:
    """The cyclic collector off for a planning or bookkeeping step over a large fleet.

    Such a step allocates a few objects per resource (records, plan items, outcomes) and keeps
    them to its end, so the collector's young generations fill up and it ends up rescanning the
    whole heap (the loaded desired state: ~15 containers per resource) once or twice per pass:
    a third of a no-op pass over 10,000 resources. Reference counting still frees everything
    that dies. Only the pause that found the collector on turns it back on, so pauses nest and
    a collector someone else turned off stays off."""
    if not gc.isenabled():
        yield
        return
    gc.disable()
    pause = _Pause()
    token = _current_pause.set(pause)
    try:
        yield
    finally:
        pause.active = False
        _current_pause.reset(token)
        gc.enable()


# The young generation's threshold while rollouts run. They allocate a few short-lived objects
# per SFTP request and probe (tasks, futures, packets): at CPython's 700 the collector ran ~850
# times over a change of 1,000 Services, 6 of them over the whole heap (docs/performance.md).
ROLLOUT_GC_THRESHOLD = 10_000


@contextlib.contextmanager
def gc_resumed() -> Iterator[None]:
    """Inside a ``gc_paused()``: the collector on again for a long stretch of real work
    (rollouts, deletions), less often than by default, and off again after it unless the
    pause ended meanwhile. Outside one (or in a collector someone else turned off): nothing."""
    pause = _current_pause.get()
    if pause is None or not pause.active or gc.isenabled():
        yield
        return
    threshold = gc.get_threshold()
    gc.set_threshold(max(threshold[0], ROLLOUT_GC_THRESHOLD), *threshold[1:])
    gc.enable()
    token = _current_pause.set(None)
    try:
        yield
    finally:
        _current_pause.reset(token)
        gc.set_threshold(*threshold)
        if pause.active:
            gc.disable()


SOURCE_CHANGED = " (source content changed)"
# the digest of a resource's encrypted secrets is in its revision, never their values
SOURCE_OR_ENCRYPTED_CHANGED = " (source content or an encrypted secret's value changed)"


def with_content_reason(reason: str, resource: Resource) -> str:
    """An update whose document did not change: say what else is in its revision."""
    suffix = SOURCE_OR_ENCRYPTED_CHANGED if resource.sealed_digest else SOURCE_CHANGED
    return reason if reason.endswith(suffix) else reason + suffix


def item_changes(item: PlanItem) -> list[FieldChange]:
    """Field changes of an item from its record's applied document (needs a full record)."""
    record, resource = item.record, item.resource
    if resource is None:
        old_doc = (record.applied_spec or record.desired_spec or {}) if record else {}
        return diff_documents(old_doc, {})
    if item.action in (UNCHANGED, SUSPENDED) and item.record is not None:
        return []
    return diff_documents((record.applied_spec if record else None) or {}, resource.document())


def make_plan(
    desired: DesiredState,
    records: Iterable[ResourceRecord],
    revisions: Mapping[ResourceKey, str],
    *,
    prune: bool = False,
    force: bool = False,
    redeploy: Iterable[ResourceKey] = (),
    now: datetime | None = None,
    ignore_windows: bool | None = None,
) -> Plan:
    """Compare what git wants with what the store says is applied.

    ``revisions`` holds the revision of every resource of ``desired``, resolved beforehand
    (``reconciler.source.revisions``): planning reads no repository and runs no I/O.

    A create, update or delete that its sync windows do not allow at ``now`` (default: the
    current time) becomes DEFERRED, with the reason and when the window opens; unless
    ``ignore_windows`` (default: ``reconciler.plan.windows.ignoring_windows`` in effect).
    """
    recorded = {r.key: r for r in records if not r.deleted}
    heal = set(redeploy)
    items: dict[ResourceKey, PlanItem] = {}
    for key, resource in desired.resources.items():
        revision = revisions[key]
        record = recorded.get(key)
        if (record is not None and record.applied_revision == revision and not record.suspended
                and (not heal or key not in heal)):
            # The common case of a large fleet, kept short: applied as it is in git.
            items[key] = PlanItem(key, UNCHANGED, revision, resource, record)
            continue
        if record is None or record.applied_revision is None:
            old = record.applied_spec if record else None
            changes = diff_documents(old or {}, resource.document())
            action, reason = CREATE, "not deployed yet"
            if record and record.last_result:
                reason = f"last attempt {record.last_result}"
        elif record.applied_revision == revision and key in heal:
            changes, action, reason = [], UPDATE, "drift: live state differs from the record"
        elif record.applied_revision == revision:
            changes, action, reason = [], UNCHANGED, ""
        else:
            changes = diff_documents(record.applied_spec or {}, resource.document())
            action, reason = UPDATE, f"{record.applied_revision} -> {revision}"
            if not changes:
                reason = with_content_reason(reason, resource)
        if record is not None and record.failed_revision == revision and action != UNCHANGED:
            if not force:
                action = BLOCKED
                what = ("failed and so did its rollback" if record.last_result == "rollback_failed"
                        else "was rolled back")
                reason = f"revision {revision} {what}; waiting for a new commit (or --force)"
        if record is not None and record.suspended:
            action, reason = SUSPENDED, "suspended"
        items[key] = PlanItem(key, action, revision, resource, record, changes, reason)
    for key, record in recorded.items():
        if key in items:
            continue
        old_doc = record.applied_spec or record.desired_spec or {}
        changes = diff_documents(old_doc, {})
        if record.suspended:
            action, reason = SUSPENDED, "suspended (removed from git)"
        elif prune:
            action, reason = DELETE, "removed from git"
        elif record.applied_revision is None:
            # Recorded only because it failed before anything was deployed (a secret that did
            # not resolve, a revision that could not be computed): nothing runs to orphan.
            action, reason = DELETE, "removed from git; never deployed"
        else:
            action, reason = ORPHAN, "removed from git; prune is off"
        items[key] = PlanItem(key, action, None, None, record, changes, reason)
    if not (windows_ignored() if ignore_windows is None else ignore_windows):
        _defer_outside_windows(items.values(), desired, now)
    depends = {k: i.resource.depends_on for k, i in items.items()
               if i.resource is not None and i.resource.depends_on}
    order = waves(items.keys(), depends)
    # Deletions go in reverse dependency order, after everything else.
    ordered = [items[k] for layer in order for k in layer]
    if any(i.action == DELETE for i in ordered):
        deletes = [i for i in reversed(ordered) if i.action == DELETE]
        ordered = [i for i in ordered if i.action != DELETE] + deletes
    return Plan(desired.commit, ordered, order)


def name_target_changes(plan: Plan) -> None:
    """Say which Target field an update comes from when the resource's own document did not
    change (a Target's field is part of every revision on it): ``diff`` names the cause.
    Needs the full records of the acting items (the Targets' changes)."""
    targets = {i.key: i for i in plan.items if i.key.kind == "Target" and i.changes}
    if not targets:
        return
    for item in plan.items:
        if item.action not in (UPDATE, BLOCKED) or item.changes or item.resource is None:
            continue
        tkey = item.resource.target_key
        target = targets.get(tkey) if tkey is not None else None
        if target is None:
            continue
        paths = ", ".join(c.path for c in target.changes[:5])
        more = f" (+{len(target.changes) - 5} more)" if len(target.changes) > 5 else ""
        item.reason = (item.reason.replace(SOURCE_CHANGED, "")
                       .replace(SOURCE_OR_ENCRYPTED_CHANGED, "")
                       + f" (Target {target.key.name}: {paths}{more})")


def recorded_target(item: PlanItem) -> ResourceKey | None:
    """The Target of a resource by its recorded document (a deletion has no desired one)."""
    record = item.record
    doc = (record.applied_spec or record.desired_spec or {}) if record else {}
    target = (doc.get("spec") or {}).get("target")
    if item.key.kind == "Target" or not isinstance(target, str):
        return None
    return ResourceKey(item.key.environment, "Target", target)


def order_deletions(plan: Plan) -> None:
    """Put the plan's deletions (its tail) in reverse dependency order by their recorded
    documents: a resource goes before what it depends on. ``make_plan`` works from light
    records, which carry no ``dependsOn``; the caller calls this once it has read the full
    records of the items that act. Only dependencies among the deleted resources matter (one
    on a kept resource constrains nothing); a reference resolves as the loader resolved it when
    the document was applied: ``Kind/name``, or a name unique among them."""
    deletes = [i for i in plan.items if i.action == DELETE]
    if len(deletes) < 2:
        return
    by_key = {i.key: i for i in deletes}
    by_name: dict[tuple[str, str], list[ResourceKey]] = {}
    for key in by_key:
        by_name.setdefault((key.environment, key.name), []).append(key)
    depends: dict[ResourceKey, list[ResourceKey]] = {}
    for key, item in by_key.items():
        doc = (item.record.applied_spec or item.record.desired_spec or {}) if item.record else {}
        refs = (doc.get("spec") or {}).get("dependsOn") or []
        found: list[ResourceKey] = []
        for ref in refs if isinstance(refs, list) else []:
            kind, _, name = str(ref).rpartition("/")
            if kind:
                dep = ResourceKey(key.environment, kind, name)
                found += [dep] if dep in by_key else []
            else:
                named = by_name.get((key.environment, name), [])
                found += named if len(named) == 1 else []
        depends[key] = found
    # layered() puts dependencies first; deletions go the other way round (not waves(): its
    # memo holds the plan order of the whole fleet, asked again at the next pass)
    ordered = [by_key[k] for layer in reversed(layered(by_key, depends)) for k in layer]
    plan.items = [i for i in plan.items if i.action != DELETE] + ordered


def _defer_outside_windows(items: Iterable[PlanItem], desired: DesiredState,
                           now: datetime | None) -> None:
    """Turn changes their sync windows do not allow now into DEFERRED items. Only items that
    would act are looked at, and each Target's windows are parsed and evaluated once."""
    view: Deferrals | None = None
    for item in items:
        if item.action not in ACTING:
            continue
        if view is None:
            view = Deferrals(desired, now if now is not None else datetime.now(UTC))
        spec = (item.record.applied_spec or item.record.desired_spec) if item.record else None
        reason, opens = view.decide(item.key, item.resource, spec)
        if reason is not None:
            item.action, item.reason, item.opens_at = DEFERRED, reason, opens
