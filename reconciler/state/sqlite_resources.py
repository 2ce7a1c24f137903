"""Resources on SQLite: the rows of ``tb_resource`` (what git wants, what is live, status and
flags) read and written; the listings a plan and ``reconciler status`` read (the light one kept
between reads while the database does not change)."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from reconciler.errors import NotFound
from reconciler.spec.model import ResourceKey
from reconciler.state import rows
from reconciler.state.sqlite_tx import RESOURCE_WHERE, SQLiteHooks, json_text, json_value, now_text
from reconciler.state.store import ResourceRecord

# What a plan reads of every resource, in key order: from the covering index
# ``ix_resource_plan`` alone (sql/sqlite/007), not from the rows and their documents.
PLAN_LISTING_SQL = (f"SELECT {rows.PLAN_RESOURCE_COLUMNS} FROM tb_resource "  # noqa: S608
                    "WHERE deleted = 0 ORDER BY environment, kind, name")
RECORD_DESIRED_UPDATE = rows.RECORD_DESIRED_UPDATE.format(mark="?", same="applied_hash IS ?")
RECORD_APPLIED_UPDATE = rows.RECORD_APPLIED_UPDATE.format(mark="?")


class SQLiteResources(SQLiteHooks):
    """``get_resource(s)``, ``list_resources``, ``plan_listing``, ``record_desired``,
    ``record_applied``, ``update_status``, ``mark_observed``, ``set_suspended``,
    ``mark_deleted``."""

    # the last light listing and the database's state it was read at (_light_resources)
    _light: tuple[tuple[int, int, bool], list[ResourceRecord]] | None = None

    def _resource_row(self, key: ResourceKey) -> dict[str, Any] | None:
        return self._one(f"SELECT * FROM v_resource WHERE {RESOURCE_WHERE}",  # noqa: S608
                         rows.key_params(key))

    @staticmethod
    def _to_resource(row: dict[str, Any]) -> ResourceRecord:
        return rows.to_resource(row, json_value)

    def _ensure_resource(self, key: ResourceKey, now: str) -> int:
        """pk of the resource, inserting a bare row first if it is new (inside _write)."""
        row = self._one(f"SELECT pk_resource FROM tb_resource WHERE {RESOURCE_WHERE}",  # noqa: S608
                        rows.key_params(key))
        if row is not None:
            return int(row["pk_resource"])
        return self._insert("tb_resource", rows.new_resource_values(key, now))

    def _require_resource(self, key: ResourceKey) -> dict[str, Any]:
        row = self._one(f"SELECT * FROM tb_resource WHERE {RESOURCE_WHERE}",  # noqa: S608
                        rows.key_params(key))
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
            self._conn.execute(RECORD_DESIRED_UPDATE, (
                revision, spec_hash, json_text(spec), config_commit, False, now, spec_hash, pk))
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
            self._conn.execute(RECORD_APPLIED_UPDATE, (
                revision, spec_hash, json_text(spec), config_commit, now, spec_hash, pk))

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
                f"COALESCE(?, health_status) WHERE {RESOURCE_WHERE}",
                [(now_text(), health_status, *rows.key_params(k)) for k in keys])

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


__all__ = ["PLAN_LISTING_SQL", "SQLiteResources"]
