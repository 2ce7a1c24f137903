"""Schema migrations: plain SQL files ``sql/<dialect>/NNN_name.sql`` applied in version order.

The runner is dialect-neutral: a backend hands it a ``MigrationConnection`` (how to run a
statement, open/close a transaction and split a script) and the folder of its dialect. It records
each applied file in ``tb_schema_migration`` (version, name, sha256 checksum, applied_at), applies
each file in its own transaction together with its tracking row, applies nothing on a second run,
and refuses to go on when an applied file was edited afterwards.

Adapters: ``SQLiteMigrationConnection``, ``PostgresMigrationConnection`` (transactional DDL,
advisory lock) and ``MySQLMigrationConnection`` (DDL commits implicitly: a failed file's created
objects are dropped again and the error says what was undone; see sql/mysql/README.md).
"""

from __future__ import annotations

import hashlib
import re
import sqlite3
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol

import reconciler
from reconciler.errors import MigrationError
from reconciler.state.store import MigrationInfo

TRACKING_TABLE = "tb_schema_migration"

# Portable across SQLite, PostgreSQL and MySQL/MariaDB; applied_at as ISO text like every other
# timestamp of the schema.
TRACKING_TABLE_DDL = f"""CREATE TABLE IF NOT EXISTS {TRACKING_TABLE} (
    version    INTEGER      NOT NULL PRIMARY KEY,
    name       VARCHAR(255) NOT NULL,
    checksum   CHAR(64)     NOT NULL,
    applied_at VARCHAR(40)  NOT NULL
)"""

FILE_NAME = re.compile(r"^(?P<version>\d{3,})_(?P<name>[A-Za-z0-9_]+)\.sql$")
# A line of its own in a migration file: apply it with foreign keys suspended (see begin()).
FOREIGN_KEYS_OFF = re.compile(
    r"^--\s*fraisier:\s*foreign_keys\s*=\s*off\s*$", re.MULTILINE | re.IGNORECASE
)


def default_sql_dir(dialect: str) -> Path:
    """``<repo or install root>/sql/<dialect>``: next to the ``reconciler`` package; in a wheel
    install, ``<prefix>/share/fraisier/sql/<dialect>`` (pyproject's data-files)."""
    checkout = Path(reconciler.__file__).resolve().parent.parent / "sql" / dialect
    installed = Path(sys.prefix) / "share" / "fraisier" / "sql" / dialect
    return installed if not checkout.is_dir() and installed.is_dir() else checkout


def utc_now_text() -> str:
    return datetime.now(UTC).isoformat(timespec="microseconds")


class MigrationConnection(Protocol):
    """What the runner needs from a backend's connection (synchronous, one connection)."""

    dialect: str
    placeholder: str  # parameter marker: "?" (sqlite3) or "%s" (psycopg, MySQL drivers)
    transactional_ddl: bool  # False for MySQL: a failed file may leave part of it behind

    def execute(self, sql: str, params: Sequence[Any] = ()) -> None: ...

    def query(self, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]: ...

    def begin(self, *, foreign_keys: bool = True) -> None:
        """Open a write transaction that excludes concurrent migrators (lock if needed).

        ``foreign_keys=False`` (a file with the ``-- fraisier: foreign_keys=off`` directive):
        suspend foreign-key enforcement and actions for this transaction, e.g. to rebuild a
        parent table without its ON DELETE CASCADE emptying the children.
        """

    def commit(self) -> None:
        """Commit; when begun with ``foreign_keys=False``, first refuse (raise MigrationError)
        if any foreign key is left dangling, and restore enforcement afterwards."""

    def rollback(self) -> None:
        """Roll back if a transaction is open; restore foreign-key enforcement."""

    def split(self, script: str) -> list[str]:
        """The statements of a script, in order, without empty or comment-only ones."""

    def partial_failure_note(self) -> str:
        """After ``rollback()`` of a failed file: what of it is left behind and what was undone
        ("" when DDL is transactional and nothing can be left)."""


@dataclass(frozen=True)
class MigrationFile:
    version: int
    name: str  # what follows the version, e.g. "initial" (recorded in the tracking table)
    path: Path
    sql: str
    checksum: str

    @property
    def filename(self) -> str:  # e.g. "001_initial.sql": what messages name
        return self.path.name

    @property
    def foreign_keys(self) -> bool:
        """False when the file asks for foreign keys to be suspended while it runs."""
        return FOREIGN_KEYS_OFF.search(self.sql) is None


def checksum_of(text: str) -> str:
    # Line endings are normalised so a CRLF checkout does not read as an edited file.
    return hashlib.sha256(text.replace("\r\n", "\n").encode("utf-8")).hexdigest()


def discover(directory: Path) -> list[MigrationFile]:
    """Every migration file of a folder, by version; refuses misnamed or duplicate versions."""
    if not directory.is_dir():
        raise MigrationError(f"migration folder {directory} does not exist")
    files: list[MigrationFile] = []
    seen: dict[int, str] = {}
    for path in sorted(directory.glob("*.sql")):
        match = FILE_NAME.match(path.name)
        if match is None:
            # A file the runner silently skipped would be a migration that never runs.
            raise MigrationError(f"{path.name}: migration files must be named NNN_name.sql")
        version = int(match["version"])
        if version in seen:
            raise MigrationError(f"{path.name}: version {version} is also used by {seen[version]}")
        seen[version] = path.name
        text = path.read_text(encoding="utf-8")
        files.append(MigrationFile(version, match["name"], path, text, checksum_of(text)))
    files.sort(key=lambda f: f.version)
    return files


class MigrationRunner:
    """Applies ``directory``'s files through ``conn``; synchronous, run it off the event loop."""

    def __init__(self, conn: MigrationConnection, directory: Path | None = None) -> None:
        self.conn = conn
        self.directory = directory if directory is not None else default_sql_dir(conn.dialect)

    # -- reading -----------------------------------------------------------------------------
    def ensure_tracking_table(self) -> None:
        self.conn.begin()
        try:
            self.conn.execute(TRACKING_TABLE_DDL)
        except BaseException:
            self.conn.rollback()
            raise
        self.conn.commit()

    def applied(self) -> dict[int, MigrationInfo]:
        rows = self.conn.query(
            f"SELECT version, name, checksum, applied_at FROM {TRACKING_TABLE} ORDER BY version"  # noqa: S608
        )
        return {
            int(version): MigrationInfo(int(version), name, checksum, _parse_time(applied_at))
            for version, name, checksum, applied_at in rows
        }

    def _verify(self, files: list[MigrationFile], applied: dict[int, MigrationInfo]) -> None:
        for file in files:
            info = applied.get(file.version)
            if info is None:
                continue
            if info.checksum != file.checksum:
                raise MigrationError(
                    f"{file.filename}: changed after it was applied "
                    f"(recorded sha256 {info.checksum[:12]}…, file now {file.checksum[:12]}…); "
                    "add a new migration instead of editing an applied one"
                )
            if info.name != file.name:
                raise MigrationError(
                    f"{file.filename}: version {file.version} was applied as {info.name!r}"
                )
        newest_applied = max(applied, default=0)
        for file in files:
            if file.version not in applied and file.version < newest_applied:
                raise MigrationError(
                    f"{file.filename}: pending, but the newer version {newest_applied} is already "
                    "applied; renumber it after the applied ones"
                )

    def status(self) -> list[MigrationInfo]:
        """Every migration, applied ones with their time, pending ones with ``applied_at=None``.

        Applied versions without a file (a newer release's) are listed too. Raises
        ``MigrationError`` when an applied file was edited.
        """
        files = discover(self.directory)
        self.ensure_tracking_table()
        applied = self.applied()
        self._verify(files, applied)
        infos = {
            f.version: applied.get(f.version) or MigrationInfo(f.version, f.name, f.checksum, None)
            for f in files
        }
        for version, info in applied.items():
            infos.setdefault(version, info)
        return [infos[v] for v in sorted(infos)]

    def pending(self) -> list[MigrationInfo]:
        return [info for info in self.status() if info.applied_at is None]

    # -- applying ----------------------------------------------------------------------------
    def migrate(self) -> list[MigrationInfo]:
        """Apply every pending file, each in its own transaction; return those applied now."""
        files = discover(self.directory)
        self.ensure_tracking_table()
        self._verify(files, self.applied())
        done: list[MigrationInfo] = []
        for file in files:
            info = self._apply(file)
            if info is not None:
                done.append(info)
        return done

    def _apply(self, file: MigrationFile) -> MigrationInfo | None:
        statements = self.conn.split(file.sql)
        self.conn.begin(foreign_keys=file.foreign_keys)
        try:
            # Checked again inside the transaction: another process may have migrated meanwhile.
            applied = self.applied()
            if file.version in applied:
                self.conn.rollback()
                self._verify([file], applied)
                return None
            for index, statement in enumerate(statements, start=1):
                try:
                    self.conn.execute(statement)
                except Exception as exc:
                    note = ""
                    if not self.conn.transactional_ddl:
                        # Roll back first: the adapter undoes what it can and says what it did.
                        self.conn.rollback()
                        note = (
                            f" ({self.conn.dialect} commits DDL implicitly; "
                            f"{self.conn.partial_failure_note()})"
                        )
                    raise MigrationError(
                        f"{file.filename}: statement {index} of {len(statements)} failed: "
                        f"{exc}{note}"
                    ) from exc
            applied_at = utc_now_text()
            p = self.conn.placeholder
            self.conn.execute(
                f"INSERT INTO {TRACKING_TABLE} (version, name, checksum, applied_at) "  # noqa: S608
                f"VALUES ({p}, {p}, {p}, {p})",
                (file.version, file.name, file.checksum, applied_at),
            )
            try:
                self.conn.commit()
            except MigrationError as exc:
                raise MigrationError(f"{file.filename}: {exc.message}") from exc
        except BaseException:
            self.conn.rollback()
            raise
        return MigrationInfo(file.version, file.name, file.checksum, _parse_time(applied_at))


def _parse_time(value: Any) -> datetime:
    if isinstance(value, datetime):
        return value if value.tzinfo else value.replace(tzinfo=UTC)
    return datetime.fromisoformat(str(value))


# -- SQLite -------------------------------------------------------------------------------------

_COMMENTS = re.compile(r"--[^\n]*|/\*.*?\*/", re.DOTALL)


def split_sqlite_script(script: str) -> list[str]:
    """Split on the ``;`` that end complete statements, as SQLite's own parser judges them.

    ``sqlite3.complete_statement`` knows string literals, quoted identifiers, comments and
    ``CREATE TRIGGER ... BEGIN ...; END;`` bodies, so no hand-written tokenizer is needed.
    """
    statements: list[str] = []
    start = 0
    position = script.find(";")
    while position != -1:
        candidate = script[start : position + 1]
        if sqlite3.complete_statement(candidate):
            if _COMMENTS.sub("", candidate).strip(" \t\r\n;"):
                statements.append(candidate.strip())
            start = position + 1
        position = script.find(";", position + 1)
    rest = script[start:]
    if _COMMENTS.sub("", rest).strip():
        if not sqlite3.complete_statement(rest + "\n;"):
            raise MigrationError(f"unterminated SQL statement at the end: {rest.strip()[:80]!r}")
        statements.append(rest.strip())
    return statements


class SQLiteMigrationConnection:
    """Adapter for a ``sqlite3.Connection`` opened with ``isolation_level=None``.

    SQLite DDL is transactional, so a failing file leaves nothing behind. ``executescript`` is
    avoided on purpose: it COMMITs before it runs, which would break the one-transaction rule.
    ``BEGIN IMMEDIATE`` takes the write lock up front so two processes migrating the same file
    serialise (waiting up to ``busy_timeout``) instead of failing on a lock upgrade.
    """

    dialect = "sqlite"
    placeholder = "?"
    transactional_ddl = True

    def __init__(self, conn: sqlite3.Connection) -> None:
        if conn.isolation_level is not None:
            raise MigrationError("the SQLite connection must use isolation_level=None")
        self.raw = conn
        self._restore_foreign_keys: bool | None = None

    def execute(self, sql: str, params: Sequence[Any] = ()) -> None:
        self.raw.execute(sql, tuple(params))

    def query(self, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        return [tuple(row) for row in self.raw.execute(sql, tuple(params)).fetchall()]

    def begin(self, *, foreign_keys: bool = True) -> None:
        if not foreign_keys:
            # The pragma is a no-op inside a transaction, so it goes first (SQLite's documented
            # procedure for table rebuilds); commit() checks what the file left behind.
            (enabled,) = self.raw.execute("PRAGMA foreign_keys").fetchone()
            self._restore_foreign_keys = bool(enabled)
            self.raw.execute("PRAGMA foreign_keys = OFF")
        self.raw.execute("BEGIN IMMEDIATE")

    def commit(self) -> None:
        if self._restore_foreign_keys is not None:
            dangling = self.raw.execute("PRAGMA foreign_key_check").fetchall()
            if dangling:
                table, rowid, parent, _ = dangling[0]
                raise MigrationError(
                    f"leaves {len(dangling)} row(s) with a dangling foreign key "
                    f"(first: {table} rowid {rowid} -> {parent})"
                )
        self.raw.execute("COMMIT")
        self._restore()

    def rollback(self) -> None:
        if self.raw.in_transaction:
            self.raw.execute("ROLLBACK")
        self._restore()

    def _restore(self) -> None:
        if self._restore_foreign_keys is not None:
            self.raw.execute(f"PRAGMA foreign_keys = {int(self._restore_foreign_keys)}")
            self._restore_foreign_keys = None

    def split(self, script: str) -> list[str]:
        return split_sqlite_script(script)

    def partial_failure_note(self) -> str:
        return ""  # transactional DDL: the rollback removed everything


# -- PostgreSQL and MySQL/MariaDB ----------------------------------------------------------------

_DOLLAR_TAG = re.compile(r"\$(?:[A-Za-z_][A-Za-z0-9_]*)?\$")
_DELIMITER_LINE = re.compile(r"[ \t]*DELIMITER[ \t]+(\S+)[ \t]*(?:\r?\n|$)", re.IGNORECASE)


def split_sql_script(script: str, dialect: str) -> list[str]:
    """Split a PostgreSQL or MySQL script into statements (without their terminator).

    Knows '…' strings, "…" identifiers, -- and /* */ comments; PostgreSQL's $tag$ … $tag$
    bodies; MySQL's `…` identifiers, # comments, backslash escapes and the mysql client's
    ``DELIMITER`` lines (a trigger body holds ``;``, so the file switches the terminator around
    it, exactly as one would feed it to the ``mysql`` client).
    """
    mysql = dialect == "mysql"
    statements: list[str] = []
    delimiter = ";"
    start = 0
    i = 0
    n = len(script)

    def flush(end: int) -> None:
        text = script[start:end]
        if _COMMENTS.sub("", text).strip():
            statements.append(text.strip())

    while i < n:
        if mysql and not _COMMENTS.sub("", script[start:i]).strip():
            line = _DELIMITER_LINE.match(script, i)
            if line is not None and (i == 0 or script[i - 1] == "\n"):
                delimiter = line.group(1)
                i = start = line.end()
                continue
        char = script[i]
        if script.startswith("--", i) or (mysql and char == "#"):
            end = script.find("\n", i)
            i = n if end == -1 else end + 1
        elif script.startswith("/*", i):
            end = script.find("*/", i + 2)
            if end == -1:
                raise MigrationError("unterminated /* comment")
            i = end + 2
        elif char in ("'", '"') or (mysql and char == "`"):
            i = _end_of_quoted(script, i, backslash=mysql and char != "`")
        elif char == "$" and not mysql and (tag := _DOLLAR_TAG.match(script, i)) is not None:
            end = script.find(tag.group(0), tag.end())
            if end == -1:
                raise MigrationError(f"unterminated {tag.group(0)} quoted body")
            i = end + len(tag.group(0))
        elif script.startswith(delimiter, i):
            flush(i)
            i = start = i + len(delimiter)
        else:
            i += 1
    rest = script[start:]
    if _COMMENTS.sub("", rest).strip():
        statements.append(rest.strip())
    return statements


def _end_of_quoted(script: str, i: int, *, backslash: bool) -> int:
    quote = script[i]
    j = i + 1
    while j < len(script):
        char = script[j]
        if backslash and char == "\\":
            j += 2
            continue
        if char == quote:
            if script.startswith(quote * 2, j):  # doubled quote: an escaped one
                j += 2
                continue
            return j + 1
        j += 1
    raise MigrationError(f"unterminated {quote} quote: {script[i:i + 60]!r}")


# Any fixed 64-bit key: pg_advisory_xact_lock serialises migrators of the same database.
PG_MIGRATION_LOCK_KEY = 0x46524149534945  # "FRAISIE"
MYSQL_MIGRATION_LOCK = "fraisier.migrate"
MYSQL_MIGRATION_LOCK_TIMEOUT = 120  # seconds another migrator may hold the lock


class PostgresMigrationConnection:
    """Adapter for a synchronous psycopg 3 connection opened with ``autocommit=True``.

    PostgreSQL DDL is transactional: a failing file leaves nothing behind. ``begin()`` takes a
    transaction-scoped advisory lock so two processes migrating at once serialise.
    ``foreign_keys=False`` needs no action here: PostgreSQL alters tables in place (ALTER TABLE
    … ALTER COLUMN / ADD CONSTRAINT), it never rebuilds a parent table, and it enforces every
    foreign key at all times, so no dangling row can be committed.
    """

    dialect = "postgresql"
    placeholder = "%s"
    transactional_ddl = True

    def __init__(self, conn: Any) -> None:
        if not conn.autocommit:
            raise MigrationError("the PostgreSQL migration connection must use autocommit=True")
        self.raw = conn

    def execute(self, sql: str, params: Sequence[Any] = ()) -> None:
        self.raw.execute(sql, tuple(params) if params else None)

    def query(self, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        cursor = self.raw.execute(sql, tuple(params) if params else None)
        return [tuple(row) for row in cursor.fetchall()]

    def begin(self, *, foreign_keys: bool = True) -> None:
        self.raw.execute("BEGIN")
        self.raw.execute("SELECT pg_advisory_xact_lock(%s)", (PG_MIGRATION_LOCK_KEY,))

    def commit(self) -> None:
        self.raw.execute("COMMIT")

    def rollback(self) -> None:
        import psycopg

        if self.raw.closed:
            return
        if self.raw.info.transaction_status != psycopg.pq.TransactionStatus.IDLE:
            self.raw.execute("ROLLBACK")

    def split(self, script: str) -> list[str]:
        return split_sql_script(script, "postgresql")

    def partial_failure_note(self) -> str:
        return ""


class MySQLMigrationConnection:
    """Adapter for a PyMySQL connection in autocommit mode (MySQL 8 / MariaDB).

    MySQL commits every DDL statement implicitly, so a file is not atomic. What this adapter
    does about it, honestly:

    - ``GET_LOCK`` (a session lock, which survives those implicit commits) serialises migrators;
    - ``begin()`` lists the schema's tables, views and triggers; when a statement fails,
      ``rollback()`` drops every table, view and trigger the file had created so far, so a
      file made of CREATE statements is undone entirely and can simply be run again;
    - changes to objects that existed before (ALTER, DROP, data changes made by DDL) cannot be
      undone: ``partial_failure_note()`` names the statements that ran so an operator can repair
      by hand, and the file stays unrecorded (so it is retried once repaired). This is why
      sql/mysql files keep each ALTER in a file of its own (sql/mysql/README.md).
    """

    dialect = "mysql"
    placeholder = "%s"
    transactional_ddl = False

    def __init__(self, conn: Any) -> None:
        self.raw = conn
        self._before: set[tuple[str, str]] | None = None
        self._fk_checks_off = False
        self._note = ""
        self._locked = False

    def execute(self, sql: str, params: Sequence[Any] = ()) -> None:
        with self.raw.cursor() as cursor:
            cursor.execute(sql, tuple(params) if params else None)

    def query(self, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        with self.raw.cursor() as cursor:
            cursor.execute(sql, tuple(params) if params else None)
            return [tuple(row) for row in cursor.fetchall()]

    def _objects(self) -> set[tuple[str, str]]:
        rows = self.query(
            "SELECT table_type, table_name FROM information_schema.tables "
            "WHERE table_schema = DATABASE() "
            "UNION ALL SELECT 'TRIGGER', trigger_name FROM information_schema.triggers "
            "WHERE trigger_schema = DATABASE()"
        )
        return {(str(kind), str(name)) for kind, name in rows}

    def begin(self, *, foreign_keys: bool = True) -> None:
        if not self._locked:
            (got,) = self.query("SELECT GET_LOCK(%s, %s)",
                                (MYSQL_MIGRATION_LOCK, MYSQL_MIGRATION_LOCK_TIMEOUT))[0]
            if got != 1:
                raise MigrationError(
                    f"another process holds the migration lock {MYSQL_MIGRATION_LOCK!r} "
                    f"(waited {MYSQL_MIGRATION_LOCK_TIMEOUT} s)"
                )
            self._locked = True
        self._before = self._objects()
        self._note = ""
        if not foreign_keys:
            self.execute("SET SESSION foreign_key_checks = 0")
            self._fk_checks_off = True
        self.execute("START TRANSACTION")

    def commit(self) -> None:
        try:
            if self._fk_checks_off:
                self._check_foreign_keys()
            self.execute("COMMIT")
        finally:
            self._end()

    def _check_foreign_keys(self) -> None:
        """Refuse to commit rows whose foreign key points nowhere (checks were off)."""
        for table, column, parent, parent_column in self.query(
            "SELECT table_name, column_name, referenced_table_name, referenced_column_name "
            "FROM information_schema.key_column_usage "
            "WHERE table_schema = DATABASE() AND referenced_table_name IS NOT NULL"
        ):
            (count,) = self.query(
                f"SELECT COUNT(*) FROM `{table}` AS c LEFT JOIN `{parent}` AS p "  # noqa: S608
                f"ON p.`{parent_column}` = c.`{column}` "
                f"WHERE c.`{column}` IS NOT NULL AND p.`{parent_column}` IS NULL"
            )[0]
            if count:
                raise MigrationError(
                    f"leaves {count} row(s) of {table}.{column} with a dangling foreign key "
                    f"to {parent}"
                )

    def rollback(self) -> None:
        try:
            if self.raw.open:
                self.execute("ROLLBACK")
                self._undo_created()
        finally:
            self._end()

    def _undo_created(self) -> None:
        if self._before is None:
            return
        created = self._objects() - self._before
        self._before = None
        if not created:
            self._note = "nothing of this file was left behind"
            return
        order = {"VIEW": 0, "TRIGGER": 1, "BASE TABLE": 2}
        dropped: list[str] = []
        self.execute("SET SESSION foreign_key_checks = 0")
        try:
            for kind, name in sorted(created, key=lambda o: (order.get(o[0], 3), o[1])):
                statement = {"VIEW": "DROP VIEW", "TRIGGER": "DROP TRIGGER"}.get(
                    kind, "DROP TABLE")
                self.execute(f"{statement} `{name}`")
                dropped.append(f"{kind.lower().replace('base ', '')} {name}")
        finally:
            self.execute("SET SESSION foreign_key_checks = 1")
        self._note = (
            f"undone by dropping what the file had created: {', '.join(dropped)}; changes to "
            "objects that existed before (ALTER/DROP) cannot be undone: check them before "
            "running `reconciler db migrate` again"
        )

    def _end(self) -> None:
        self._before = None
        if self._fk_checks_off and self.raw.open:
            self.execute("SET SESSION foreign_key_checks = 1")
        self._fk_checks_off = False
        if self._locked and self.raw.open:
            self.query("SELECT RELEASE_LOCK(%s)", (MYSQL_MIGRATION_LOCK,))
            self._locked = False

    def partial_failure_note(self) -> str:
        return self._note or "statements before the failing one may have been applied"

    def split(self, script: str) -> list[str]:
        return split_sql_script(script, "mysql")
