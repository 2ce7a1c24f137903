"""What the parts of the SQLite store (``sqlite``, ``sqlite_leases``, ``sqlite_deliveries``)
share: the text form of times, and the hooks each part runs its statements through
(``SQLiteHooks``: the connection, the worker thread, write transactions), implemented once by
``SQLiteStore``."""

from __future__ import annotations

import sqlite3
from abc import ABC, abstractmethod
from collections.abc import Callable
from contextlib import AbstractContextManager
from datetime import UTC, datetime
from typing import Any, TypeVar

T = TypeVar("T")
Params = tuple[Any, ...] | dict[str, Any]


def now_text() -> str:
    """ISO-8601 UTC with microseconds: sorts lexically, parses back to an aware datetime."""
    return datetime.now(UTC).isoformat(timespec="microseconds")


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
    def _one(self, sql: str, params: Params = ()) -> dict[str, Any] | None: ...

    @abstractmethod
    def _all(self, sql: str, params: Params = ()) -> list[dict[str, Any]]: ...

    @abstractmethod
    def _tuples(self, sql: str, params: Params = ()) -> list[tuple[Any, ...]]:
        """Rows as tuples, in the order of the SELECT's columns (no dict per row)."""


__all__ = ["Params", "SQLiteHooks", "now_text"]
