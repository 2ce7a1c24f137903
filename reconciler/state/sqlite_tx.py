"""What the parts of the SQLite store (``sqlite``, ``sqlite_resources``, ``sqlite_journal``,
``sqlite_leases``, ``sqlite_deliveries``) share: the text form of times and JSON documents, and
the hooks each part runs its statements through (``SQLiteHooks``: the connection, the worker
thread, transactions), implemented once by ``SQLiteStore`` (``_ensure_resource`` by
``SQLiteResources``)."""

from __future__ import annotations

import json
import sqlite3
from abc import ABC, abstractmethod
from collections.abc import Callable
from contextlib import AbstractContextManager
from datetime import UTC, datetime
from typing import Any, TypeVar

from reconciler.spec.model import ResourceKey, canonical_json

T = TypeVar("T")
Params = tuple[Any, ...] | dict[str, Any]

# one resource by its key; the parameters are ``rows.key_params(key)``
RESOURCE_WHERE = "environment = ? AND kind = ? AND name = ?"


def now_text() -> str:
    """ISO-8601 UTC with microseconds: sorts lexically, parses back to an aware datetime."""
    return datetime.now(UTC).isoformat(timespec="microseconds")


def json_text(value: dict[str, Any] | None) -> str | None:
    """A JSON document as stored (canonical text)."""
    return canonical_json(value) if value is not None else None


def json_value(value: str | None) -> dict[str, Any] | None:
    """A stored JSON document, decoded."""
    return json.loads(value) if value is not None else None


class SQLiteHooks(ABC):
    """How a part of the SQLite store reaches the connection. The synchronous methods run in
    the store's worker thread (through ``_run``), which owns ``_conn``."""

    _conn: sqlite3.Connection

    @abstractmethod
    async def _run(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """Call ``fn(*args, **kwargs)`` in the worker thread (driver errors as StoreError)."""

    @abstractmethod
    def _write(self) -> AbstractContextManager[None]:
        """One write transaction holding the write lock from its start."""

    @abstractmethod
    def _read(self) -> AbstractContextManager[None]:
        """A read snapshot (inside ``_write``: that transaction)."""

    @abstractmethod
    def _one(self, sql: str, params: Params = ()) -> dict[str, Any] | None: ...

    @abstractmethod
    def _all(self, sql: str, params: Params = ()) -> list[dict[str, Any]]: ...

    @abstractmethod
    def _tuples(self, sql: str, params: Params = ()) -> list[tuple[Any, ...]]:
        """Rows as tuples, in the order of the SELECT's columns (no dict per row)."""

    @abstractmethod
    def _insert(self, table: str, values: dict[str, Any]) -> int:
        """INSERT one row (column names from the code, values bound); its integer key."""

    @abstractmethod
    def _ensure_resource(self, key: ResourceKey, now: str) -> int:
        """pk of the resource, inserting a bare row first if it is new (inside ``_write``)."""


__all__ = ["RESOURCE_WHERE", "Params", "SQLiteHooks", "json_text", "json_value", "now_text"]
