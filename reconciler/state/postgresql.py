"""PostgreSQL implementation of the ``Store`` protocol: psycopg 3 (async) with psycopg_pool.

URL: ``postgresql://user[:password]@host[:port]/dbname[?sslmode=…]`` (``postgres://`` too). A
password not in the URL comes from ``$RECONCILER_DB_PASSWORD``, a file named by
``$RECONCILER_DB_PASSWORD_FILE`` (systemd credentials, Docker secrets), or libpq's own
``$PGPASSWORD`` / ``~/.pgpass``. It is never logged: messages go through
``observe.redact``.

Schema migrations run on a dedicated synchronous psycopg connection in a worker thread (the
runner is synchronous); everything else uses the async pool.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import datetime
from pathlib import Path
from typing import Any

import psycopg
from psycopg.rows import dict_row
from psycopg.types.json import Jsonb
from psycopg_pool import AsyncConnectionPool, PoolTimeout

from reconciler.errors import StoreError
from reconciler.observe.metrics import DB_CONNECTIONS
from reconciler.observe.redact import redact
from reconciler.spec.model import ResourceKey
from reconciler.state.migrations import MigrationRunner, PostgresMigrationConnection
from reconciler.state.rows import new_resource_values
from reconciler.state.server_store import DEFAULT_RETRY_SECONDS, ServerStore
from reconciler.state.server_tx import Row, Tx
from reconciler.state.store import MigrationInfo

# Errors that retrying cannot fix: a wrong password or database name must fail at once.
_FATAL_CONNECT = ("password authentication failed", "does not exist", "no password supplied",
                  "no pg_hba.conf entry", "role ")


def password_from_env() -> str | None:
    """``$RECONCILER_DB_PASSWORD``, else the content of ``$RECONCILER_DB_PASSWORD_FILE``."""
    value = os.environ.get("RECONCILER_DB_PASSWORD")
    if value:
        return value
    path = os.environ.get("RECONCILER_DB_PASSWORD_FILE")
    if path:
        try:
            return Path(path).read_text(encoding="utf-8").rstrip("\r\n")
        except OSError as exc:
            raise StoreError(f"RECONCILER_DB_PASSWORD_FILE: cannot read {path}: "
                             f"{exc.strerror}") from exc
    return None


def conninfo_from_url(url: str) -> str:
    """A libpq conninfo for ``url`` (scheme variants normalised, password from env added)."""
    scheme, _, rest = url.partition("://")
    if not rest or not scheme.lower().startswith(("postgresql", "postgres")):
        raise StoreError("a PostgreSQL URL is postgresql://user@host:port/dbname")
    conninfo = "postgresql://" + rest
    try:
        params = psycopg.conninfo.conninfo_to_dict(conninfo)
    except psycopg.ProgrammingError as exc:
        raise StoreError(redact(f"invalid PostgreSQL URL {url}: {exc}", urls=(url,))) from None
    if "password" not in params and (password := password_from_env()) is not None:
        conninfo = psycopg.conninfo.make_conninfo(conninfo, password=password)
    return conninfo


class PgTx:
    """``Tx`` on one psycopg async connection."""

    def __init__(self, conn: psycopg.AsyncConnection[Row]) -> None:
        self.conn = conn

    async def one(self, sql: str, params: tuple[Any, ...] = ()) -> Row | None:
        cursor = await self.conn.execute(sql, params or None)
        return await cursor.fetchone()

    async def all(self, sql: str, params: tuple[Any, ...] = ()) -> list[Row]:
        cursor = await self.conn.execute(sql, params or None)
        return await cursor.fetchall()

    async def execute(self, sql: str, params: tuple[Any, ...] = ()) -> int:
        cursor = await self.conn.execute(sql, params or None)
        return cursor.rowcount

    async def insert(self, table: str, values: dict[str, Any], pk: str) -> int:
        columns = ", ".join(values)
        marks = ", ".join(["%s"] * len(values))
        cursor = await self.conn.execute(
            f"INSERT INTO {table} ({columns}) VALUES ({marks}) RETURNING {pk}",  # noqa: S608
            tuple(values.values()),
        )
        row = await cursor.fetchone()
        assert row is not None
        return int(row[pk])


class PostgresStore(ServerStore):
    """``Store`` on a PostgreSQL database (which must exist; ``migrate()`` creates the schema)."""

    dialect = "postgresql"
    null_safe_equal = "{a} IS NOT DISTINCT FROM {b}"
    trigger_column = '"trigger"'
    binary_order = ' COLLATE "C"'

    def __init__(
        self,
        url: str,
        *,
        sql_dir: Path | None = None,
        min_size: int = 1,
        max_size: int = 4,
        connect_timeout: float = 5.0,
        retry_seconds: float = DEFAULT_RETRY_SECONDS,
    ) -> None:
        super().__init__()
        self.url = url
        self.sql_dir = sql_dir
        self.retry_seconds = retry_seconds
        self.connect_timeout = connect_timeout
        self._conninfo = conninfo_from_url(url)
        self._pool: AsyncConnectionPool[psycopg.AsyncConnection[Row]] = AsyncConnectionPool(
            self._conninfo,
            min_size=min_size,
            max_size=max_size,
            open=False,
            timeout=connect_timeout,  # one wait for a connection; _run retries around it
            kwargs={"autocommit": True, "row_factory": dict_row,
                    "connect_timeout": max(1, int(connect_timeout))},
            name="fraisier",
        )
        self._opened = False

    # -- plumbing --------------------------------------------------------------------------------
    async def _ensure_open(self) -> None:
        if self._opened:
            return
        # One direct connection first: a wrong password or database name fails now with the
        # server's reason, instead of as pool timeouts retried for retry_seconds.
        try:
            conn = await psycopg.AsyncConnection.connect(
                self._conninfo, connect_timeout=max(1, int(self.connect_timeout)))
        except psycopg.OperationalError as exc:
            if any(marker in str(exc) for marker in _FATAL_CONNECT):
                raise StoreError(f"{self._redacted()}: {self._described(exc)}") from exc
            raise  # server down: retryable, _run backs off
        await conn.close()
        if not self._opened:
            self._opened = True
            await self._pool.open(wait=False)

    @asynccontextmanager
    async def _connection(self, *, transaction: bool, read_only: bool = False
                          ) -> AsyncIterator[Tx]:
        await self._ensure_open()
        async with self._pool.connection() as conn:
            if not transaction:
                yield PgTx(conn)
                return
            async with conn.transaction():
                if read_only:  # one snapshot for a deployment and its events and steps
                    await conn.execute(
                        "SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
                yield PgTx(conn)

    def _is_retryable(self, exc: BaseException) -> bool:
        if isinstance(exc, PoolTimeout):
            return True
        if isinstance(exc, psycopg.OperationalError):
            # connection loss, admin shutdown, deadlock / serialization failure (class 40)
            return not any(marker in str(exc) for marker in _FATAL_CONNECT)
        return isinstance(exc, psycopg.InterfaceError)

    async def _on_retryable_error(self, exc: BaseException) -> None:
        if self._opened and not isinstance(exc, PoolTimeout):
            # a restarted server killed every pooled connection, not only this one: test the
            # idle ones now (the pool drops the dead) rather than failing on each in turn
            try:
                await self._pool.check()
            except Exception:  # noqa: S110 - best effort; the retry loop carries on anyway
                pass

    def _describe(self, exc: BaseException) -> str:
        if isinstance(exc, psycopg.Error):
            primary = exc.diag.message_primary if exc.diag else None
            text = primary or (str(exc).strip().splitlines() or [""])[0]
            state = f" [{exc.sqlstate}]" if exc.sqlstate else ""
            return f"{type(exc).__name__}{state}: {text}"
        return f"{type(exc).__name__}: {exc}"

    def _publish_pool_metrics(self) -> None:
        if not self._opened:
            return
        stats = self._pool.get_stats()
        size = stats.get("pool_size", 0)
        idle = stats.get("pool_available", 0)
        DB_CONNECTIONS.labels("open").set(size)
        DB_CONNECTIONS.labels("idle").set(idle)
        DB_CONNECTIONS.labels("in_use").set(max(0, size - idle))

    async def _close_pool(self) -> None:
        if self._opened:
            await self._pool.close()

    def _migrate_sync(self, status_only: bool) -> list[MigrationInfo]:
        try:
            with psycopg.connect(self._conninfo, autocommit=True,
                                 connect_timeout=max(1, int(self.connect_timeout))) as conn:
                runner = MigrationRunner(PostgresMigrationConnection(conn), self.sql_dir)
                return runner.status() if status_only else runner.migrate()
        except psycopg.Error as exc:
            raise StoreError(f"{self._redacted()}: {self._described(exc)}") from exc

    # -- values and dialect statements -----------------------------------------------------------
    def _db_time(self, value: datetime) -> Any:
        return value

    def _db_json(self, value: dict[str, Any] | None) -> Any:
        return Jsonb(value) if value is not None else None

    def _py_json(self, value: Any) -> dict[str, Any] | None:
        return value  # psycopg decodes jsonb

    def _db_clock(self) -> str:
        return "clock_timestamp()"

    async def _insert_resource_if_missing(self, tx: Tx, key: ResourceKey, now: datetime) -> None:
        values = new_resource_values(key, self._db_time(now))
        await tx.execute(
            f"INSERT INTO tb_resource ({', '.join(values)}) "  # noqa: S608
            f"VALUES ({', '.join(['%s'] * len(values))}) "
            # no conflict target: a racing insert may hit identifier's unique index first
            "ON CONFLICT DO NOTHING",
            tuple(values.values()),
        )

    async def _acquire_lock_tx(self, tx: Tx, name: str, owner: str, ttl_seconds: float) -> bool:
        # One statement decides (atomic under concurrency): insert, renew (same owner,
        # acquired_at kept) or take over an expired lease; a live lease of another owner leaves
        # the row untouched and the row count at 0.
        import uuid

        count = await tx.execute(
            """INSERT INTO tb_lock (id, identifier, name, owner, acquired_at, expires_at)
               VALUES (%s, %s, %s, %s, clock_timestamp(),
                       clock_timestamp() + make_interval(secs => %s))
               ON CONFLICT (identifier) DO UPDATE SET
                   acquired_at = CASE WHEN tb_lock.owner = EXCLUDED.owner
                                      THEN tb_lock.acquired_at ELSE EXCLUDED.acquired_at END,
                   owner = EXCLUDED.owner,
                   expires_at = EXCLUDED.expires_at
               WHERE tb_lock.owner = EXCLUDED.owner
                  OR tb_lock.expires_at <= EXCLUDED.acquired_at""",
            (str(uuid.uuid4()), name, name, owner, float(ttl_seconds)),
        )
        return count == 1

    async def _insert_delivery(self, tx: Tx, row_id: str, provider: str,
                               delivery_id: str) -> bool:
        count = await tx.execute(
            """INSERT INTO tb_webhook_delivery (id, identifier, provider, delivery_id,
                                                received_at)
               VALUES (%s, %s, %s, %s, clock_timestamp())
               ON CONFLICT DO NOTHING""",
            (row_id, f"{provider}/{delivery_id}", provider, delivery_id),
        )
        return count == 1

    async def _notice_insert(self, values: dict[str, Any]) -> bool:
        names = ", ".join(values)
        marks = ", ".join("%s" for _ in values)
        return await self._run("notification", lambda tx, _: tx.execute(
            f"INSERT INTO tb_notification ({names}) VALUES ({marks}) "  # noqa: S608
            "ON CONFLICT DO NOTHING", tuple(values.values()))) == 1


__all__ = ["PostgresStore", "conninfo_from_url", "password_from_env"]
