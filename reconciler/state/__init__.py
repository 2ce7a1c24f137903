"""state stage of the reconcile pipeline: the store (resources, deployment journal, locks).

``open_store(url)`` picks the backend from the URL scheme:

- ``sqlite:///relative/path.db`` (three slashes, relative to the working directory),
  ``sqlite:////abs/path.db`` (four slashes), ``sqlite:///:memory:``;
- ``postgresql://user@host:port/db`` (psycopg 3, async pool) and ``mysql://user@host:port/db``
  (MySQL 8 / MariaDB, PyMySQL in threads); a password absent from the URL comes from
  ``$RECONCILER_DB_PASSWORD`` or ``$RECONCILER_DB_PASSWORD_FILE`` (docs/databases.md).

The returned store is not migrated: call ``await store.migrate()`` (what ``reconciler db
migrate`` does) before use.
"""

from __future__ import annotations

import os
from pathlib import Path

from reconciler.errors import StoreError
from reconciler.observe.redact import redact
from reconciler.state.store import Store

SQLITE_PREFIX = "sqlite:///"
DB_FILE_NAME = "fraisier.db"


def default_state_dir() -> Path:
    """Where the daemon keeps its database and caches, first match wins:

    1. ``$RECONCILER_STATE_DIR``;
    2. ``$STATE_DIRECTORY`` (set by systemd for ``StateDirectory=``; the first entry if several);
    3. ``/var/lib/fraisier`` when running as root;
    4. ``$XDG_STATE_HOME/fraisier``, else ``~/.local/state/fraisier``.
    """
    explicit = os.environ.get("RECONCILER_STATE_DIR")
    if explicit:
        return Path(explicit)
    systemd = os.environ.get("STATE_DIRECTORY")
    if systemd:
        return Path(systemd.split(":")[0])
    geteuid = getattr(os, "geteuid", None)
    if geteuid is not None and geteuid() == 0:
        return Path("/var/lib/fraisier")
    xdg = os.environ.get("XDG_STATE_HOME")
    base = Path(xdg) if xdg and Path(xdg).is_absolute() else Path.home() / ".local" / "state"
    return base / "fraisier"


def default_db_url(state_dir: Path) -> str:
    """The SQLite URL of the database inside ``state_dir`` (absolute or relative)."""
    return SQLITE_PREFIX + str(state_dir / DB_FILE_NAME)


def resolve_db_url(explicit: str | None = None) -> str:
    """``--db`` if given, else ``$RECONCILER_DB``, else SQLite in ``default_state_dir()``."""
    return explicit or os.environ.get("RECONCILER_DB") or default_db_url(default_state_dir())


def sqlite_path(url: str) -> str:
    """The file path of a ``sqlite:///`` URL (``:memory:`` passes through)."""
    if not url.startswith(SQLITE_PREFIX):
        raise StoreError(
            f"{redact(url)}: a SQLite URL is sqlite:///relative/path or sqlite:////abs/path"
        )
    path = url[len(SQLITE_PREFIX):]
    if not path:
        raise StoreError(f"{redact(url)}: no database path after sqlite:///")
    return path


def _retry_seconds() -> float:
    """``$RECONCILER_DB_RETRY_SECONDS``: how long a server store retries through an outage
    (default 60 s; a CLI command may want less)."""
    from reconciler.state.server_store import DEFAULT_RETRY_SECONDS

    value = os.environ.get("RECONCILER_DB_RETRY_SECONDS")
    if not value:
        return DEFAULT_RETRY_SECONDS
    try:
        return max(0.0, float(value))
    except ValueError:
        raise StoreError(f"RECONCILER_DB_RETRY_SECONDS={value!r} is not a number") from None


def open_store(url: str, *, sql_dir: Path | None = None) -> Store:
    """A store for ``url``; SQLite creates the file's parent directories. Server stores connect
    lazily, at their first operation."""
    scheme = url.split(":", 1)[0].lower() if ":" in url else ""
    if scheme == "sqlite":
        from reconciler.state.sqlite import SQLiteStore

        path = sqlite_path(url)
        if path != ":memory:":
            from reconciler.state.private import private_dir

            try:
                # missing folders owner-only; an existing one (the working directory) untouched
                private_dir(Path(path).parent, tighten=False)
            except OSError as exc:
                raise StoreError(f"{redact(url)}: cannot create {Path(path).parent}: "
                                 f"{exc.strerror}") from exc
        return SQLiteStore(path, url=url, sql_dir=sql_dir)
    if scheme in ("postgresql", "postgres") or scheme.startswith(("postgresql+", "postgres+")):
        from reconciler.state.postgresql import PostgresStore

        return PostgresStore(url, sql_dir=sql_dir, retry_seconds=_retry_seconds())
    if scheme in ("mysql", "mariadb") or scheme.startswith(("mysql+", "mariadb+")):
        from reconciler.state.mysql import MySQLStore

        return MySQLStore(url, sql_dir=sql_dir, retry_seconds=_retry_seconds())
    raise StoreError(
        f"unsupported database URL {redact(url)!r}: use sqlite:///path, postgresql://… "
        "or mysql://…"
    )


__all__ = [
    "Store",
    "default_db_url",
    "default_state_dir",
    "open_store",
    "resolve_db_url",
    "sqlite_path",
]
