"""Resources on PostgreSQL/MySQL: the rows of ``tb_resource`` (what git wants, what is live,
status and flags) read and written; the listings a plan and ``reconciler status`` read.

The backends supply the one statement whose syntax differs (``_insert_resource_if_missing``, an
insert that ignores a racing one) and the null-safe comparison; every write locks the resource
row ``FOR UPDATE`` (``_ensure_resource``), which the deployment journal relies on too.
"""

from __future__ import annotations

from abc import abstractmethod
from collections.abc import Iterable
from datetime import datetime
from typing import Any

from reconciler.errors import NotFound
from reconciler.spec.model import ResourceKey
from reconciler.state import rows
from reconciler.state.server_tx import RESOURCE_WHERE, Row, ServerHooks, Tx, utc_now
from reconciler.state.store import ResourceRecord

MARK_OBSERVED_CHUNK = 500  # resources per UPDATE of mark_observed
RECORD_APPLIED_UPDATE = rows.RECORD_APPLIED_UPDATE.format(mark="%s")


class ServerResources(ServerHooks):
    """``get_resource(s)``, ``list_resources``, ``plan_listing``, ``record_desired``,
    ``record_applied``, ``update_status``, ``mark_observed``, ``set_suspended``,
    ``mark_deleted``."""

    null_safe_equal: str  # e.g. "a IS NOT DISTINCT FROM b" / "a <=> b" with {a} {b}

    @abstractmethod
    async def _insert_resource_if_missing(self, tx: Tx, key: ResourceKey, now: datetime) -> None:
        """Insert a bare row (``rows.new_resource_values``) unless the key exists already."""

    def _to_resource(self, row: Row) -> ResourceRecord:
        return rows.to_resource(row, self._py_json)

    async def _resource_row(self, tx: Tx, key: ResourceKey) -> Row | None:
        return await tx.one(f"SELECT * FROM v_resource WHERE {RESOURCE_WHERE}",  # noqa: S608
                            rows.key_params(key))

    async def _ensure_resource(self, tx: Tx, key: ResourceKey, now: datetime) -> int:
        """pk of the resource, locked FOR UPDATE; a bare row is inserted first if it is new."""
        sql = f"SELECT pk_resource FROM tb_resource WHERE {RESOURCE_WHERE} FOR UPDATE"  # noqa: S608
        row = await tx.one(sql, rows.key_params(key))
        if row is None:
            await self._insert_resource_if_missing(tx, key, now)
            row = await tx.one(sql, rows.key_params(key))
        assert row is not None
        return int(row["pk_resource"])

    async def get_resource(self, key: ResourceKey) -> ResourceRecord | None:
        row = await self._run("get_resource", lambda tx, _: self._resource_row(tx, key),
                              transaction=False)
        return self._to_resource(row) if row is not None else None

    async def get_resources(self, keys: Iterable[ResourceKey]
                            ) -> dict[ResourceKey, ResourceRecord]:
        identifiers = list(dict.fromkeys(str(key) for key in keys))
        if not identifiers:
            return {}

        async def read(tx: Tx, _: Any) -> list[Row]:
            found: list[Row] = []
            for start in range(0, len(identifiers), rows.KEYS_PER_QUERY):
                chunk = identifiers[start:start + rows.KEYS_PER_QUERY]
                marks = ", ".join(self.param_mark for _ in chunk)
                found += await tx.all(
                    f"SELECT * FROM v_resource WHERE identifier IN ({marks})",  # noqa: S608
                    tuple(chunk))
            return found

        found = await self._run("get_resources", read, read_only=True)  # one snapshot
        records = [self._to_resource(row) for row in found]
        return {record.key: record for record in records}

    async def list_resources(self, include_deleted: bool = False, *,
                             with_specs: bool = True) -> list[ResourceRecord]:
        """Every resource; ``with_specs=False`` leaves ``desired_spec``/``applied_spec`` None."""
        where = "" if include_deleted else "WHERE deleted = FALSE"
        columns = "*" if with_specs else rows.LIGHT_RESOURCE_COLUMNS
        order = ", ".join(f"{c}{self.binary_order}" for c in ("environment", "kind", "name"))
        sql = f"SELECT {columns} FROM v_resource {where} ORDER BY {order}"  # noqa: S608
        found = await self._run("list_resources", lambda tx, _: tx.all(sql), transaction=False)
        return [self._to_resource(row) for row in found]

    async def plan_listing(self) -> list[ResourceRecord]:
        order = ", ".join(f"{c}{self.binary_order}" for c in ("environment", "kind", "name"))
        sql = (f"SELECT {rows.PLAN_RESOURCE_COLUMNS} FROM tb_resource "  # noqa: S608
               f"WHERE deleted = FALSE ORDER BY {order}")
        found = await self._run("plan_listing", lambda tx, _: tx.all(sql), transaction=False)
        return rows.plan_resources(
            tuple(row[c] for c in ("id", "environment", "kind", "name", "applied_revision",
                                   "failed_revision", "last_result", "suspended"))
            for row in found)

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
        sql = rows.RECORD_DESIRED_UPDATE.format(
            mark="%s", same=self.null_safe_equal.format(a="applied_hash", b="%s"))

        async def op(tx: Tx, _: bool) -> Row:
            now = utc_now()
            pk = await self._ensure_resource(tx, key, now)
            await tx.execute(sql, (revision, spec_hash, self._db_json(spec), config_commit,
                                   False, self._db_time(now), spec_hash, pk))
            row = await self._resource_row(tx, key)
            assert row is not None
            return row

        return self._to_resource(await self._run("record_desired", op))

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

        async def op(tx: Tx, _: bool) -> None:
            now = utc_now()
            pk = await self._ensure_resource(tx, key, now)
            await tx.execute(RECORD_APPLIED_UPDATE, (
                revision, spec_hash, self._db_json(spec), config_commit, self._db_time(now),
                spec_hash, pk))

        await self._run("record_applied", op)

    async def _update_resource(self, operation: str, key: ResourceKey, fields: dict[str, Any],
                               create: bool) -> None:
        rows.check_update_fields(fields)
        names = sorted(fields)

        async def op(tx: Tx, _: bool) -> None:
            now = utc_now()
            if create:
                pk = await self._ensure_resource(tx, key, now)
            else:
                row = await tx.one(
                    f"SELECT pk_resource FROM tb_resource WHERE {RESOURCE_WHERE} "  # noqa: S608
                    "FOR UPDATE", rows.key_params(key))
                if row is None:
                    raise NotFound(f"no resource {key} in the state database")
                pk = int(row["pk_resource"])
            if names:
                assignments = ", ".join(f"{name} = %s" for name in names)
                await tx.execute(
                    f"UPDATE tb_resource SET {assignments}, updated_at = %s "  # noqa: S608
                    "WHERE pk_resource = %s",
                    (*(fields[n] for n in names), self._db_time(now), pk),
                )

        await self._run(operation, op)

    async def update_status(self, key: ResourceKey, **fields: Any) -> None:
        """Set any of sync_status, health_status, last_result, last_error, failed_revision
        (a resource not recorded yet gets a bare row first, as on SQLite)."""
        rows.check_status_fields(fields)
        await self._update_resource("update_status", key, fields, True)

    async def mark_observed(self, keys: Iterable[ResourceKey],
                            health_status: str | None = None) -> None:
        """These resources' health was observed now (and is ``health_status``, when given)."""
        keys = list(keys)
        if health_status is not None:
            rows.check_status_fields({"health_status": health_status})
        if not keys:
            return

        async def op(tx: Tx, _: bool) -> None:
            now = self._db_time(utc_now())
            # a few statements for a whole fleet, not one round trip per resource
            for start in range(0, len(keys), MARK_OBSERVED_CHUNK):
                chunk = keys[start:start + MARK_OBSERVED_CHUNK]
                rows_in = ", ".join(["(%s, %s, %s)"] * len(chunk))
                await tx.execute(
                    "UPDATE tb_resource SET health_observed_at = %s, "  # noqa: S608
                    "health_status = COALESCE(%s, health_status) "
                    f"WHERE (environment, kind, name) IN ({rows_in})",
                    (now, health_status, *(p for k in chunk for p in rows.key_params(k))))

        await self._run("mark_observed", op)

    async def set_suspended(self, key: ResourceKey, suspended: bool) -> None:
        """Pause/resume reconciling a known resource (NotFound otherwise: likely a typo)."""
        await self._update_resource("set_suspended", key, {"suspended": bool(suspended)}, False)

    async def mark_deleted(self, key: ResourceKey) -> None:
        """Gone from git: hidden from ``list_resources``; its history stays."""
        await self._update_resource("mark_deleted", key, {"deleted": True}, False)


__all__ = ["ServerResources"]
