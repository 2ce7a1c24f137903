"""SQLite implementation of the ``Store`` protocol (the default, embedded backend): the
connection, its worker thread, schema and the audit and notification hooks here; resources in
``sqlite_resources.py``, the deployment journal in ``sqlite_journal.py``, leases in
``sqlite_leases.py``, webhook deliveries in ``sqlite_deliveries.py``, over the hooks of
``sqlite_tx.py``.

Safe across processes (the daemon and a CLI command such as ``reconciler suspend`` share one
file): WAL lets readers run beside the single writer, ``busy_timeout`` makes a writer wait for
the lock instead of failing, and every write transaction starts with ``BEGIN IMMEDIATE`` so it
holds the write lock from its first read. (A deferred transaction that reads and then writes can
fail with SQLITE_BUSY at once in WAL mode when another process committed in between; the busy
handler cannot help there. Taking the lock up front avoids that and makes read-check-write
sequences such as ``transition`` and the per-resource sequence number atomic.)

Threading: one dedicated worker thread owns the connection and runs every call. sqlite3
connections must not be used by two threads at once, and the default executor of
``asyncio.to_thread`` is a pool; one thread gives serialised access without a lock, keeps the
connection on the thread that made it (``check_same_thread`` stays on), and keeps lock waits
(up to ``busy_timeout``) off the event loop. Calls are short (one transaction each), so a single
thread is not a bottleneck at the write rates of a reconciler.
"""

from __future__ import annotations

import asyncio
import functools
import os
import sqlite3
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

from reconciler.backoff import equal_jitter, exponential
from reconciler.errors import StoreError
from reconciler.state import rows
from reconciler.state.migrations import MigrationRunner, SQLiteMigrationConnection
from reconciler.state.notices import NotificationClaims
from reconciler.state.private import private_file
from reconciler.state.sqlite_deliveries import SQLiteDeliveries
from reconciler.state.sqlite_journal import SQLiteJournal
from reconciler.state.sqlite_leases import SQLiteLeases
from reconciler.state.sqlite_resources import SQLiteResources
from reconciler.state.sqlite_tx import Params
from reconciler.state.store import MigrationInfo

T = TypeVar("T")

DEFAULT_BUSY_TIMEOUT = 30.0  # seconds a writer waits for another process's transaction
# WAL with synchronous=NORMAL: a commit is not fsynced (the WAL is at checkpoints), so a killed
# process loses nothing and the file is never corrupt, but a power loss or kernel crash may undo
# the last commits (the next pass sees a deployment as unfinished and redoes it). FULL fsyncs
# every commit: ~2.6 ms each here, 17 commits per deploy of a Service. RECONCILER_SQLITE_SYNC=full
# restores it.
_SYNC_ENV = "RECONCILER_SQLITE_SYNC"
_SYNC_MODES = ("normal", "full", "extra")
AUDIT_PRUNE_DELETE = rows.AUDIT_PRUNE_DELETE.format(mark="?")


def _storage_failure(exc: sqlite3.Error) -> bool:
    """The disk is full or the file cannot be written (SQLITE_FULL, SQLITE_IOERR_*): on a full
    filesystem SQLite reports either, depending on which file (db, -wal, -shm) hit it."""
    code = getattr(exc, "sqlite_errorcode", None)
    if code is not None:
        return (code & 0xFF) in (sqlite3.SQLITE_FULL, sqlite3.SQLITE_IOERR)
    text = str(exc)
    return "disk is full" in text or "disk I/O error" in text


def _private_database(path: Path) -> None:
    """The database file exists 0600 before SQLite opens it: SQLite then creates the -wal, -shm
    and -journal files with the database's own mode (whatever the umask). Companions an older
    version left readable are tightened too."""
    try:
        private_file(path)
        for suffix in ("-wal", "-shm", "-journal"):
            companion = path.with_name(path.name + suffix)
            if companion.exists():
                private_file(companion)
    except OSError as exc:
        raise StoreError(f"{path}: cannot open the database file: {exc.strerror}") from exc


def _sync_mode() -> str:
    mode = os.environ.get(_SYNC_ENV, "normal").strip().lower() or "normal"
    if mode not in _SYNC_MODES:
        raise StoreError(f"{_SYNC_ENV}={mode!r}: expected one of {', '.join(_SYNC_MODES)}")
    return mode.upper()


class SQLiteStore(SQLiteResources, SQLiteJournal, SQLiteLeases, SQLiteDeliveries, rows.AuditLog,
                  NotificationClaims):
    """``Store`` on one SQLite file (or ``:memory:``)."""

    dialect = "sqlite"
    param_mark = "?"

    def __init__(
        self,
        path: str | Path,
        *,
        url: str | None = None,
        sql_dir: Path | None = None,
        busy_timeout: float = DEFAULT_BUSY_TIMEOUT,
    ) -> None:
        self.path = str(path)
        self.url = url if url is not None else f"sqlite:///{self.path}"
        self.sql_dir = sql_dir
        self.busy_timeout = busy_timeout
        self._closed = False
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="fraisier-sqlite")
        try:
            self._conn: sqlite3.Connection = self._executor.submit(
                self._guarded, self._connect).result()
        except BaseException:
            self._executor.shutdown(wait=False)
            raise
        self.journal_mode: str = self._executor.submit(self._journal_mode).result()

    # -- plumbing ------------------------------------------------------------------------------
    def _connect(self) -> sqlite3.Connection:
        if self.path != ":memory:":
            _private_database(Path(self.path))
        conn = sqlite3.connect(self.path, timeout=self.busy_timeout, isolation_level=None)
        try:
            conn.execute(f"PRAGMA busy_timeout = {int(self.busy_timeout * 1000)}")
            self._use_wal(conn)
            conn.execute(f"PRAGMA synchronous = {_sync_mode()}")
            conn.execute("PRAGMA foreign_keys = ON")
            return conn
        except BaseException:
            conn.close()
            raise

    def _use_wal(self, conn: sqlite3.Connection) -> None:
        """WAL, which the file keeps once set (":memory:" stays "memory"). Switching needs the
        database to itself, and SQLite refuses it at once, without its busy wait, while another
        connection holds a write transaction (two processes opening one new database): the
        switch is tried again, with jittered backoff, for up to the busy timeout."""
        if str(conn.execute("PRAGMA journal_mode").fetchone()[0]).lower() == "wal":
            return
        deadline = time.monotonic() + self.busy_timeout
        attempt = 1
        while True:
            try:
                conn.execute("PRAGMA journal_mode = WAL")
                return
            except sqlite3.OperationalError as exc:
                busy = exc.sqlite_errorcode in (sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED)
                pause = exponential(attempt, first=0.01, cap=0.25)
                if not busy or time.monotonic() + pause > deadline:
                    raise
            time.sleep(equal_jitter(pause))
            attempt += 1

    def _journal_mode(self) -> str:
        return str(self._conn.execute("PRAGMA journal_mode").fetchone()[0])

    def _guarded(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """Run in the worker thread; turn driver errors into StoreError (no SQL values leak)."""
        try:
            return fn(*args, **kwargs)
        except sqlite3.OperationalError as exc:
            text = str(exc)
            if _storage_failure(exc):
                raise self._storage_error(text) from exc
            if "no such table" in text or "no such view" in text:
                raise StoreError(
                    f"{self.path}: the database schema is missing or outdated ({text})"
                ) from exc
            if "locked" in text or "busy" in text:
                raise StoreError(
                    f"{self.path}: database is locked by another connection "
                    f"(waited up to {self.busy_timeout:g} s)"
                ) from exc
            raise StoreError(f"{self.path}: {text}") from exc
        except sqlite3.Error as exc:
            if _storage_failure(exc):
                raise self._storage_error(str(exc)) from exc
            raise StoreError(f"{self.path}: {type(exc).__name__}: {exc}") from exc

    def _storage_error(self, text: str) -> StoreError:
        """SQLITE_FULL / SQLITE_IOERR: say how much space is left and what to do. SQLite rolls
        the failed transaction back (the journal is intact), so a rerun once space is freed is
        safe."""
        folder = Path(self.path).parent
        try:
            stat = os.statvfs(folder)
            free = f"{stat.f_bavail * stat.f_frsize // 1024} KiB free on that filesystem"
        except OSError:
            free = "free space unknown"
        return StoreError(
            f"{self.path}: {text} ({free}); the write was rolled back",
            hint=f"free disk space on the filesystem holding {folder} (`df -h {folder}`) or "
                 "move the state dir / --db elsewhere, then rerun: the database is intact",
        )

    async def _run(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        if self._closed:
            raise StoreError(f"{self.url}: the store is closed")
        loop = asyncio.get_running_loop()
        call = functools.partial(self._guarded, fn, *args, **kwargs)
        return await loop.run_in_executor(self._executor, call)

    @contextmanager
    def _write(self) -> Iterator[None]:
        """One write transaction holding the write lock from its start."""
        conn = self._conn
        conn.execute("BEGIN IMMEDIATE")
        try:
            yield
            conn.execute("COMMIT")
        except BaseException:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise

    @contextmanager
    def _read(self) -> Iterator[None]:
        """A read snapshot, so a deployment and its events/steps are read consistently."""
        conn = self._conn
        if conn.in_transaction:  # already inside _write: that transaction is the snapshot
            yield
            return
        conn.execute("BEGIN")
        try:
            yield
        finally:
            if conn.in_transaction:
                conn.execute("COMMIT")

    # SQL text below is only ever built from constants and column names from fixed sets (hence
    # the S608 waivers); every value travels as a bound parameter.
    def _one(self, sql: str, params: Params = ()) -> dict[str, Any] | None:
        # Drained, not next(): an unfinished SELECT would hold its read snapshot open.
        rows = self._all(sql, params)
        return rows[0] if rows else None

    def _all(self, sql: str, params: Params = ()) -> list[dict[str, Any]]:
        cursor = self._conn.execute(sql, params)
        names = [column[0] for column in cursor.description]
        return [dict(zip(names, row, strict=True)) for row in cursor.fetchall()]

    def _insert(self, table: str, values: dict[str, Any]) -> int:
        """INSERT one row (column names from the code, values bound); its integer key."""
        names = ", ".join(f'"{name}"' for name in values)  # "trigger" is an SQL keyword
        marks = ", ".join("?" for _ in values)
        cursor = self._conn.execute(f"INSERT INTO {table} ({names}) VALUES ({marks})",  # noqa: S608
                                    tuple(values.values()))
        pk = cursor.lastrowid
        assert isinstance(pk, int)
        return pk

    def _tuples(self, sql: str, params: Params = ()) -> list[tuple[Any, ...]]:
        """Rows as tuples, in the order of the SELECT's columns (no dict per row)."""
        return self._conn.execute(sql, params).fetchall()

    # -- schema ------------------------------------------------------------------------------
    def _runner(self) -> MigrationRunner:
        return MigrationRunner(SQLiteMigrationConnection(self._conn), self.sql_dir)

    async def migrate(self) -> list[MigrationInfo]:
        """Apply pending migrations; return the ones applied now."""
        return await self._run(lambda: self._runner().migrate())

    async def migration_status(self) -> list[MigrationInfo]:
        return await self._run(lambda: self._runner().status())

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(self._executor, self._close_connection)
        self._executor.shutdown(wait=True)

    def _close_connection(self) -> None:
        # No "PRAGMA optimize" here: run on a young database it records statistics of near-empty
        # tables that later mislead the planner (measured: 50k deployments, newest-50 query
        # 114 ms with such stale stats, <1 ms with none). Without sqlite_stat1 the planner's
        # defaults pick the intended indexes for every query of this store.
        self._conn.close()

    async def __aenter__(self) -> SQLiteStore:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    # -- audit (record_audit, list_audit, import_audit: rows.AuditLog) ------------------------
    def _audit_time(self, value: datetime) -> str:
        return value.astimezone(UTC).isoformat(timespec="microseconds")

    def _append_audit_sync(self, values: dict[str, Any], read_back: bool
                           ) -> dict[str, Any] | None:
        with self._write():
            self._insert("tb_audit_event", values)
            return self._one("SELECT * FROM v_audit_event WHERE id = ?",
                             (values["id"],)) if read_back else None

    async def _append_audit(self, values: dict[str, Any], *, read_back: bool
                            ) -> dict[str, Any] | None:
        return await self._run(self._append_audit_sync, values, read_back)

    async def _select_audit(self, where: str, params: tuple[Any, ...], limit: int
                            ) -> list[dict[str, Any]]:
        sql = (f"SELECT * FROM v_audit_event WHERE {where} "  # noqa: S608
               f"ORDER BY at DESC, identifier DESC LIMIT {int(limit) if limit > 0 else -1}")
        return await self._run(self._all, sql, params)

    def _delete_audit_batch_sync(self, cutoff: str, batch_size: int) -> int:
        with self._write():
            return self._conn.execute(AUDIT_PRUNE_DELETE, (cutoff, batch_size)).rowcount

    async def _delete_audit_batch(self, cutoff: Any, batch_size: int) -> int:
        return await self._run(self._delete_audit_batch_sync, cutoff, batch_size)

    # -- notifications (claim_notice, close_notice, …: notices.NotificationClaims) ------------
    def _notice_insert_sync(self, values: dict[str, Any]) -> bool:
        names = ", ".join(values)
        marks = ", ".join("?" for _ in values)
        with self._write():
            return self._conn.execute(
                f"INSERT INTO tb_notification ({names}) VALUES ({marks}) "  # noqa: S608
                "ON CONFLICT DO NOTHING", tuple(values.values())
            ).rowcount == 1

    async def _notice_insert(self, values: dict[str, Any]) -> bool:
        return await self._run(self._notice_insert_sync, values)

    def _notice_execute_sync(self, sql: str, params: tuple[Any, ...]) -> int:
        with self._write():
            return int(self._conn.execute(sql, params).rowcount)

    async def _notice_execute(self, sql: str, params: tuple[Any, ...]) -> int:
        return await self._run(self._notice_execute_sync, sql, params)

    async def _notice_row(self, sql: str, params: tuple[Any, ...]) -> dict[str, Any] | None:
        return await self._run(self._one, sql, params)


__all__ = ["DEFAULT_BUSY_TIMEOUT", "SQLiteStore"]
