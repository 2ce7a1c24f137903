"""What the PostgreSQL and MySQL/MariaDB stores share: the ``Store`` assembled from its parts
over a small async transaction interface (``Tx``), retries with backoff, and metrics.

Each backend (``postgresql.py``, ``mysql.py``) supplies connections, a ``Tx`` and the few
statements whose syntax differs (upserts, the lease, the database clock). Everything else, the
journal rules included, is written once so the two servers behave identically: the connection
plumbing, schema and the audit and notification hooks here; resources in
``server_resources.py``, the deployment journal in ``server_journal.py``, bulk import in
``server_import.py``, leases in ``server_leases.py``, webhook deliveries in
``server_deliveries.py``, over the hooks of ``server_tx.py``; the contract suite in tests/state
runs the same tests on SQLite, PostgreSQL and MariaDB.

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
import time
from abc import abstractmethod
from collections.abc import Awaitable, Callable
from contextlib import AbstractAsyncContextManager
from datetime import UTC, datetime
from typing import Any, TypeVar

from reconciler.backoff import equal_jitter, exponential
from reconciler.errors import ReconcilerError, StoreError
from reconciler.observe.metrics import db_operation
from reconciler.observe.redact import redact
from reconciler.state import rows
from reconciler.state.notices import NotificationClaims
from reconciler.state.server_deliveries import ServerDeliveries
from reconciler.state.server_import import ServerImport
from reconciler.state.server_journal import ServerJournal
from reconciler.state.server_leases import ServerLeases
from reconciler.state.server_resources import ServerResources
from reconciler.state.server_tx import Row, Tx
from reconciler.state.store import MigrationInfo

T = TypeVar("T")

DEFAULT_RETRY_SECONDS = 60.0  # how long a write keeps retrying through an outage
BACKOFF_FIRST = 0.05
BACKOFF_MAX = 2.0


class ServerStore(ServerResources, ServerJournal, ServerImport, ServerLeases, ServerDeliveries,
                  rows.AuditLog, NotificationClaims):
    """``Store`` over a database server; subclasses provide the driver specifics."""

    dialect: str  # "postgresql" | "mysql": metric label and sql/ folder
    url: str
    retry_seconds: float = DEFAULT_RETRY_SECONDS
    # one batch of prune_audit (mysql.py: DELETE … ORDER BY … LIMIT of its own)
    audit_prune_sql: str = rows.AUDIT_PRUNE_DELETE.format(mark="%s")

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
                delay = equal_jitter(
                    exponential(attempt + 1, first=BACKOFF_FIRST, cap=BACKOFF_MAX))
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


__all__ = ["DEFAULT_RETRY_SECONDS", "ServerStore"]
