"""What the parts of the PostgreSQL/MySQL store (``server_store``, ``server_resources``,
``server_journal``, ``server_import``, ``server_leases``, ``server_deliveries``) share: the
transaction interface ``Tx`` and the hooks each part runs its statements through
(``ServerHooks``): ``_run`` implemented once by ``ServerStore``, ``_ensure_resource`` by
``ServerResources``, the value conversions and SQL fragments by each backend."""

from __future__ import annotations

import uuid
from abc import ABC, abstractmethod
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Any, Protocol, TypeVar

from reconciler.spec.model import ResourceKey
from reconciler.state import rows

T = TypeVar("T")
Row = dict[str, Any]

# one resource by its key; the parameters are ``rows.key_params(key)``
RESOURCE_WHERE = "environment = %s AND kind = %s AND name = %s"


class Tx(Protocol):
    """One connection, inside a transaction (or in autocommit mode for ``transaction=False``)."""

    async def one(self, sql: str, params: tuple[Any, ...] = ()) -> Row | None: ...

    async def all(self, sql: str, params: tuple[Any, ...] = ()) -> list[Row]: ...

    async def execute(self, sql: str, params: tuple[Any, ...] = ()) -> int:
        """Run a statement; return its row count."""

    async def insert(self, table: str, values: dict[str, Any], pk: str) -> int:
        """Insert one row; return its generated ``pk``."""


def utc_now() -> datetime:
    return datetime.now(UTC)


def is_uuid(value: str) -> bool:
    try:
        uuid.UUID(value)
    except (ValueError, AttributeError, TypeError):
        return False
    return True


class ServerHooks(ABC):
    """How a part of the server store runs a statement and converts values."""

    # appended to text columns in ORDER BY: code point order, as SQLite's BINARY (whatever
    # collation the database was created with)
    binary_order: str = ""
    param_mark = "%s"  # the drivers' parameter marker (psycopg, PyMySQL)
    trigger_column: str  # the quoted name of the reserved word column of tb_deployment

    @abstractmethod
    async def _run(self, operation: str, fn: Callable[[Tx, bool], Awaitable[T]], *,
                   transaction: bool = True, read_only: bool = False) -> T:
        """Run ``fn(tx, retrying)`` in one transaction (``transaction=False``: autocommit),
        retried as a whole through connection loss; ``retrying`` is True on a retry."""

    @abstractmethod
    def _db_time(self, value: datetime) -> Any:
        """A datetime as the driver takes it."""

    @abstractmethod
    def _db_json(self, value: dict[str, Any] | None) -> Any:
        """A JSON document as the driver takes it."""

    @abstractmethod
    def _py_json(self, value: Any) -> dict[str, Any] | None:
        """A JSON document as the driver returns it, decoded."""

    @abstractmethod
    async def _ensure_resource(self, tx: Tx, key: ResourceKey, now: datetime) -> int:
        """pk of the resource, locked FOR UPDATE; a bare row is inserted first if it is new."""

    def _t(self, value: Any) -> datetime:
        """A time as the driver returns it, as an aware datetime."""
        return rows.parse_time_required(value)


__all__ = ["RESOURCE_WHERE", "Row", "ServerHooks", "Tx", "is_uuid", "utc_now"]
