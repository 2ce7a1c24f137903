"""The three real backends of the contract suite, and throw-away databases on them.

PostgreSQL (127.0.0.1:5432, user postgres, trust) and MariaDB (127.0.0.1:3306, root, no
password) are the machine's services (DESIGN "Test infrastructure contract"). Each test gets a
database of its own, created with a random name and dropped afterwards.
"""

from __future__ import annotations

import functools
import sqlite3
import uuid
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

BACKENDS = ("sqlite", "postgresql", "mysql")
SERVER_BACKENDS = ("postgresql", "mysql")
PG_ADMIN_URL = "postgresql://postgres@127.0.0.1:5432/postgres"
PG_URL = "postgresql://postgres@127.0.0.1:5432/{name}"
MYSQL_URL = "mysql://root@127.0.0.1:3306/{name}"
MYSQL_ADMIN = {"host": "127.0.0.1", "port": 3306, "user": "root"}


@functools.cache
def available(backend: str) -> tuple[bool, str]:
    """(reachable, reason for skipping when not)."""
    if backend == "sqlite":
        return True, ""
    try:
        if backend == "postgresql":
            import psycopg

            psycopg.connect(PG_ADMIN_URL, connect_timeout=3).close()
        else:
            import pymysql

            pymysql.connect(**MYSQL_ADMIN, connect_timeout=3).close()
    except Exception as exc:
        where = "127.0.0.1:5432" if backend == "postgresql" else "127.0.0.1:3306"
        return False, f"{backend} not reachable at {where}: {type(exc).__name__}: {exc}"
    return True, ""


def _pg_admin(sql: str) -> None:
    import psycopg

    with psycopg.connect(PG_ADMIN_URL, autocommit=True, connect_timeout=10) as conn:
        conn.execute(sql)


def _mysql_admin(sql: str) -> None:
    import pymysql

    conn = pymysql.connect(**MYSQL_ADMIN, connect_timeout=10)
    try:
        with conn.cursor() as cursor:
            cursor.execute(sql)
    finally:
        conn.close()


@contextmanager
def throwaway_url(backend: str, tmp_path: Path) -> Iterator[str]:
    """A URL of a new, empty database on ``backend``; the database is dropped afterwards."""
    if backend == "sqlite":
        yield f"sqlite:///{tmp_path / f'fraisier-{uuid.uuid4().hex[:8]}.db'}"
        return
    name = f"fraisier_test_{uuid.uuid4().hex[:12]}"
    if backend == "postgresql":
        _pg_admin(f"CREATE DATABASE {name}")
        try:
            yield PG_URL.format(name=name)
        finally:
            _pg_admin(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
    else:
        _mysql_admin(f"CREATE DATABASE {name} CHARACTER SET utf8mb4 COLLATE utf8mb4_bin")
        try:
            yield MYSQL_URL.format(name=name)
        finally:
            _mysql_admin(f"DROP DATABASE IF EXISTS {name}")


def dialect_of(url: str) -> str:
    scheme = url.split(":", 1)[0]
    return "postgresql" if scheme.startswith("postgres") else (
        "mysql" if scheme.startswith(("mysql", "mariadb")) else "sqlite")


def raw_query(url: str, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
    """Run one statement outside the store, on a connection of its own (``%s`` markers);
    returns the rows (empty for statements without a result)."""
    dialect = dialect_of(url)
    if dialect == "sqlite":
        conn = sqlite3.connect(url[len("sqlite:///"):], isolation_level=None)
        try:
            return [tuple(r) for r in conn.execute(sql.replace("%s", "?"), tuple(params))]
        finally:
            conn.close()
    if dialect == "postgresql":
        import psycopg

        with psycopg.connect(url, autocommit=True) as pg:
            cursor = pg.execute(sql, tuple(params) or None)
            return [tuple(r) for r in cursor.fetchall()] if cursor.description else []
    import pymysql

    database = url.rsplit("/", 1)[1]
    my = pymysql.connect(**MYSQL_ADMIN, database=database, autocommit=True, charset="utf8mb4")
    try:
        with my.cursor() as cursor:
            cursor.execute("SET SESSION time_zone = '+00:00'")
            cursor.execute(sql, tuple(params) or None)
            return [tuple(r) for r in cursor.fetchall()] if cursor.description else []
    finally:
        my.close()


def columns_of(url: str, table: str) -> list[str]:
    """Column names of a table or view, in order."""
    dialect = dialect_of(url)
    if dialect == "sqlite":
        return [str(r[1]) for r in raw_query(url, f"PRAGMA table_info({table})")]
    schema = "'public'" if dialect == "postgresql" else "DATABASE()"
    return [str(r[0]) for r in raw_query(
        url, "SELECT column_name FROM information_schema.columns "
             f"WHERE table_schema = {schema} AND table_name = %s ORDER BY ordinal_position",
        (table,))]
