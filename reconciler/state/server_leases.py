"""Leases on PostgreSQL/MySQL (shard and replica leases, a Service's rollout lease, operator
locks): rows of ``tb_lock`` taken, renewed and judged by the database server's clock, so
replicas on hosts whose clocks disagree still agree on who holds a lease.

The backends supply the one statement whose syntax differs (``_acquire_lock_tx``: insert, renew
or take over an expired lease atomically) and their clock (``_db_clock``).
"""

from __future__ import annotations

import time
from abc import abstractmethod
from collections.abc import Sequence
from datetime import datetime

from reconciler.observe.metrics import LOCK_WAIT
from reconciler.state import rows
from reconciler.state.server_tx import ServerHooks, Tx
from reconciler.state.store import LockInfo


class ServerLeases(ServerHooks):
    """``acquire_lock``, ``lock_owner(s)``, ``release_lock``, ``list_locks``, ``database_now``."""

    @abstractmethod
    async def _acquire_lock_tx(self, tx: Tx, name: str, owner: str, ttl_seconds: float) -> bool:
        """One statement: take, renew or take over an expired lease; True when held now."""

    @abstractmethod
    def _db_clock(self) -> str:
        """SQL for the database server's current UTC time (the one clock replicas share)."""

    async def acquire_lock(self, name: str, owner: str, ttl_seconds: float) -> bool:
        """Take or renew a named lease; False if another owner holds an unexpired one.

        Expiry is computed and compared on the database server, so replicas on hosts whose
        clocks disagree still agree on who holds a lease.
        """
        rows.check_ttl(ttl_seconds)
        started = time.perf_counter()
        try:
            return await self._run(
                "acquire_lock",
                lambda tx, _: self._acquire_lock_tx(tx, name, owner, ttl_seconds),
                transaction=False,
            )
        finally:
            LOCK_WAIT.observe(time.perf_counter() - started)

    async def lock_owner(self, name: str) -> str | None:
        """Who holds an unexpired lease on ``name`` (None: free or expired)."""
        row = await self._run("lock_owner", lambda tx, _: tx.one(
            f"SELECT owner FROM v_lock WHERE name = %s AND expires_at > {self._db_clock()}",  # noqa: S608
            (name,)), transaction=False)
        return str(row["owner"]) if row is not None else None

    async def lock_owners(self, names: Sequence[str]) -> dict[str, str]:
        """``lock_owner`` of several names in one query: name -> owner of each unexpired one."""
        if not names:
            return {}
        marks = ", ".join(["%s"] * len(names))
        found = await self._run("lock_owners", lambda tx, _: tx.all(
            f"SELECT name, owner FROM v_lock WHERE name IN ({marks}) "  # noqa: S608
            f"AND expires_at > {self._db_clock()}", tuple(names)), transaction=False)
        return {str(row["name"]): str(row["owner"]) for row in found}

    async def release_lock(self, name: str, owner: str) -> None:
        """Drop the lease if ``owner`` holds it; releasing someone else's lock does nothing."""
        await self._run("release_lock", lambda tx, _: tx.execute(
            "DELETE FROM tb_lock WHERE name = %s AND owner = %s", (name, owner)),
            transaction=False)

    async def list_locks(self) -> list[LockInfo]:
        """Every lease row, by name (expired ones included)."""
        found = await self._run("list_locks", lambda tx, _: tx.all(
            "SELECT name, owner, acquired_at, expires_at FROM v_lock "  # noqa: S608
            f"ORDER BY name{self.binary_order}"),
            transaction=False)
        return [LockInfo(r["name"], r["owner"], self._t(r["acquired_at"]),
                         self._t(r["expires_at"])) for r in found]

    async def database_now(self) -> datetime:
        """The database server's clock (what lease expiry is judged by)."""
        row = await self._run("database_now", lambda tx, _: tx.one(
            f"SELECT {self._db_clock()} AS now"), transaction=False)
        assert row is not None
        return self._t(row["now"])


__all__ = ["ServerLeases"]
