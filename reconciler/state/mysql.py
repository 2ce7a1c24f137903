"""MySQL 8 / MariaDB implementation of the ``Store`` protocol: PyMySQL in worker threads.

Driver choice: PyMySQL, run in a small thread pool (one thread per pooled connection).
- It is the maintained reference pure-Python driver (aiomysql is a thin asyncio wrapper around
  an older PyMySQL; asyncmy is a Cython fork): no compiler or platform wheel needed anywhere the
  daemon runs, and no second driver for the synchronous migration runner, which needs a
  blocking connection anyway.
- The cost, one thread hop per statement, is small next to a network round trip to the server
  (bench/store.py measures it) and the reconciler's write rate is low.

URL: ``mysql://user[:password]@host[:port]/dbname`` (``mariadb://`` too; ``?unix_socket=PATH``).
A password not in the URL comes from ``$RECONCILER_DB_PASSWORD`` or the file named by
``$RECONCILER_DB_PASSWORD_FILE``; it is never logged (messages go through
``observe.redact``).

Sessions run at READ COMMITTED (a parent row locked FOR UPDATE then shows the children other
transactions committed: per-parent sequence numbers stay exact), UTC (DATETIME(6) columns hold
UTC), strict mode (a value that does not fit is an error, never silently truncated) and
ANSI_QUOTES off (the schema quotes the reserved column `trigger` with backticks).
"""

from __future__ import annotations

import asyncio
import functools
import json
import re
import uuid
from collections.abc import AsyncIterator, Callable
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import parse_qs, unquote, urlsplit

import pymysql
import pymysql.cursors
from pymysql.constants import CLIENT

from reconciler.errors import StoreError
from reconciler.observe.metrics import DB_CONNECTIONS
from reconciler.observe.redact import redact
from reconciler.spec.model import ResourceKey, canonical_json
from reconciler.state.migrations import MigrationRunner, MySQLMigrationConnection
from reconciler.state.postgresql import password_from_env
from reconciler.state.rows import new_resource_values
from reconciler.state.server_store import DEFAULT_RETRY_SECONDS, ServerStore
from reconciler.state.server_tx import Row, Tx
from reconciler.state.store import MigrationInfo

T = TypeVar("T")

SQL_MODE = ("STRICT_ALL_TABLES,NO_ZERO_IN_DATE,NO_ZERO_DATE,ERROR_FOR_DIVISION_BY_ZERO,"
            "NO_ENGINE_SUBSTITUTION")
# Server error codes worth retrying: connection refused/lost/gone, server shutting down,
# connection killed, too many connections, deadlock, lock wait timeout.
RETRYABLE_CODES = frozenset({2003, 2006, 2013, 2055, 1053, 1927, 4031, 1040, 1213, 1205})
DUPLICATE_KEY = 1062
_DUPLICATE_VALUE = re.compile(r"Duplicate entry '.*' for key", re.DOTALL)


def connect_params(url: str) -> dict[str, Any]:
    """PyMySQL ``connect()`` arguments for a ``mysql://`` URL (password from env if absent)."""
    try:
        parts = urlsplit(url)
    except ValueError as exc:  # e.g. an unbracketed "[" in the password
        raise StoreError(redact(f"invalid MySQL URL {url}: {exc}", urls=(url,))) from None
    if not parts.scheme.lower().startswith(("mysql", "mariadb")):
        raise StoreError("a MySQL URL is mysql://user@host:port/dbname")
    database = unquote(parts.path.lstrip("/"))
    if not database:
        raise StoreError("a MySQL URL names its database: mysql://user@host:port/dbname")
    try:
        port = parts.port or 3306
    except ValueError:
        raise StoreError("invalid port in the MySQL URL") from None
    params: dict[str, Any] = {
        "host": parts.hostname or "localhost",
        "port": port,
        "user": unquote(parts.username) if parts.username else "root",
        "database": database,
    }
    password = unquote(parts.password) if parts.password is not None else password_from_env()
    if password is not None:
        params["password"] = password
    query = parse_qs(parts.query)
    if "unix_socket" in query:
        params["unix_socket"] = query["unix_socket"][0]
    return params


def open_connection(params: dict[str, Any], connect_timeout: float) -> pymysql.Connection[Any]:
    conn = pymysql.connect(
        **params,
        charset="utf8mb4",
        autocommit=True,
        connect_timeout=connect_timeout,
        # rowcount = rows matched, as on PostgreSQL (not only rows whose values changed)
        client_flag=CLIENT.FOUND_ROWS,
        cursorclass=pymysql.cursors.DictCursor,
    )
    try:
        with conn.cursor() as cursor:
            cursor.execute("SET SESSION time_zone = '+00:00', SESSION sql_mode = %s",
                           (SQL_MODE,))
            cursor.execute("SET SESSION TRANSACTION ISOLATION LEVEL READ COMMITTED")
    except BaseException:
        conn.close()
        raise
    return conn


def _run_statement(conn: pymysql.Connection[Any], sql: str,
                   params: tuple[Any, ...]) -> tuple[list[Row], int, int]:
    with conn.cursor() as cursor:
        cursor.execute(sql, params or None)
        rows = list(cursor.fetchall()) if cursor.description else []
        return rows, cursor.rowcount, cursor.lastrowid


class MySQLTx:
    """``Tx`` on one PyMySQL connection; each statement runs in the store's thread pool."""

    def __init__(self, store: MySQLStore, conn: pymysql.Connection[Any]) -> None:
        self.store = store
        self.conn = conn

    async def _statement(self, sql: str, params: tuple[Any, ...]) -> tuple[list[Row], int, int]:
        return await self.store.call(_run_statement, self.conn, sql, params)

    async def one(self, sql: str, params: tuple[Any, ...] = ()) -> Row | None:
        rows, _, _ = await self._statement(sql, params)
        return rows[0] if rows else None

    async def all(self, sql: str, params: tuple[Any, ...] = ()) -> list[Row]:
        rows, _, _ = await self._statement(sql, params)
        return rows

    async def execute(self, sql: str, params: tuple[Any, ...] = ()) -> int:
        _, count, _ = await self._statement(sql, params)
        return count

    async def insert(self, table: str, values: dict[str, Any], pk: str) -> int:
        columns = ", ".join(values)
        marks = ", ".join(["%s"] * len(values))
        _, _, last_id = await self._statement(
            f"INSERT INTO {table} ({columns}) VALUES ({marks})",  # noqa: S608
            tuple(values.values()),
        )
        return int(last_id)


class MySQLStore(ServerStore):
    """``Store`` on a MySQL 8 or MariaDB 10.5+ database (which must exist)."""

    dialect = "mysql"
    null_safe_equal = "{a} <=> {b}"
    trigger_column = "`trigger`"
    audit_prune_sql = "DELETE FROM tb_audit_event WHERE at < %s ORDER BY at LIMIT %s"

    def __init__(
        self,
        url: str,
        *,
        sql_dir: Path | None = None,
        max_size: int = 4,
        connect_timeout: float = 5.0,
        retry_seconds: float = DEFAULT_RETRY_SECONDS,
    ) -> None:
        super().__init__()
        self.url = url
        self.sql_dir = sql_dir
        self.retry_seconds = retry_seconds
        self.connect_timeout = connect_timeout
        self.max_size = max_size
        self._params = connect_params(url)
        self._executor = ThreadPoolExecutor(max_workers=max_size,
                                            thread_name_prefix="fraisier-mysql")
        self._idle: list[pymysql.Connection[Any]] = []
        self._open_count = 0
        self._slots: asyncio.Semaphore | None = None

    # -- pool ------------------------------------------------------------------------------------
    async def call(self, fn: Callable[..., T], *args: Any) -> T:
        """``fn(*args)`` in the store's thread pool (PyMySQL blocks)."""
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, functools.partial(fn, *args))

    async def _acquire(self) -> pymysql.Connection[Any]:
        if self._slots is None:
            self._slots = asyncio.Semaphore(self.max_size)
        await self._slots.acquire()
        try:
            if self._idle:
                return self._idle.pop()
            conn = await self.call(open_connection, self._params, self.connect_timeout)
            self._open_count += 1
            return conn
        except BaseException:
            self._slots.release()
            raise

    async def _release(self, conn: pymysql.Connection[Any], broken: bool) -> None:
        assert self._slots is not None
        try:
            if broken or self._closed:
                self._open_count -= 1
                await self.call(_close_quietly, conn)
            else:
                self._idle.append(conn)
        finally:
            self._slots.release()

    @asynccontextmanager
    async def _connection(self, *, transaction: bool, read_only: bool = False
                          ) -> AsyncIterator[Tx]:
        conn = await self._acquire()
        broken = False
        try:
            tx = MySQLTx(self, conn)
            if not transaction:
                yield tx
                return
            if read_only:  # one snapshot for a deployment and its events and steps
                await tx.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ")
                await tx.execute("START TRANSACTION WITH CONSISTENT SNAPSHOT, READ ONLY")
            else:
                await tx.execute("START TRANSACTION")
            try:
                yield tx
            except BaseException:
                try:
                    await tx.execute("ROLLBACK")
                except Exception:
                    broken = True
                raise
            await tx.execute("COMMIT")
        except asyncio.CancelledError:
            # The worker thread may still be using the connection: never hand it out again.
            broken = True
            raise
        except Exception as exc:
            broken = broken or self._is_connection_error(exc)
            raise
        finally:
            await self._release(conn, broken)

    async def _on_retryable_error(self, exc: BaseException) -> None:
        if self._is_connection_error(exc):
            # a restarted server killed the idle connections too: open fresh ones on demand
            idle, self._idle = self._idle, []
            self._open_count -= len(idle)
            for conn in idle:
                await self.call(_close_quietly, conn)

    @staticmethod
    def _code(exc: BaseException) -> int | None:
        if isinstance(exc, pymysql.err.MySQLError) and exc.args and isinstance(exc.args[0], int):
            return exc.args[0]
        return None

    def _is_connection_error(self, exc: BaseException) -> bool:
        if isinstance(exc, pymysql.err.InterfaceError | ConnectionError):
            return True
        return self._code(exc) in {2003, 2006, 2013, 2055, 1053, 1927, 4031}

    def _is_retryable(self, exc: BaseException) -> bool:
        if isinstance(exc, pymysql.err.InterfaceError | ConnectionError):
            return True
        return self._code(exc) in RETRYABLE_CODES

    def _describe(self, exc: BaseException) -> str:
        code = self._code(exc)
        if code is not None:
            message = str(exc.args[1]) if len(exc.args) > 1 else ""
            # the server quotes the duplicate value; messages carry no stored values
            message = _DUPLICATE_VALUE.sub("Duplicate entry for key", message)
            return f"{type(exc).__name__} [{code}]: {message}"
        return f"{type(exc).__name__}: {exc}"

    def _publish_pool_metrics(self) -> None:
        idle = len(self._idle)
        DB_CONNECTIONS.labels("open").set(self._open_count)
        DB_CONNECTIONS.labels("idle").set(idle)
        DB_CONNECTIONS.labels("in_use").set(max(0, self._open_count - idle))

    async def _close_pool(self) -> None:
        idle, self._idle = self._idle, []
        for conn in idle:
            await self.call(_close_quietly, conn)
        self._open_count -= len(idle)
        self._executor.shutdown(wait=True)

    def _migrate_sync(self, status_only: bool) -> list[MigrationInfo]:
        try:
            conn = open_connection(self._params, self.connect_timeout)
        except pymysql.err.MySQLError as exc:
            raise StoreError(f"{self._redacted()}: {self._described(exc)}") from exc
        try:
            # tuples, not dicts, for the runner
            conn.cursorclass = pymysql.cursors.Cursor
            runner = MigrationRunner(MySQLMigrationConnection(conn), self.sql_dir)
            return runner.status() if status_only else runner.migrate()
        except pymysql.err.MySQLError as exc:
            raise StoreError(f"{self._redacted()}: {self._described(exc)}") from exc
        finally:
            _close_quietly(conn)

    # -- values and dialect statements -----------------------------------------------------------
    def _db_time(self, value: datetime) -> Any:
        # DATETIME has no zone: store naive UTC (the session time_zone is +00:00 as well)
        return value.astimezone(UTC).replace(tzinfo=None)

    def _db_json(self, value: dict[str, Any] | None) -> Any:
        return canonical_json(value) if value is not None else None

    def _py_json(self, value: Any) -> dict[str, Any] | None:
        if value is None:
            return None
        if isinstance(value, bytes | bytearray):
            value = value.decode("utf-8")
        result = json.loads(value) if isinstance(value, str) else value
        assert isinstance(result, dict)
        return result

    def _db_clock(self) -> str:
        return "UTC_TIMESTAMP(6)"

    async def _insert_resource_if_missing(self, tx: Tx, key: ResourceKey, now: datetime) -> None:
        values = new_resource_values(key, self._db_time(now))
        # A no-op update on a duplicate: unlike INSERT IGNORE it does not hide other errors.
        await tx.execute(
            f"INSERT INTO tb_resource ({', '.join(values)}) "  # noqa: S608
            f"VALUES ({', '.join(['%s'] * len(values))}) "
            "ON DUPLICATE KEY UPDATE pk_resource = pk_resource",
            tuple(values.values()),
        )

    async def _acquire_lock_tx(self, tx: Tx, name: str, owner: str, ttl_seconds: float) -> bool:
        # Autocommit, one atomic statement at a time (no explicit transaction: a failed INSERT
        # would keep a shared lock on the duplicate key and two takers could deadlock).
        # 1. renew ours or take over an expired lease (InnoDB re-reads the latest row version
        #    under its row lock, so two takers cannot both match);
        # 2. else insert a new lease; a duplicate key means someone else holds it.
        # MySQL evaluates SET assignments left to right: acquired_at must read the old owner.
        micros = max(1, round(ttl_seconds * 1_000_000))
        renewed = await tx.execute(
            """UPDATE tb_lock
               SET acquired_at = IF(owner = %s, acquired_at, UTC_TIMESTAMP(6)),
                   owner = %s,
                   expires_at = UTC_TIMESTAMP(6) + INTERVAL %s MICROSECOND
               WHERE name = %s AND (owner = %s OR expires_at <= UTC_TIMESTAMP(6))""",
            (owner, owner, micros, name, owner),
        )
        if renewed:
            return True
        try:
            await tx.execute(
                """INSERT INTO tb_lock (id, identifier, name, owner, acquired_at, expires_at)
                   VALUES (%s, %s, %s, %s, UTC_TIMESTAMP(6),
                           UTC_TIMESTAMP(6) + INTERVAL %s MICROSECOND)""",
                (str(uuid.uuid4()), name, name, owner, micros),
            )
        except pymysql.err.IntegrityError as exc:
            if self._code(exc) == DUPLICATE_KEY:
                return False
            raise
        return True

    async def _insert_delivery(self, tx: Tx, row_id: str, provider: str,
                               delivery_id: str) -> bool:
        try:
            await tx.execute(
                """INSERT INTO tb_webhook_delivery (id, identifier, provider, delivery_id,
                                                    received_at)
                   VALUES (%s, %s, %s, %s, UTC_TIMESTAMP(6))""",
                (row_id, f"{provider}/{delivery_id}", provider, delivery_id),
            )
        except pymysql.err.IntegrityError as exc:
            if self._code(exc) == DUPLICATE_KEY:
                return False
            raise
        return True

    async def _notice_insert(self, values: dict[str, Any]) -> bool:
        names = ", ".join(values)
        marks = ", ".join("%s" for _ in values)

        async def op(tx: Tx, _: bool) -> bool:
            try:
                await tx.execute(f"INSERT INTO tb_notification ({names}) "  # noqa: S608
                                 f"VALUES ({marks})", tuple(values.values()))
            except pymysql.err.IntegrityError as exc:
                if self._code(exc) == DUPLICATE_KEY:
                    return False
                raise
            return True

        return await self._run("notification", op)


def _close_quietly(conn: pymysql.Connection[Any]) -> None:
    try:
        conn.close()
    except Exception:  # already closed or the socket is gone: nothing left to release
        return


__all__ = ["MySQLStore", "connect_params"]
