"""Leases on SQLite (shard and replica leases, a Service's rollout lease, operator locks): rows
of ``tb_lock`` taken, renewed and judged by this host's clock — a SQLite database is shared by
the processes of one host only."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta

from reconciler.state import rows
from reconciler.state.sqlite_tx import SQLiteHooks, now_text
from reconciler.state.store import LockInfo


class SQLiteLeases(SQLiteHooks):
    """``acquire_lock``, ``lock_owner(s)``, ``release_lock``, ``list_locks``, ``database_now``."""

    def _acquire_lock(self, name: str, owner: str, ttl_seconds: float) -> bool:
        with self._write():
            now = datetime.now(UTC)
            # One statement decides: insert, renew (same owner, acquired_at kept) or take over
            # an expired lease; a live lease of another owner leaves the row untouched.
            cursor = self._conn.execute(
                """INSERT INTO tb_lock (id, identifier, name, owner, acquired_at, expires_at)
                   VALUES (?, ?, ?, ?, ?, ?)
                   ON CONFLICT (name) DO UPDATE SET
                       acquired_at = CASE WHEN tb_lock.owner = excluded.owner
                                          THEN tb_lock.acquired_at
                                          ELSE excluded.acquired_at END,
                       owner = excluded.owner,
                       expires_at = excluded.expires_at
                   WHERE tb_lock.owner = excluded.owner
                      OR tb_lock.expires_at <= excluded.acquired_at""",
                (
                    str(uuid.uuid4()), name, name, owner,
                    now.isoformat(timespec="microseconds"),
                    (now + timedelta(seconds=ttl_seconds)).isoformat(timespec="microseconds"),
                ),
            )
            return cursor.rowcount == 1

    async def acquire_lock(self, name: str, owner: str, ttl_seconds: float) -> bool:
        """Take or renew a named lease; False if another owner holds an unexpired one."""
        rows.check_ttl(ttl_seconds)
        return await self._run(self._acquire_lock, name, owner, ttl_seconds)

    def _lock_owner(self, name: str) -> str | None:
        row = self._one("SELECT owner, expires_at FROM v_lock WHERE name = ?", (name,))
        if row is None or row["expires_at"] <= now_text():
            return None
        return str(row["owner"])

    async def lock_owner(self, name: str) -> str | None:
        """Who holds an unexpired lease on ``name`` (None: free or expired)."""
        return await self._run(self._lock_owner, name)

    def _lock_owners(self, names: Sequence[str]) -> dict[str, str]:
        marks = ", ".join("?" * len(names))
        now = now_text()
        return {str(name): str(owner) for name, owner, expires_at in self._tuples(
            f"SELECT name, owner, expires_at FROM v_lock WHERE name IN ({marks})",  # noqa: S608
            tuple(names)) if expires_at > now}

    async def lock_owners(self, names: Sequence[str]) -> dict[str, str]:
        """``lock_owner`` of several names in one query: name -> owner of each unexpired one."""
        return await self._run(self._lock_owners, list(names)) if names else {}

    def _release_lock(self, name: str, owner: str) -> None:
        with self._write():
            self._conn.execute("DELETE FROM tb_lock WHERE name = ? AND owner = ?", (name, owner))

    async def release_lock(self, name: str, owner: str) -> None:
        """Drop the lease if ``owner`` holds it; releasing someone else's lock does nothing."""
        await self._run(self._release_lock, name, owner)

    async def database_now(self) -> datetime:
        """This host's clock, which the leases of a SQLite database (one host) are judged by."""
        return datetime.now(UTC)

    async def list_locks(self) -> list[LockInfo]:
        """Every lease row, by name (expired ones included)."""
        found = await self._run(self._all, "SELECT * FROM v_lock ORDER BY name")
        return [
            LockInfo(row["name"], row["owner"], datetime.fromisoformat(row["acquired_at"]),
                     datetime.fromisoformat(row["expires_at"]))
            for row in found
        ]


__all__ = ["SQLiteLeases"]
