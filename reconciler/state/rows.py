"""What every store shares below SQL: row → record mapping, argument checks, and the
dialect-independent parts of statements (filters, column lists, audit row values).

A store reads rows as dicts keyed by column name; only two things differ between backends in
those rows: how JSON documents come back (text on SQLite and MySQL, decoded on PostgreSQL) and
how timestamps come back (ISO text on SQLite, ``datetime`` on the servers, naive UTC on MySQL).
The mapping functions here take the JSON decoder of the backend and parse timestamps with
:func:`parse_time`, which accepts all three forms. Statements use the backend's parameter
marker (``?`` or ``%s``), passed in as ``mark``.
"""

from __future__ import annotations

import asyncio
import uuid
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Sequence
from datetime import UTC, datetime
from typing import Any, ClassVar

from reconciler.errors import StoreError
from reconciler.spec.model import ResourceKey
from reconciler.state.audit import (
    MAX_MESSAGE,
    action_for,
    actor_for_trigger,
    audit_identifier,
    audit_import_values,
    audit_values,
    clip,
)
from reconciler.state.store import (
    DEPLOYMENT_STATUSES,
    HEALTH_STATUSES,
    SYNC_STATUSES,
    AuditRecord,
    DeploymentEvent,
    DeploymentRecord,
    ResourceRecord,
    StepRecord,
)

Row = dict[str, Any]
AUDIT_PRUNE_BATCH = 1000  # audit rows deleted per transaction by prune_audit
JsonDecoder = Callable[[Any], dict[str, Any] | None]

STATUS_FIELDS = frozenset(
    {"sync_status", "health_status", "last_result", "last_error", "failed_revision"}
)
# Fields the resource update path may set (status fields plus the two flags).
RESOURCE_UPDATE_FIELDS = STATUS_FIELDS | {"suspended", "deleted"}

# Everything but the spec documents: what a plan over a large fleet needs for every row.
# Keys per ``IN (…)`` of a batched read (``get_resources``): far below every backend's limit of
# bound parameters (SQLite's is 32,766 since 3.32, 999 before).
KEYS_PER_QUERY = 500

LIGHT_RESOURCE_COLUMNS = (
    "id, environment, kind, name, desired_revision, desired_hash, applied_revision, "
    "applied_hash, config_commit, sync_status, health_status, last_result, last_error, "
    "failed_revision, suspended, deleted, updated_at, health_observed_at, NULL AS desired_spec, "
    "NULL AS applied_spec"
)

# What a plan reads of every resource (``Store.plan_listing``): the light listing's 20 columns
# as Python objects were most of a one-shot diff's listing.
PLAN_RESOURCE_COLUMNS = (
    "id, environment, kind, name, applied_revision, failed_revision, last_result, suspended"
)

# The columns of the deployment + resource join that an audit row of a deployment needs
# (``trigger`` is a reserved word: the caller passes its quoted name).
FINAL_AUDIT_SELECT = (
    "SELECT d.{trigger} AS trigger_, d.strategy, d.config_commit, d.to_revision, "
    "r.identifier AS resource, r.kind FROM tb_deployment AS d "
    "JOIN tb_resource AS r ON r.pk_resource = d.fk_resource WHERE d.pk_deployment = {mark}"
)

# What git now wants of a resource (``record_desired``); ``same`` compares ``applied_hash`` with
# the new hash null-safely (each dialect's own syntax). Parameters: revision, hash, spec,
# config_commit, deleted (False), updated_at, hash, pk.
RECORD_DESIRED_UPDATE = """UPDATE tb_resource
   SET desired_revision = {mark}, desired_hash = {mark}, desired_spec = {mark},
       config_commit = {mark}, deleted = {mark}, updated_at = {mark},
       sync_status = CASE WHEN {same} THEN 'Synced' ELSE 'OutOfSync' END
   WHERE pk_resource = {mark}"""

# What is now live (``record_applied``); ``failed_revision`` is kept. Parameters: revision, hash,
# spec, config_commit, updated_at, hash, pk.
RECORD_APPLIED_UPDATE = """UPDATE tb_resource
   SET applied_revision = {mark}, applied_hash = {mark}, applied_spec = {mark},
       config_commit = COALESCE({mark}, config_commit), updated_at = {mark},
       sync_status = CASE WHEN desired_hash IS NULL THEN sync_status
                          WHEN desired_hash = {mark} THEN 'Synced'
                          ELSE 'OutOfSync' END
   WHERE pk_resource = {mark}"""

# The next seq of a deployment, event or step under its parent (the parent row locked, or the
# write lock held, by the caller's transaction).
NEXT_SEQ_SELECT = ("SELECT COALESCE(MAX(seq), 0) + 1 AS seq FROM {table} "
                   "WHERE {fk_column} = {mark}")

# A started step closed (``finish_step``): status, detail (None keeps the start's), finished_at,
# pk.
FINISH_STEP_UPDATE = (
    "UPDATE tb_deployment_step SET status = {mark}, detail = COALESCE({mark}, detail), "
    "finished_at = {mark} WHERE pk_deployment_step = {mark}")

# One batch of ``prune_audit``: the oldest rows before a cutoff, through the index on "at"
# (SQLite has no DELETE … LIMIT in a stock build; MySQL/MariaDB refuse LIMIT in an IN subquery
# and use their own DELETE … ORDER BY … LIMIT).
AUDIT_PRUNE_DELETE = (
    "DELETE FROM tb_audit_event WHERE pk_audit_event IN (SELECT pk_audit_event "
    "FROM tb_audit_event WHERE at < {mark} ORDER BY at LIMIT {mark})")


# -- values --------------------------------------------------------------------------------------
def parse_time(value: Any) -> datetime | None:
    """A timestamp as a store returns it, as an aware UTC ``datetime``: ISO text (SQLite),
    naive UTC (MySQL ``DATETIME``) or aware (PostgreSQL, in the session's zone)."""
    if value is None:
        return None
    if isinstance(value, datetime):
        return value.astimezone(UTC) if value.tzinfo else value.replace(tzinfo=UTC)
    return datetime.fromisoformat(str(value))


def parse_time_required(value: Any) -> datetime:
    result = parse_time(value)
    assert result is not None
    return result


def key_of(row: Row) -> ResourceKey:
    return ResourceKey(row["environment"], row["kind"], row["name"])


def key_params(key: ResourceKey) -> tuple[str, str, str]:
    """The parameters of a resource's key, in the order of ``environment, kind, name``."""
    return (key.environment, key.kind, key.name)


def new_resource_values(key: ResourceKey, now: Any) -> Row:
    """The columns of a bare resource row (a new id; ``now`` as the backend stores times)."""
    return {
        "id": str(uuid.uuid4()),
        "identifier": str(key),
        "environment": key.environment,
        "kind": key.kind,
        "name": key.name,
        "created_at": now,
        "updated_at": now,
    }


# -- rows → records ------------------------------------------------------------------------------
def to_resource(row: Row, load_json: JsonDecoder) -> ResourceRecord:
    return ResourceRecord(
        key=key_of(row),
        id=str(row["id"]),
        desired_revision=row["desired_revision"],
        desired_hash=row["desired_hash"],
        desired_spec=load_json(row["desired_spec"]),
        applied_revision=row["applied_revision"],
        applied_hash=row["applied_hash"],
        applied_spec=load_json(row["applied_spec"]),
        config_commit=row["config_commit"],
        sync_status=row["sync_status"],
        health_status=row["health_status"],
        last_result=row["last_result"],
        last_error=row["last_error"],
        failed_revision=row["failed_revision"],
        suspended=bool(row["suspended"]),
        deleted=bool(row["deleted"]),
        updated_at=parse_time(row["updated_at"]),
        health_observed_at=parse_time(row.get("health_observed_at")),
    )


def light_resources(values: Iterable[Sequence[Any]]) -> list[ResourceRecord]:
    """Records from rows of ``LIGHT_RESOURCE_COLUMNS`` read as tuples, by position: what
    ``to_resource`` gives for those rows, without a dict per row (a no-op pass reads every
    row of the fleet)."""
    new_key = tuple.__new__  # ResourceKey(...) goes through a Python-level __new__
    return [
        ResourceRecord(new_key(ResourceKey, (environment, kind, name)), str(id_), desired_revision,
                       desired_hash, None, applied_revision, applied_hash, None, config_commit,
                       sync_status, health_status, last_result, last_error, failed_revision,
                       bool(suspended), bool(deleted), parse_time(updated_at),
                       parse_time(health_observed_at))
        for (id_, environment, kind, name, desired_revision, desired_hash, applied_revision,
             applied_hash, config_commit, sync_status, health_status, last_result, last_error,
             failed_revision, suspended, deleted, updated_at, health_observed_at, _, _) in values
    ]


def plan_resources(values: Iterable[Sequence[Any]]) -> list[ResourceRecord]:
    """Records from rows of ``PLAN_RESOURCE_COLUMNS`` (not deleted), by position; every other
    field at its default."""
    new_key = tuple.__new__
    return [
        ResourceRecord(new_key(ResourceKey, (environment, kind, name)), str(id_), None, None,
                       None, applied_revision, None, None, None, "Unknown", "Unknown",
                       last_result, None, failed_revision, bool(suspended))
        for (id_, environment, kind, name, applied_revision, failed_revision, last_result,
             suspended) in values
    ]


def to_deployment(row: Row, events: list[DeploymentEvent], steps: list[StepRecord],
                  load_json: JsonDecoder) -> DeploymentRecord:
    return DeploymentRecord(
        id=str(row["id"]),
        identifier=row["identifier"],
        key=key_of(row),
        status=row["status"],
        from_revision=row["from_revision"],
        to_revision=row["to_revision"],
        config_commit=row["config_commit"],
        trigger=row["trigger"],
        strategy=row["strategy"],
        error=row["error"],
        output=row["output"],
        exit_code=row["exit_code"],
        spec=load_json(row["spec"]),
        created_at=parse_time(row["created_at"]),
        started_at=parse_time(row["started_at"]),
        finished_at=parse_time(row["finished_at"]),
        events=events,
        steps=steps,
    )


def to_event(row: Row) -> DeploymentEvent:
    return DeploymentEvent(row["status"], row["message"], parse_time_required(row["at"]))


def to_step(row: Row) -> StepRecord:
    return StepRecord(
        id=str(row["id"]),
        seq=int(row["seq"]),
        action=row["action"],
        instance=row["instance"],
        status=row["status"],
        detail=row["detail"],
        started_at=parse_time_required(row["started_at"]),
        finished_at=parse_time(row["finished_at"]),
    )


def to_audit(row: Row) -> AuditRecord:
    return AuditRecord(
        id=str(row["id"]), identifier=row["identifier"], at=parse_time_required(row["at"]),
        actor=row["actor"], action=row["action"], outcome=row["outcome"],
        resource=row["resource"], deployment=row["deployment"],
        config_commit=row["config_commit"], revision=row["revision"], message=row["message"],
    )


# -- argument checks -----------------------------------------------------------------------------
def check_status_fields(fields: dict[str, Any]) -> None:
    """``update_status`` fields: known names, and values from the status vocabularies."""
    unknown = sorted(set(fields) - STATUS_FIELDS)
    if unknown:
        raise StoreError(f"update_status: unknown field(s) {', '.join(unknown)}")
    allowed: dict[str, tuple[str | None, ...]] = {
        "sync_status": SYNC_STATUSES,
        "health_status": HEALTH_STATUSES,
        "last_result": (None, *DEPLOYMENT_STATUSES),
    }
    for name, values in allowed.items():
        if name in fields and fields[name] not in values:
            raise StoreError(
                f"update_status: {name}={fields[name]!r} is not one of "
                f"{', '.join(str(v) for v in values)}"
            )


def check_update_fields(fields: dict[str, Any]) -> None:
    if not set(fields) <= RESOURCE_UPDATE_FIELDS:
        raise StoreError(f"cannot update resource fields {sorted(fields)}")


def check_ttl(ttl_seconds: float) -> None:
    if ttl_seconds <= 0:
        raise StoreError(f"acquire_lock: ttl_seconds must be positive, not {ttl_seconds}")


# -- audit ---------------------------------------------------------------------------------------
def final_audit_values(deployment: Row, joined: Row, previous: str, status: str,
                       message: str | None, at: Any, actor: str | None,
                       row_id: str) -> dict[str, Any]:
    """Column values of the audit row of a deployment that reached a final status.

    ``deployment`` has the deployment's ``identifier``; ``joined`` is the row of
    :data:`FINAL_AUDIT_SELECT`; ``at`` is already in the backend's time representation.
    """
    return {
        "id": row_id,
        "identifier": audit_identifier(deployment["identifier"], status, f"audit:{row_id}"),
        "at": at,
        "actor": actor or actor_for_trigger(joined["trigger_"]),
        "action": action_for(joined["kind"], joined["strategy"], joined["trigger_"], status,
                             previous),
        "resource": joined["resource"],
        "deployment": deployment["identifier"],
        "config_commit": joined["config_commit"],
        "revision": joined["to_revision"],
        "outcome": status,
        "message": clip(message, MAX_MESSAGE, lines=True) if message else None,
    }


def audit_filter(mark: str, resource: ResourceKey | None, since: Any
                 ) -> tuple[str, tuple[Any, ...]]:
    """The WHERE condition and parameters of ``list_audit`` (``since`` already in the
    backend's time representation, or None)."""
    where, params = ["1 = 1"], []
    if resource is not None:
        where.append(f"resource = {mark}")
        params.append(str(resource))
    if since is not None:
        where.append(f"at >= {mark}")
        params.append(since)
    return " AND ".join(where), tuple(params)


class AuditLog(ABC):
    """``record_audit``, ``list_audit`` and ``import_audit`` of every store, over four small
    backend hooks (the connection and transaction handling of each store stays its own)."""

    param_mark: ClassVar[str]  # the driver's parameter marker: "?" or "%s"

    @abstractmethod
    def _audit_time(self, value: datetime) -> Any:
        """An aware ``datetime`` in the representation the backend stores in ``at``."""

    @abstractmethod
    async def _append_audit(self, values: dict[str, Any], *, read_back: bool) -> Row | None:
        """Insert one ``tb_audit_event`` row (a retried transaction that finds its id does
        not insert it twice); with ``read_back``, return its ``v_audit_event`` row."""

    @abstractmethod
    async def _select_audit(self, where: str, params: tuple[Any, ...], limit: int
                            ) -> list[Row]:
        """``v_audit_event`` rows matching ``where``, newest first; ``limit <= 0``: all."""

    @abstractmethod
    async def _delete_audit_batch(self, cutoff: Any, batch_size: int) -> int:
        """In one transaction, delete up to ``batch_size`` of the oldest rows with
        ``at < cutoff`` (through the index on ``at``); return how many were deleted."""

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
        """Append one audit event (a change that is not a deployment: suspend, resume, …)."""
        values = audit_values(action, actor=actor, outcome=outcome, resource=resource,
                              deployment=deployment, config_commit=config_commit,
                              revision=revision, message=message)
        values["at"] = self._audit_time(datetime.now(UTC))
        row = await self._append_audit(values, read_back=True)
        assert row is not None
        return to_audit(row)

    async def list_audit(self, limit: int = 50, resource: ResourceKey | None = None,
                         since: datetime | None = None) -> list[AuditRecord]:
        """Newest first; ``limit <= 0`` means all; ``since`` keeps events at or after it."""
        where, params = audit_filter(
            self.param_mark, resource,
            self._audit_time(since) if since is not None else None)
        return [to_audit(row) for row in await self._select_audit(where, params, limit)]

    async def prune_audit(self, before: datetime, *,
                          batch_size: int = AUDIT_PRUNE_BATCH) -> int:
        """Delete the audit events recorded before ``before`` (events at ``before`` or later
        stay), oldest first, ``batch_size`` rows per transaction so a large backlog never holds
        a lock for long; return how many were deleted."""
        if batch_size <= 0:
            raise StoreError(f"prune_audit: batch_size must be positive, not {batch_size}")
        cutoff = self._audit_time(before)
        total = 0
        while True:
            deleted = await self._delete_audit_batch(cutoff, batch_size)
            total += deleted
            if deleted < batch_size:
                return total
            await asyncio.sleep(0)  # let other work of this process run between batches

    async def import_audit(self, record: AuditRecord) -> None:
        """Insert an audit event exactly as another store recorded it (same id and time)."""
        await self._append_audit(audit_import_values(record, self._audit_time(record.at)),
                                 read_back=False)


__all__ = [
    "AUDIT_PRUNE_BATCH",
    "FINAL_AUDIT_SELECT",
    "KEYS_PER_QUERY",
    "LIGHT_RESOURCE_COLUMNS",
    "PLAN_RESOURCE_COLUMNS",
    "STATUS_FIELDS",
    "AuditLog",
    "audit_filter",
    "check_status_fields",
    "check_ttl",
    "check_update_fields",
    "final_audit_values",
    "key_of",
    "parse_time",
    "parse_time_required",
    "to_audit",
    "to_deployment",
    "to_event",
    "to_resource",
    "to_step",
]
