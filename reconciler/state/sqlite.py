"""SQLite implementation of the ``Store`` protocol (the default, embedded backend): resources,
the deployment journal and audit here; leases in ``sqlite_leases.py``, webhook deliveries in
``sqlite_deliveries.py``, over the hooks of ``sqlite_tx.py``.

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
import json
import os
import sqlite3
import uuid
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

from reconciler.errors import NotFound, StoreError
from reconciler.spec.model import ResourceKey, canonical_json
from reconciler.state import journal, rows
from reconciler.state.audit import current_actor
from reconciler.state.migrations import MigrationRunner, SQLiteMigrationConnection
from reconciler.state.notices import NotificationClaims
from reconciler.state.private import private_file
from reconciler.state.sqlite_deliveries import SQLiteDeliveries
from reconciler.state.sqlite_leases import SQLiteLeases
from reconciler.state.sqlite_tx import Params, now_text
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

DEFAULT_BUSY_TIMEOUT = 30.0  # seconds a writer waits for another process's transaction
# WAL with synchronous=NORMAL: a commit is not fsynced (the WAL is at checkpoints), so a killed
# process loses nothing and the file is never corrupt, but a power loss or kernel crash may undo
# the last commits (the next pass sees a deployment as unfinished and redoes it). FULL fsyncs
# every commit: ~2.6 ms each here, 17 commits per deploy of a Service. RECONCILER_SQLITE_SYNC=full
# restores it.
_SYNC_ENV = "RECONCILER_SQLITE_SYNC"
_SYNC_MODES = ("normal", "full", "extra")


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


def _json(value: dict[str, Any] | None) -> str | None:
    return canonical_json(value) if value is not None else None


def _unjson(value: str | None) -> dict[str, Any] | None:
    return json.loads(value) if value is not None else None


def _sync_mode() -> str:
    mode = os.environ.get(_SYNC_ENV, "normal").strip().lower() or "normal"
    if mode not in _SYNC_MODES:
        raise StoreError(f"{_SYNC_ENV}={mode!r}: expected one of {', '.join(_SYNC_MODES)}")
    return mode.upper()


# What a plan reads of every resource, in key order: from the covering index
# ``ix_resource_plan`` alone (sql/sqlite/007), not from the rows and their documents.
PLAN_LISTING_SQL = (f"SELECT {rows.PLAN_RESOURCE_COLUMNS} FROM tb_resource "  # noqa: S608
                    "WHERE deleted = 0 ORDER BY environment, kind, name")


class SQLiteStore(SQLiteLeases, SQLiteDeliveries, rows.AuditLog, NotificationClaims):
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
        # the last light listing and the database's state it was read at (_light_resources)
        self._light: tuple[tuple[int, int, bool], list[ResourceRecord]] | None = None
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
            conn.execute("PRAGMA journal_mode = WAL")  # persistent; ":memory:" stays "memory"
            conn.execute(f"PRAGMA synchronous = {_sync_mode()}")
            conn.execute("PRAGMA foreign_keys = ON")
            return conn
        except BaseException:
            conn.close()
            raise

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

    # -- resources ---------------------------------------------------------------------------
    _RESOURCE_WHERE = "environment = ? AND kind = ? AND name = ?"

    @staticmethod
    def _key_params(key: ResourceKey) -> tuple[str, str, str]:
        return (key.environment, key.kind, key.name)

    def _resource_row(self, key: ResourceKey) -> dict[str, Any] | None:
        return self._one(f"SELECT * FROM v_resource WHERE {self._RESOURCE_WHERE}",  # noqa: S608
                         self._key_params(key))

    @staticmethod
    def _to_resource(row: dict[str, Any]) -> ResourceRecord:
        return rows.to_resource(row, _unjson)

    def _ensure_resource(self, key: ResourceKey, now: str) -> int:
        """pk of the resource, inserting a bare row first if it is new (inside _write)."""
        row = self._one(f"SELECT pk_resource FROM tb_resource WHERE {self._RESOURCE_WHERE}",  # noqa: S608
                        self._key_params(key))
        if row is not None:
            return int(row["pk_resource"])
        return self._insert("tb_resource", {
            "id": str(uuid.uuid4()),
            "identifier": str(key),
            "environment": key.environment,
            "kind": key.kind,
            "name": key.name,
            "created_at": now,
            "updated_at": now,
        })

    def _require_resource(self, key: ResourceKey) -> dict[str, Any]:
        row = self._one(f"SELECT * FROM tb_resource WHERE {self._RESOURCE_WHERE}",  # noqa: S608
                        self._key_params(key))
        if row is None:
            raise NotFound(f"no resource {key} in the state database")
        return row

    async def get_resource(self, key: ResourceKey) -> ResourceRecord | None:
        row = await self._run(self._resource_row, key)
        return self._to_resource(row) if row is not None else None

    def _resource_rows(self, identifiers: list[str]) -> list[dict[str, Any]]:
        found: list[dict[str, Any]] = []
        with self._read():
            for start in range(0, len(identifiers), rows.KEYS_PER_QUERY):
                chunk = identifiers[start:start + rows.KEYS_PER_QUERY]
                found += self._all(
                    f"SELECT * FROM v_resource WHERE identifier IN "  # noqa: S608
                    f"({', '.join('?' for _ in chunk)})", tuple(chunk))
        return found

    async def get_resources(self, keys: Iterable[ResourceKey]
                            ) -> dict[ResourceKey, ResourceRecord]:
        identifiers = list(dict.fromkeys(str(key) for key in keys))
        if not identifiers:
            return {}
        records = [self._to_resource(row)
                   for row in await self._run(self._resource_rows, identifiers)]
        return {record.key: record for record in records}


    async def list_resources(self, include_deleted: bool = False, *,
                             with_specs: bool = True) -> list[ResourceRecord]:
        where = "" if include_deleted else "WHERE deleted = 0"
        if not with_specs:
            return await self._run(self._light_resources, include_deleted)
        found = await self._run(
            self._all,
            f"SELECT * FROM v_resource {where} ORDER BY environment, kind, name",  # noqa: S608
        )
        return [self._to_resource(row) for row in found]

    async def plan_listing(self) -> list[ResourceRecord]:
        return await self._run(self._plan_listing)

    def _plan_listing(self) -> list[ResourceRecord]:
        # the cursor's rows one by one, not a list of them all: each is done with at once
        return rows.plan_resources(self._conn.execute(PLAN_LISTING_SQL))

    def _light_resources(self, include_deleted: bool) -> list[ResourceRecord]:
        """The light listing (every no-op pass of a daemon reads it), read again only when the
        database changed since the last one: ``PRAGMA data_version`` moves when another
        connection (process) commits, ``total_changes`` when this one writes a row. The records
        are shared between the listings (nothing changes a record: the store makes new ones)."""
        conn = self._conn
        stamp = (int(conn.execute("PRAGMA data_version").fetchone()[0]), conn.total_changes,
                 include_deleted)
        if self._light is not None and self._light[0] == stamp:
            return list(self._light[1])
        where = "" if include_deleted else "WHERE deleted = 0"
        records = rows.light_resources(self._tuples(
            f"SELECT {rows.LIGHT_RESOURCE_COLUMNS} FROM v_resource {where} "  # noqa: S608
            "ORDER BY environment, kind, name"))
        self._light = (stamp, records)
        return list(records)

    def _record_desired(self, key: ResourceKey, revision: str, spec_hash: str,
                        spec: dict[str, Any], config_commit: str | None) -> dict[str, Any]:
        with self._write():
            now = now_text()
            pk = self._ensure_resource(key, now)
            self._conn.execute(
                """UPDATE tb_resource
                   SET desired_revision = ?, desired_hash = ?, desired_spec = ?,
                       config_commit = ?, deleted = 0, updated_at = ?,
                       sync_status = CASE WHEN applied_hash IS ? THEN 'Synced'
                                          ELSE 'OutOfSync' END
                   WHERE pk_resource = ?""",
                (revision, spec_hash, _json(spec), config_commit, now, spec_hash, pk),
            )
            row = self._resource_row(key)
        assert row is not None
        return row

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
        row = await self._run(self._record_desired, key, revision, spec_hash, spec, config_commit)
        return self._to_resource(row)

    def _record_applied(self, key: ResourceKey, revision: str, spec_hash: str,
                        spec: dict[str, Any], config_commit: str | None) -> None:
        with self._write():
            now = now_text()
            pk = self._ensure_resource(key, now)
            self._conn.execute(
                """UPDATE tb_resource
                   SET applied_revision = ?, applied_hash = ?, applied_spec = ?,
                       config_commit = COALESCE(?, config_commit), updated_at = ?,
                       sync_status = CASE WHEN desired_hash IS NULL THEN sync_status
                                          WHEN desired_hash = ? THEN 'Synced'
                                          ELSE 'OutOfSync' END
                   WHERE pk_resource = ?""",
                (revision, spec_hash, _json(spec), config_commit, now, spec_hash, pk),
            )

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
        await self._run(self._record_applied, key, revision, spec_hash, spec, config_commit)

    def _update_resource(self, key: ResourceKey, fields: dict[str, Any], create: bool) -> None:
        rows.check_update_fields(fields)
        with self._write():
            now = now_text()
            pk = self._ensure_resource(key, now) if create else (
                self._require_resource(key)["pk_resource"]
            )
            if fields:
                assignments = ", ".join(f"{name} = :{name}" for name in sorted(fields))
                self._conn.execute(
                    f"UPDATE tb_resource SET {assignments}, updated_at = :updated_at "  # noqa: S608
                    "WHERE pk_resource = :pk",
                    {**fields, "updated_at": now, "pk": pk},
                )

    async def update_status(self, key: ResourceKey, **fields: Any) -> None:
        """Set any of sync_status, health_status, last_result, last_error, failed_revision.

        A resource not recorded yet gets a bare row first: the reconcile pass may report on a
        resource before it deploys it (blocked on a missing target, a secret that does not
        resolve), and ``reconciler status`` should show that.
        """
        rows.check_status_fields(fields)
        await self._run(self._update_resource, key, fields, True)

    def _mark_observed(self, keys: list[ResourceKey], health_status: str | None) -> None:
        with self._write():
            self._conn.executemany(
                f"UPDATE tb_resource SET health_observed_at = ?, health_status = "  # noqa: S608
                f"COALESCE(?, health_status) WHERE {self._RESOURCE_WHERE}",
                [(now_text(), health_status, *self._key_params(k)) for k in keys])

    async def mark_observed(self, keys: Iterable[ResourceKey],
                            health_status: str | None = None) -> None:
        """These resources' health was observed now (and is ``health_status``, when given)."""
        keys = list(keys)
        if health_status is not None:
            rows.check_status_fields({"health_status": health_status})
        if keys:
            await self._run(self._mark_observed, keys, health_status)

    async def set_suspended(self, key: ResourceKey, suspended: bool) -> None:
        """Pause/resume reconciling a known resource (NotFound otherwise: likely a typo)."""
        await self._run(self._update_resource, key, {"suspended": int(bool(suspended))}, False)

    async def mark_deleted(self, key: ResourceKey) -> None:
        """Gone from git: hidden from ``list_resources``; its history stays."""
        await self._run(self._update_resource, key, {"deleted": 1}, False)

    # -- deployment journal -------------------------------------------------------------------
    def _deployments(self, where: str, params: tuple[Any, ...], order: str,
                     limit: int = -1) -> list[DeploymentRecord]:
        """Deployments of v_deployment matching ``where``, each with its events and steps."""
        with self._read():
            found = self._all(
                f"SELECT * FROM v_deployment WHERE {where} ORDER BY {order} LIMIT ?",  # noqa: S608
                (*params, limit),
            )
            if not found:
                return []
            ids = json.dumps([row["id"] for row in found])
            events: dict[str, list[DeploymentEvent]] = {row["id"]: [] for row in found}
            for e in self._all(
                "SELECT deployment_id, status, message, at FROM v_deployment_event "
                "WHERE deployment_id IN (SELECT value FROM json_each(?)) "
                "ORDER BY deployment_id, seq",
                (ids,),
            ):
                events[e["deployment_id"]].append(rows.to_event(e))
            steps: dict[str, list[StepRecord]] = {row["id"]: [] for row in found}
            for s in self._all(
                "SELECT * FROM v_deployment_step "
                "WHERE deployment_id IN (SELECT value FROM json_each(?)) "
                "ORDER BY deployment_id, seq",
                (ids,),
            ):
                steps[s["deployment_id"]].append(rows.to_step(s))
        return [rows.to_deployment(row, events[row["id"]], steps[row["id"]], _unjson)
                for row in found]

    def _get_deployment(self, deployment_id: str) -> DeploymentRecord | None:
        found = self._deployments("id = ? OR identifier = ?", (deployment_id, deployment_id),
                                  "seq")
        return found[0] if found else None

    def _add_event(self, pk_deployment: int, identifier: str, status: str,
                   message: str | None, at: str) -> None:
        seq = self._next_seq("tb_deployment_event", "fk_deployment", pk_deployment)
        self._insert("tb_deployment_event", journal.event_row(
            str(uuid.uuid4()), pk_deployment, identifier, seq, status, message, at))

    def _next_seq(self, table: str, fk_column: str, fk: int) -> int:
        # Safe only inside _write: BEGIN IMMEDIATE keeps other writers out until COMMIT.
        row = self._one(f"SELECT COALESCE(MAX(seq), 0) + 1 AS seq FROM {table} "  # noqa: S608
                        f"WHERE {fk_column} = ?", (fk,))
        assert row is not None
        return int(row["seq"])

    def _create_deployment(self, key: ResourceKey, values: dict[str, Any]) -> DeploymentRecord:
        deployment_id = str(uuid.uuid4())
        with self._write():
            now = now_text()
            pk_resource = self._ensure_resource(key, now)
            seq = self._next_seq("tb_deployment", "fk_resource", pk_resource)
            row = journal.deployment_row(deployment_id, key, pk_resource, seq, now)
            identifier = row["identifier"]
            pk = self._insert("tb_deployment", {**row, **values})
            self._add_event(pk, identifier, PENDING, None, now)
            created = self._get_deployment(deployment_id)
        assert created is not None
        return created

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
        """Insert a ``pending`` deployment (and its first event).

        Its identifier is ``environment/Kind/name#<n>``, n counting 1, 2, 3… per resource. A
        resource the store has not seen yet gets a bare row, so the journal never drops an action.
        """
        values = {
            "from_revision": from_revision,
            "to_revision": to_revision,
            "config_commit": config_commit,
            "trigger": trigger,
            "strategy": strategy,
            "spec": _json(spec),
        }
        return await self._run(self._create_deployment, key, values)

    def _require_deployment(self, deployment_id: str) -> dict[str, Any]:
        row = self._one(
            "SELECT pk_deployment, identifier, status FROM tb_deployment WHERE id = ?",
            (deployment_id,),
        )
        if row is None:
            raise NotFound(f"no deployment {deployment_id}")
        return row

    def _transition(self, deployment_id: str, status: str, message: str | None,
                    extra: dict[str, Any], actor: str | None = None) -> None:
        with self._write():
            row = self._require_deployment(deployment_id)
            current = row["status"]
            now = now_text()
            values = journal.transition_values(row, status, extra, now)
            assignments = ", ".join(f"{name} = :{name}" for name in sorted(values))
            self._conn.execute(
                f"UPDATE tb_deployment SET {assignments} WHERE pk_deployment = :pk",  # noqa: S608
                {**values, "pk": row["pk_deployment"]},
            )
            self._add_event(row["pk_deployment"], row["identifier"], status, message, now)
            if status in FINAL_STATUSES:
                self._audit_final(row, current, status, message or extra.get("error"), now,
                                  actor)

    def _audit_final(self, row: dict[str, Any], previous: str, status: str,
                     message: str | None, now: str, actor: str | None) -> None:
        """The audit row of a deployment that reached a final status (inside _write)."""
        dep = self._one(rows.FINAL_AUDIT_SELECT.format(trigger='"trigger"', mark="?"),
                        (row["pk_deployment"],))
        assert dep is not None
        self._insert_audit(rows.final_audit_values(row, dep, previous, status, message, now,
                                                   actor, str(uuid.uuid4())))

    def _insert_audit(self, values: dict[str, Any]) -> None:
        self._insert("tb_audit_event", values)

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
        """Move a deployment to ``status`` (checked against TRANSITIONS) and log an event.

        Entering ``in_progress`` sets ``started_at``; entering a final status sets
        ``finished_at`` (again when a failed deployment is then rolled back). ``error``,
        ``output`` and ``exit_code`` are stored when given and kept otherwise.
        """
        extra = journal.transition_extra(status, error, output, exit_code)
        # read here, in the caller's task: the worker thread does not see its context
        await self._run(self._transition, deployment_id, status, message, extra,
                        current_actor())

    def _start_step(self, deployment_id: str, action: str, instance: str,
                    detail: str | None) -> str:
        step_id = str(uuid.uuid4())
        with self._write():
            row = self._require_deployment(deployment_id)
            seq = self._next_seq("tb_deployment_step", "fk_deployment", row["pk_deployment"])
            self._insert("tb_deployment_step", journal.step_row(
                step_id, row, seq, action, instance, detail, now_text()))
        return step_id

    async def start_step(self, deployment_id: str, action: str, instance: str,
                         detail: str | None = None) -> str:
        """Journal a provider action *before* it runs; returns the step id."""
        return await self._run(self._start_step, deployment_id, action, instance, detail)

    def _finish_step(self, step_id: str, status: str, detail: str | None) -> None:
        with self._write():
            row = journal.found_step(self._one(
                "SELECT pk_deployment_step, identifier, status FROM tb_deployment_step "
                "WHERE id = ?", (step_id,)
            ), step_id)
            journal.step_to_finish(row, status)
            self._conn.execute(
                "UPDATE tb_deployment_step SET status = ?, detail = COALESCE(?, detail), "
                "finished_at = ? WHERE pk_deployment_step = ?",
                (status, detail, now_text(), row["pk_deployment_step"]),
            )

    async def finish_step(self, step_id: str, status: str, detail: str | None = None) -> None:
        """Close a started step as ``succeeded``, ``failed`` or ``interrupted`` (once);
        ``detail`` replaces the start detail when given."""
        journal.check_finish_status(status)
        await self._run(self._finish_step, step_id, status, detail)

    async def get_deployment(self, deployment_id: str) -> DeploymentRecord | None:
        """By id (UUID) or identifier (``env/Kind/name#n``)."""
        return await self._run(self._get_deployment, deployment_id)

    async def list_deployments(self, key: ResourceKey | None = None,
                               limit: int = 50) -> list[DeploymentRecord]:
        """Newest first, with events and steps; ``limit <= 0`` means all."""
        limit = limit if limit > 0 else -1
        if key is None:
            return await self._run(self._deployments, "1 = 1", (),
                                   "created_at DESC, seq DESC", limit)
        return await self._run(self._deployments, self._RESOURCE_WHERE, self._key_params(key),
                               "seq DESC", limit)

    async def unfinished_deployments(self) -> list[DeploymentRecord]:
        """Deployments left ``pending`` / ``in_progress`` (a crash): oldest first."""
        # Literal statuses (not parameters) so SQLite can use the partial index on them.
        return await self._run(self._deployments, "status IN ('pending', 'in_progress')", (),
                               "created_at, seq")

    async def last_good(self, key: ResourceKey) -> DeploymentRecord | None:
        """The newest ``succeeded`` deployment of a resource."""
        found = await self._run(self._deployments, f"{self._RESOURCE_WHERE} AND status = ?",
                                (*self._key_params(key), SUCCEEDED), "seq DESC", 1)
        return found[0] if found else None

    # -- audit (record_audit, list_audit, import_audit: rows.AuditLog) ------------------------
    def _audit_time(self, value: datetime) -> str:
        return value.astimezone(UTC).isoformat(timespec="microseconds")

    def _append_audit_sync(self, values: dict[str, Any], read_back: bool
                           ) -> dict[str, Any] | None:
        with self._write():
            self._insert_audit(values)
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
            # no DELETE … LIMIT in a stock SQLite build: the oldest rows by the index on "at"
            return self._conn.execute(
                "DELETE FROM tb_audit_event WHERE pk_audit_event IN (SELECT pk_audit_event "
                "FROM tb_audit_event WHERE at < ? ORDER BY at LIMIT ?)",
                (cutoff, batch_size)).rowcount

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
