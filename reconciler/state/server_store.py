"""What the PostgreSQL and MySQL/MariaDB stores share: the ``Store`` logic over a small async
transaction interface (``Tx``), retries with backoff, and metrics.

Each backend (``postgresql.py``, ``mysql.py``) supplies connections, a ``Tx`` and the few
statements whose syntax differs (upserts, the lease, the database clock). Everything else, the
journal rules included, is written once so the two servers behave identically: resources, the
deployment journal, audit and bulk import here, leases in ``server_leases.py``, webhook
deliveries in ``server_deliveries.py``, over the hooks of ``server_tx.py``; the contract suite
in tests/state runs the same tests on SQLite, PostgreSQL and MariaDB.

Concurrency (several processes or replicas on one database): a write runs in one transaction at
READ COMMITTED. Per-parent sequence numbers (deployment ``#n``, event and step seq) are computed
while the parent row is locked ``FOR UPDATE``, so two writers serialise on the parent and never
compute the same number. Leases are single atomic statements judged by the database's clock.

Resilience: a connection error (server restarted, network cut) or a deadlock retries the whole
transaction with exponential backoff for up to ``retry_seconds``. A retry after a commit whose
acknowledgement was lost must not write twice, so every write that creates a row picks its UUID
before the first attempt and, when retrying, first looks for it (``retrying=True``).
"""

from __future__ import annotations

import asyncio
import random
import time
import uuid
from abc import abstractmethod
from collections.abc import Awaitable, Callable, Iterable
from contextlib import AbstractAsyncContextManager
from datetime import UTC, datetime
from typing import Any, TypeVar

from reconciler.errors import NotFound, ReconcilerError, StoreError
from reconciler.observe.metrics import db_operation
from reconciler.observe.redact import redact
from reconciler.spec.model import ResourceKey
from reconciler.state import journal, rows
from reconciler.state.audit import current_actor
from reconciler.state.notices import NotificationClaims
from reconciler.state.server_deliveries import ServerDeliveries
from reconciler.state.server_leases import ServerLeases
from reconciler.state.server_tx import Row, Tx, is_uuid, utc_now
from reconciler.state.store import (
    FINAL_STATUSES,
    PENDING,
    SUCCEEDED,
    DeploymentEvent,
    DeploymentRecord,
    MigrationInfo,
    ResourceRecord,
    StepRecord,
)

T = TypeVar("T")

DEFAULT_RETRY_SECONDS = 60.0  # how long a write keeps retrying through an outage
BACKOFF_FIRST = 0.05
BACKOFF_MAX = 2.0
IN_LIST_CHUNK = 500
MARK_OBSERVED_CHUNK = 500  # resources per UPDATE of mark_observed


class ServerStore(ServerLeases, ServerDeliveries, rows.AuditLog, NotificationClaims):
    """``Store`` over a database server; subclasses provide the driver specifics."""

    dialect: str  # "postgresql" | "mysql": metric label and sql/ folder
    param_mark = "%s"
    url: str
    retry_seconds: float = DEFAULT_RETRY_SECONDS
    # SQL fragments that differ between dialects
    null_safe_equal: str  # e.g. "a IS NOT DISTINCT FROM b" / "a <=> b" with {a} {b}
    trigger_column: str  # the quoted name of the reserved word column
    # one batch of prune_audit: the oldest rows before a cutoff, through the index on "at"
    # (MySQL/MariaDB refuse LIMIT in an IN subquery: mysql.py uses DELETE … ORDER BY … LIMIT)
    audit_prune_sql: str = (
        "DELETE FROM tb_audit_event WHERE pk_audit_event IN (SELECT pk_audit_event "
        "FROM tb_audit_event WHERE at < %s ORDER BY at LIMIT %s)")

    def __init__(self) -> None:
        self._closed = False

    # -- backend hooks ---------------------------------------------------------------------------
    @abstractmethod
    def _connection(self, *, transaction: bool, read_only: bool = False
                    ) -> AbstractAsyncContextManager[Tx]:
        """A pooled connection as a Tx; with ``transaction`` the block is one transaction that
        commits on success and rolls back on an exception."""

    @abstractmethod
    def _is_retryable(self, exc: BaseException) -> bool: ...

    @abstractmethod
    def _describe(self, exc: BaseException) -> str:
        """A short message for an error (no parameter values, no password)."""

    @abstractmethod
    def _migrate_sync(self, status_only: bool) -> list[MigrationInfo]: ...

    @abstractmethod
    async def _close_pool(self) -> None: ...

    async def _on_retryable_error(self, exc: BaseException) -> None:
        """Before a retry: e.g. drop idle connections a server restart has killed as well."""

    def _publish_pool_metrics(self) -> None:
        """Update DB_CONNECTIONS (backends with pool statistics override this)."""

    # value conversions (to the driver, from the driver)
    @abstractmethod
    def _db_json(self, value: dict[str, Any] | None) -> Any: ...

    @abstractmethod
    def _py_json(self, value: Any) -> dict[str, Any] | None: ...

    # dialect-specific statements
    @abstractmethod
    async def _insert_resource_if_missing(self, tx: Tx, key: ResourceKey, now: datetime) -> None:
        ...

    # -- plumbing --------------------------------------------------------------------------------
    async def _run(self, operation: str, fn: Callable[[Tx, bool], Awaitable[T]], *,
                   transaction: bool = True, read_only: bool = False) -> T:
        """Run ``fn(tx, retrying)``, retrying the whole transaction on connection loss or
        deadlock with exponential backoff (jittered) for up to ``retry_seconds``."""
        if self._closed:
            raise StoreError(f"{self._redacted()}: the store is closed")
        deadline = time.monotonic() + self.retry_seconds
        attempt = 0
        while True:
            refused: ReconcilerError | None = None
            try:
                with db_operation(self.dialect, operation):
                    try:
                        async with self._connection(transaction=transaction,
                                                    read_only=read_only) as tx:
                            return await fn(tx, attempt > 0)
                    except ReconcilerError as exc:
                        # NotFound, a refused transition: rolled back above, but not a database
                        # failure, so not counted in reconciler_db_errors_total
                        refused = exc
                assert refused is not None  # the block above returns or raises
                raise refused
            except (ReconcilerError, asyncio.CancelledError):
                raise
            except Exception as exc:
                task = asyncio.current_task()
                if task is not None and task.cancelling():
                    # Cancelled, and the driver's cleanup (a rollback on a connection whose
                    # query was cut) raised over the CancelledError: a retry would carry on a
                    # call its caller gave up — a lease renewal that never ends, say.
                    raise asyncio.CancelledError() from exc
                if not self._is_retryable(exc):
                    raise self._store_error(exc) from exc
                if time.monotonic() >= deadline or self._closed:
                    raise StoreError(
                        f"{self._redacted()}: {operation} failed after {attempt + 1} attempt(s) "
                        f"over {self.retry_seconds:g} s: {self._described(exc)}"
                    ) from exc
                await self._on_retryable_error(exc)
                delay = min(BACKOFF_MAX, BACKOFF_FIRST * 2 ** attempt) * random.uniform(0.5, 1)
                await asyncio.sleep(min(delay, max(0.0, deadline - time.monotonic())))
                attempt += 1
            finally:
                self._publish_pool_metrics()

    def _store_error(self, exc: BaseException) -> StoreError:
        text = self._described(exc)
        lowered = text.lower()
        if "does not exist" in lowered or "doesn't exist" in lowered:
            return StoreError(
                f"{self._redacted()}: the database schema is missing or outdated ({text}); "
                "run `reconciler db migrate`"
            )
        return StoreError(f"{self._redacted()}: {text}")

    def _redacted(self) -> str:
        return redact(self.url)

    def _described(self, exc: BaseException) -> str:
        """``_describe`` with the URL's credentials scrubbed: drivers echo parts of the URL (a
        bad percent escape in the password, say)."""
        return redact(self._describe(exc), urls=(self.url,))

    # -- schema ----------------------------------------------------------------------------------
    async def _migration_call(self, status_only: bool) -> list[MigrationInfo]:
        if self._closed:
            raise StoreError(f"{self._redacted()}: the store is closed")
        with db_operation(self.dialect, "migration_status" if status_only else "migrate"):
            return await asyncio.to_thread(self._migrate_sync, status_only)

    async def migrate(self) -> list[MigrationInfo]:
        """Apply pending migrations; return the ones applied now."""
        return await self._migration_call(False)

    async def migration_status(self) -> list[MigrationInfo]:
        return await self._migration_call(True)

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        await self._close_pool()

    async def __aenter__(self) -> ServerStore:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    # -- resources -------------------------------------------------------------------------------
    _RESOURCE_WHERE = "environment = %s AND kind = %s AND name = %s"

    @staticmethod
    def _key_params(key: ResourceKey) -> tuple[str, str, str]:
        return (key.environment, key.kind, key.name)

    def _to_resource(self, row: Row) -> ResourceRecord:
        return rows.to_resource(row, self._py_json)

    async def _resource_row(self, tx: Tx, key: ResourceKey) -> Row | None:
        return await tx.one(f"SELECT * FROM v_resource WHERE {self._RESOURCE_WHERE}",  # noqa: S608
                            self._key_params(key))

    async def _ensure_resource(self, tx: Tx, key: ResourceKey, now: datetime) -> int:
        """pk of the resource, locked FOR UPDATE; a bare row is inserted first if it is new."""
        sql = f"SELECT pk_resource FROM tb_resource WHERE {self._RESOURCE_WHERE} FOR UPDATE"  # noqa: S608
        row = await tx.one(sql, self._key_params(key))
        if row is None:
            await self._insert_resource_if_missing(tx, key, now)
            row = await tx.one(sql, self._key_params(key))
        assert row is not None
        return int(row["pk_resource"])

    def _new_resource_values(self, key: ResourceKey, now: datetime) -> dict[str, Any]:
        return {
            "id": str(uuid.uuid4()),
            "identifier": str(key),
            "environment": key.environment,
            "kind": key.kind,
            "name": key.name,
            "created_at": self._db_time(now),
            "updated_at": self._db_time(now),
        }

    async def get_resource(self, key: ResourceKey) -> ResourceRecord | None:
        row = await self._run("get_resource", lambda tx, _: self._resource_row(tx, key),
                              transaction=False)
        return self._to_resource(row) if row is not None else None

    async def get_resources(self, keys: Iterable[ResourceKey]
                            ) -> dict[ResourceKey, ResourceRecord]:
        identifiers = list(dict.fromkeys(str(key) for key in keys))
        if not identifiers:
            return {}

        async def read(tx: Tx, _: Any) -> list[Row]:
            found: list[Row] = []
            for start in range(0, len(identifiers), rows.KEYS_PER_QUERY):
                chunk = identifiers[start:start + rows.KEYS_PER_QUERY]
                marks = ", ".join(self.param_mark for _ in chunk)
                found += await tx.all(
                    f"SELECT * FROM v_resource WHERE identifier IN ({marks})",  # noqa: S608
                    tuple(chunk))
            return found

        found = await self._run("get_resources", read, read_only=True)  # one snapshot
        records = [self._to_resource(row) for row in found]
        return {record.key: record for record in records}

    async def list_resources(self, include_deleted: bool = False, *,
                             with_specs: bool = True) -> list[ResourceRecord]:
        """Every resource; ``with_specs=False`` leaves ``desired_spec``/``applied_spec`` None."""
        where = "" if include_deleted else "WHERE deleted = FALSE"
        columns = "*" if with_specs else rows.LIGHT_RESOURCE_COLUMNS
        order = ", ".join(f"{c}{self.binary_order}" for c in ("environment", "kind", "name"))
        sql = f"SELECT {columns} FROM v_resource {where} ORDER BY {order}"  # noqa: S608
        found = await self._run("list_resources", lambda tx, _: tx.all(sql), transaction=False)
        return [self._to_resource(row) for row in found]

    async def plan_listing(self) -> list[ResourceRecord]:
        order = ", ".join(f"{c}{self.binary_order}" for c in ("environment", "kind", "name"))
        sql = (f"SELECT {rows.PLAN_RESOURCE_COLUMNS} FROM tb_resource "  # noqa: S608
               f"WHERE deleted = FALSE ORDER BY {order}")
        found = await self._run("plan_listing", lambda tx, _: tx.all(sql), transaction=False)
        return rows.plan_resources(
            tuple(row[c] for c in ("id", "environment", "kind", "name", "applied_revision",
                                   "failed_revision", "last_result", "suspended"))
            for row in found)

    async def record_desired(
        self,
        key: ResourceKey,
        *,
        revision: str,
        spec_hash: str,
        spec: dict[str, Any],
        config_commit: str | None,
    ) -> ResourceRecord:
        """Create the resource if needed (reviving a deleted one) and store what git now wants.

        ``sync_status`` follows: Synced when the applied hash equals this one, else OutOfSync.
        """
        same = self.null_safe_equal.format(a="applied_hash", b="%s")

        async def op(tx: Tx, _: bool) -> Row:
            now = utc_now()
            pk = await self._ensure_resource(tx, key, now)
            await tx.execute(
                f"""UPDATE tb_resource
                   SET desired_revision = %s, desired_hash = %s, desired_spec = %s,
                       config_commit = %s, deleted = FALSE, updated_at = %s,
                       sync_status = CASE WHEN {same} THEN 'Synced' ELSE 'OutOfSync' END
                   WHERE pk_resource = %s""",  # noqa: S608
                (revision, spec_hash, self._db_json(spec), config_commit, self._db_time(now),
                 spec_hash, pk),
            )
            row = await self._resource_row(tx, key)
            assert row is not None
            return row

        return self._to_resource(await self._run("record_desired", op))

    async def record_applied(
        self,
        key: ResourceKey,
        *,
        revision: str,
        spec_hash: str,
        spec: dict[str, Any],
        config_commit: str | None,
    ) -> None:
        """The revision is now live; ``failed_revision`` is kept (a rollback must not clear it)."""

        async def op(tx: Tx, _: bool) -> None:
            now = utc_now()
            pk = await self._ensure_resource(tx, key, now)
            await tx.execute(
                """UPDATE tb_resource
                   SET applied_revision = %s, applied_hash = %s, applied_spec = %s,
                       config_commit = COALESCE(%s, config_commit), updated_at = %s,
                       sync_status = CASE WHEN desired_hash IS NULL THEN sync_status
                                          WHEN desired_hash = %s THEN 'Synced'
                                          ELSE 'OutOfSync' END
                   WHERE pk_resource = %s""",
                (revision, spec_hash, self._db_json(spec), config_commit, self._db_time(now),
                 spec_hash, pk),
            )

        await self._run("record_applied", op)

    async def _update_resource(self, operation: str, key: ResourceKey, fields: dict[str, Any],
                               create: bool) -> None:
        rows.check_update_fields(fields)
        names = sorted(fields)

        async def op(tx: Tx, _: bool) -> None:
            now = utc_now()
            if create:
                pk = await self._ensure_resource(tx, key, now)
            else:
                row = await tx.one(
                    f"SELECT pk_resource FROM tb_resource WHERE {self._RESOURCE_WHERE} "  # noqa: S608
                    "FOR UPDATE", self._key_params(key))
                if row is None:
                    raise NotFound(f"no resource {key} in the state database")
                pk = int(row["pk_resource"])
            if names:
                assignments = ", ".join(f"{name} = %s" for name in names)
                await tx.execute(
                    f"UPDATE tb_resource SET {assignments}, updated_at = %s "  # noqa: S608
                    "WHERE pk_resource = %s",
                    (*(fields[n] for n in names), self._db_time(now), pk),
                )

        await self._run(operation, op)

    async def update_status(self, key: ResourceKey, **fields: Any) -> None:
        """Set any of sync_status, health_status, last_result, last_error, failed_revision
        (a resource not recorded yet gets a bare row first, as on SQLite)."""
        rows.check_status_fields(fields)
        await self._update_resource("update_status", key, fields, True)

    async def mark_observed(self, keys: Iterable[ResourceKey],
                            health_status: str | None = None) -> None:
        """These resources' health was observed now (and is ``health_status``, when given)."""
        keys = list(keys)
        if health_status is not None:
            rows.check_status_fields({"health_status": health_status})
        if not keys:
            return

        async def op(tx: Tx, _: bool) -> None:
            now = self._db_time(utc_now())
            # a few statements for a whole fleet, not one round trip per resource
            for start in range(0, len(keys), MARK_OBSERVED_CHUNK):
                chunk = keys[start:start + MARK_OBSERVED_CHUNK]
                rows_in = ", ".join(["(%s, %s, %s)"] * len(chunk))
                await tx.execute(
                    "UPDATE tb_resource SET health_observed_at = %s, "  # noqa: S608
                    "health_status = COALESCE(%s, health_status) "
                    f"WHERE (environment, kind, name) IN ({rows_in})",
                    (now, health_status, *(p for k in chunk for p in self._key_params(k))))

        await self._run("mark_observed", op)

    async def set_suspended(self, key: ResourceKey, suspended: bool) -> None:
        """Pause/resume reconciling a known resource (NotFound otherwise: likely a typo)."""
        await self._update_resource("set_suspended", key, {"suspended": bool(suspended)}, False)

    async def mark_deleted(self, key: ResourceKey) -> None:
        """Gone from git: hidden from ``list_resources``; its history stays."""
        await self._update_resource("mark_deleted", key, {"deleted": True}, False)

    # -- deployment journal ----------------------------------------------------------------------
    async def _deployments(self, tx: Tx, where: str, params: tuple[Any, ...], order: str,
                           limit: int | None = None) -> list[DeploymentRecord]:
        """Deployments of v_deployment matching ``where``, each with its events and steps."""
        limit_sql = f" LIMIT {int(limit)}" if limit is not None and limit > 0 else ""
        found = await tx.all(
            f"SELECT * FROM v_deployment WHERE {where} ORDER BY {order}{limit_sql}",  # noqa: S608
            params,
        )
        if not found:
            return []
        ids = [str(row["id"]) for row in found]
        events: dict[str, list[DeploymentEvent]] = {i: [] for i in ids}
        steps: dict[str, list[StepRecord]] = {i: [] for i in ids}
        for start in range(0, len(ids), IN_LIST_CHUNK):
            chunk = tuple(ids[start:start + IN_LIST_CHUNK])
            marks = ", ".join(["%s"] * len(chunk))
            for e in await tx.all(
                "SELECT deployment_id, status, message, at FROM v_deployment_event "  # noqa: S608
                f"WHERE deployment_id IN ({marks}) ORDER BY deployment_id, seq", chunk,
            ):
                events[str(e["deployment_id"])].append(rows.to_event(e))
            for s in await tx.all(
                f"SELECT * FROM v_deployment_step WHERE deployment_id IN ({marks}) "  # noqa: S608
                "ORDER BY deployment_id, seq", chunk,
            ):
                steps[str(s["deployment_id"])].append(rows.to_step(s))
        return [rows.to_deployment(row, events[str(row["id"])], steps[str(row["id"])],
                                   self._py_json)
                for row in found]

    async def _get_deployment(self, tx: Tx, deployment_id: str) -> DeploymentRecord | None:
        if is_uuid(deployment_id):
            found = await self._deployments(tx, "id = %s", (deployment_id,), "seq")
        else:  # an identifier; comparing it with a UUID column would be a type error
            found = await self._deployments(tx, "identifier = %s", (deployment_id,), "seq")
        return found[0] if found else None

    async def _next_seq(self, tx: Tx, table: str, fk_column: str, fk: int) -> int:
        # Safe only while the parent row is locked FOR UPDATE by this transaction.
        row = await tx.one(f"SELECT COALESCE(MAX(seq), 0) + 1 AS seq FROM {table} "  # noqa: S608
                           f"WHERE {fk_column} = %s", (fk,))
        assert row is not None
        return int(row["seq"])

    async def _add_event(self, tx: Tx, pk_deployment: int, identifier: str, status: str,
                         message: str | None, at: datetime, seq: int | None = None) -> None:
        if seq is None:
            seq = await self._next_seq(tx, "tb_deployment_event", "fk_deployment", pk_deployment)
        await tx.insert("tb_deployment_event", journal.event_row(
            str(uuid.uuid4()), pk_deployment, identifier, seq, status, message,
            self._db_time(at)), "pk_deployment_event")

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
        """Insert a ``pending`` deployment (and its first event), identifier ``env/Kind/name#n``."""
        deployment_id = str(uuid.uuid4())  # before the first attempt: a retry finds it

        async def op(tx: Tx, retrying: bool) -> DeploymentRecord:
            if retrying and (done := await self._get_deployment(tx, deployment_id)) is not None:
                return done  # the earlier attempt committed; its acknowledgement was lost
            now = utc_now()
            pk_resource = await self._ensure_resource(tx, key, now)
            seq = await self._next_seq(tx, "tb_deployment", "fk_resource", pk_resource)
            row = journal.deployment_row(deployment_id, key, pk_resource, seq,
                                         self._db_time(now))
            identifier = row["identifier"]
            pk = await tx.insert("tb_deployment", {
                **row,
                "from_revision": from_revision,
                "to_revision": to_revision,
                "config_commit": config_commit,
                self.trigger_column: trigger,
                "strategy": strategy,
                "spec": self._db_json(spec),
            }, "pk_deployment")
            await self._add_event(tx, pk, identifier, PENDING, None, now, seq=1)
            created = await self._get_deployment(tx, deployment_id)
            assert created is not None
            return created

        return await self._run("create_deployment", op)

    async def _require_deployment(self, tx: Tx, deployment_id: str) -> Row:
        row = None
        if is_uuid(deployment_id):
            row = await tx.one(
                "SELECT pk_deployment, identifier, status FROM tb_deployment WHERE id = %s "
                "FOR UPDATE", (deployment_id,))
        if row is None:
            raise NotFound(f"no deployment {deployment_id}")
        return row

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
        extra = journal.transition_extra(status, error, output, exit_code)

        async def op(tx: Tx, retrying: bool) -> None:
            row = await self._require_deployment(tx, deployment_id)
            current = row["status"]
            if retrying and current == status:
                return  # the earlier attempt committed; its acknowledgement was lost
            now = utc_now()
            values = journal.transition_values(row, status, extra, self._db_time(now))
            names = sorted(values)
            await tx.execute(
                f"UPDATE tb_deployment SET {', '.join(f'{n} = %s' for n in names)} "  # noqa: S608
                "WHERE pk_deployment = %s",
                (*(values[n] for n in names), row["pk_deployment"]),
            )
            await self._add_event(tx, row["pk_deployment"], row["identifier"], status, message,
                                  now)
            if status in FINAL_STATUSES:
                await self._audit_final(tx, row, current, status,
                                        message or error, now, actor)

        actor = current_actor()
        await self._run("transition", op)

    async def _audit_final(self, tx: Tx, row: Row, previous: str, status: str,
                           message: str | None, now: datetime, actor: str | None) -> None:
        """The audit row of a deployment that reached a final status (same transaction)."""
        dep = await tx.one(
            rows.FINAL_AUDIT_SELECT.format(trigger=self.trigger_column, mark="%s"),
            (row["pk_deployment"],))
        assert dep is not None
        await tx.insert("tb_audit_event", rows.final_audit_values(
            row, dep, previous, status, message, self._db_time(now), actor, str(uuid.uuid4())),
            "pk_audit_event")

    async def start_step(self, deployment_id: str, action: str, instance: str,
                         detail: str | None = None) -> str:
        """Journal a provider action *before* it runs; returns the step id."""
        step_id = str(uuid.uuid4())

        async def op(tx: Tx, retrying: bool) -> str:
            row = await self._require_deployment(tx, deployment_id)
            if retrying and await tx.one("SELECT 1 AS found FROM tb_deployment_step "
                                         "WHERE id = %s", (step_id,)):
                return step_id
            seq = await self._next_seq(tx, "tb_deployment_step", "fk_deployment",
                                       row["pk_deployment"])
            await tx.insert("tb_deployment_step", journal.step_row(
                step_id, row, seq, action, instance, detail, self._db_time(utc_now())),
                "pk_deployment_step")
            return step_id

        return await self._run("start_step", op)

    async def finish_step(self, step_id: str, status: str, detail: str | None = None) -> None:
        """Close a started step as ``succeeded``, ``failed`` or ``interrupted`` (once)."""
        journal.check_finish_status(status)

        async def op(tx: Tx, retrying: bool) -> None:
            found = None
            if is_uuid(step_id):
                found = await tx.one(
                    "SELECT pk_deployment_step, identifier, status FROM tb_deployment_step "
                    "WHERE id = %s FOR UPDATE", (step_id,))
            row = journal.found_step(found, step_id)
            if not journal.step_to_finish(row, status, retrying=retrying):
                return  # the earlier attempt committed; its acknowledgement was lost
            await tx.execute(
                "UPDATE tb_deployment_step SET status = %s, detail = COALESCE(%s, detail), "
                "finished_at = %s WHERE pk_deployment_step = %s",
                (status, detail, self._db_time(utc_now()), row["pk_deployment_step"]),
            )

        await self._run("finish_step", op)

    async def get_deployment(self, deployment_id: str) -> DeploymentRecord | None:
        """By id (UUID) or identifier (``env/Kind/name#n``)."""
        return await self._run("get_deployment",
                               lambda tx, _: self._get_deployment(tx, deployment_id),
                               read_only=True)

    async def list_deployments(self, key: ResourceKey | None = None,
                               limit: int = 50) -> list[DeploymentRecord]:
        """Newest first, with events and steps; ``limit <= 0`` means all."""
        if key is None:
            return await self._run("list_deployments", lambda tx, _: self._deployments(
                tx, "1 = 1", (), "created_at DESC, seq DESC", limit), read_only=True)
        return await self._run("list_deployments", lambda tx, _: self._deployments(
            tx, self._RESOURCE_WHERE, self._key_params(key), "seq DESC", limit), read_only=True)

    async def unfinished_deployments(self) -> list[DeploymentRecord]:
        """Deployments left ``pending`` / ``in_progress`` (a crash): oldest first."""
        return await self._run("unfinished_deployments", lambda tx, _: self._deployments(
            tx, "status IN ('pending', 'in_progress')", (), "created_at, seq"), read_only=True)

    async def last_good(self, key: ResourceKey) -> DeploymentRecord | None:
        """The newest ``succeeded`` deployment of a resource."""
        found = await self._run("last_good", lambda tx, _: self._deployments(
            tx, f"{self._RESOURCE_WHERE} AND status = %s", (*self._key_params(key), SUCCEEDED),
            "seq DESC", 1), read_only=True)
        return found[0] if found else None

    # -- audit -----------------------------------------------------------------------------------
    # record_audit, list_audit and import_audit: rows.AuditLog over these hooks
    def _audit_time(self, value: datetime) -> Any:
        return self._db_time(value.astimezone(UTC))

    async def _append_audit(self, values: dict[str, Any], *, read_back: bool) -> Row | None:
        async def op(tx: Tx, retrying: bool) -> Row | None:
            if not (retrying and await tx.one("SELECT 1 AS found FROM tb_audit_event "
                                              "WHERE id = %s", (values["id"],))):
                await tx.insert("tb_audit_event", values, "pk_audit_event")
            if not read_back:
                return None
            return await tx.one("SELECT * FROM v_audit_event WHERE id = %s", (values["id"],))

        return await self._run("import_audit" if not read_back else "record_audit", op)

    async def _select_audit(self, where: str, params: tuple[Any, ...], limit: int
                            ) -> list[Row]:
        limit_sql = f" LIMIT {int(limit)}" if limit > 0 else ""
        sql = (f"SELECT * FROM v_audit_event WHERE {where} "  # noqa: S608
               f"ORDER BY at DESC, identifier{self.binary_order} DESC{limit_sql}")
        return await self._run("list_audit", lambda tx, _: tx.all(sql, params),
                               transaction=False)

    async def _delete_audit_batch(self, cutoff: Any, batch_size: int) -> int:
        # safe to retry: rows a lost commit deleted are simply not found again
        return await self._run("prune_audit", lambda tx, _: tx.execute(
            self.audit_prune_sql, (cutoff, batch_size)))

    # -- notifications (claim_notice, close_notice, …: notices.NotificationClaims) -------------
    async def _notice_execute(self, sql: str, params: tuple[Any, ...]) -> int:
        # safe to retry: a claim retried after a lost commit finds its own message_id
        return await self._run("notification", lambda tx, _: tx.execute(sql, params))

    async def _notice_row(self, sql: str, params: tuple[Any, ...]) -> Row | None:
        return await self._run("notification", lambda tx, _: tx.one(sql, params),
                               transaction=False)

    # -- bulk import (reconciler.state.copy) -----------------------------------------------------
    async def is_empty(self) -> bool:
        """No resource and no deployment recorded (a safe destination for ``copy_store``)."""
        row = await self._run("is_empty", lambda tx, _: tx.one(
            "SELECT (SELECT COUNT(*) FROM tb_resource) AS resources, "
            "(SELECT COUNT(*) FROM tb_deployment) AS deployments"), transaction=False)
        assert row is not None
        return int(row["resources"]) == 0 and int(row["deployments"]) == 0

    async def import_resource(self, record: ResourceRecord, created_at: datetime) -> None:
        """Insert a resource exactly as another store recorded it (same id)."""
        updated = record.updated_at or created_at
        values = {
            "id": record.id, "identifier": str(record.key),
            "environment": record.key.environment, "kind": record.key.kind,
            "name": record.key.name,
            "desired_revision": record.desired_revision, "desired_hash": record.desired_hash,
            "desired_spec": self._db_json(record.desired_spec),
            "applied_revision": record.applied_revision, "applied_hash": record.applied_hash,
            "applied_spec": self._db_json(record.applied_spec),
            "config_commit": record.config_commit, "sync_status": record.sync_status,
            "health_status": record.health_status, "last_result": record.last_result,
            "last_error": record.last_error, "failed_revision": record.failed_revision,
            "suspended": record.suspended, "deleted": record.deleted,
            "created_at": self._db_time(min(created_at, updated)),
            "updated_at": self._db_time(updated),
        }

        async def op(tx: Tx, retrying: bool) -> None:
            if retrying and await tx.one("SELECT 1 AS found FROM tb_resource WHERE id = %s",
                                         (record.id,)):
                return
            await tx.insert("tb_resource", values, "pk_resource")

        await self._run("import_resource", op)

    async def import_deployment(self, record: DeploymentRecord) -> None:
        """Insert a deployment with its events and steps exactly as another store recorded it
        (same ids, identifiers, statuses and timestamps; its resource must be imported first)."""
        seq = int(record.identifier.rsplit("#", 1)[1])
        created = record.created_at or utc_now()

        async def op(tx: Tx, retrying: bool) -> None:
            if retrying and await tx.one("SELECT 1 AS found FROM tb_deployment WHERE id = %s",
                                         (record.id,)):
                return
            parent = await tx.one(
                f"SELECT pk_resource FROM tb_resource WHERE {self._RESOURCE_WHERE}",  # noqa: S608
                self._key_params(record.key))
            if parent is None:
                raise NotFound(f"{record.identifier}: resource {record.key} not imported")
            pk = await tx.insert("tb_deployment", {
                "id": record.id, "identifier": record.identifier,
                "fk_resource": parent["pk_resource"], "seq": seq, "status": record.status,
                "from_revision": record.from_revision, "to_revision": record.to_revision,
                "config_commit": record.config_commit, self.trigger_column: record.trigger,
                "strategy": record.strategy, "error": record.error, "output": record.output,
                "exit_code": record.exit_code, "spec": self._db_json(record.spec),
                "created_at": self._db_time(created),
                "started_at": self._db_time(record.started_at) if record.started_at else None,
                "finished_at": (self._db_time(record.finished_at) if record.finished_at
                                else None),
            }, "pk_deployment")
            for number, event in enumerate(record.events, start=1):
                await self._add_event(tx, pk, record.identifier, event.status, event.message,
                                      event.at, seq=number)
            for step in record.steps:
                await tx.insert("tb_deployment_step", {
                    "id": step.id, "identifier": f"{record.identifier}/step/{step.seq}",
                    "fk_deployment": pk, "seq": step.seq, "action": step.action,
                    "instance": step.instance, "status": step.status, "detail": step.detail,
                    "started_at": self._db_time(step.started_at),
                    "finished_at": (self._db_time(step.finished_at) if step.finished_at
                                    else None),
                }, "pk_deployment_step")

        await self._run("import_deployment", op)


__all__ = ["DEFAULT_RETRY_SECONDS", "ServerStore"]
