"""The deployment journal on PostgreSQL/MySQL: deployments, their events and steps, written
by the rules of ``journal.py`` (shared with SQLite) and read back with their events and steps.

Per-parent sequence numbers (deployment ``#n``, event and step seq) are computed while the
parent row is locked ``FOR UPDATE`` (the resource by ``_ensure_resource``, the deployment by
``_require_deployment``), so two writers serialise on the parent and never compute the same
number. A write that creates a row picks its UUID before the first attempt, so a retry after a
lost commit acknowledgement finds it instead of writing twice.
"""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

from reconciler.errors import NotFound
from reconciler.spec.model import ResourceKey
from reconciler.state import journal, rows
from reconciler.state.audit import current_actor
from reconciler.state.server_tx import RESOURCE_WHERE, Row, ServerHooks, Tx, is_uuid, utc_now
from reconciler.state.store import (
    FINAL_STATUSES,
    PENDING,
    SUCCEEDED,
    DeploymentEvent,
    DeploymentRecord,
    StepRecord,
)

IN_LIST_CHUNK = 500  # deployment ids per IN (…) when reading their events and steps
FINISH_STEP_UPDATE = rows.FINISH_STEP_UPDATE.format(mark="%s")


async def insert_event(tx: Tx, pk_deployment: int, identifier: str, seq: int, status: str,
                       message: str | None, at: Any) -> None:
    """One row of ``tb_deployment_event`` (``at`` as the driver takes it)."""
    await tx.insert("tb_deployment_event", journal.event_row(
        str(uuid.uuid4()), pk_deployment, identifier, seq, status, message, at),
        "pk_deployment_event")


class ServerJournal(ServerHooks):
    """``create_deployment``, ``transition``, ``start_step``, ``finish_step``,
    ``get_deployment``, ``list_deployments``, ``unfinished_deployments``, ``last_good``."""

    async def _deployments(self, tx: Tx, where: str, params: tuple[Any, ...], order: str,
                           limit: int | None = None) -> list[DeploymentRecord]:
        """Deployments of v_deployment matching ``where``, each with its events and steps."""
        limit_sql = f" LIMIT {int(limit)}" if limit is not None and limit > 0 else ""
        found = await tx.all(
            f"SELECT * FROM v_deployment WHERE {where} ORDER BY {order}{limit_sql}",  # noqa: S608
            params,
        )
        if not found:
            return []
        ids = [str(row["id"]) for row in found]
        events: dict[str, list[DeploymentEvent]] = {i: [] for i in ids}
        steps: dict[str, list[StepRecord]] = {i: [] for i in ids}
        for start in range(0, len(ids), IN_LIST_CHUNK):
            chunk = tuple(ids[start:start + IN_LIST_CHUNK])
            marks = ", ".join(["%s"] * len(chunk))
            for e in await tx.all(
                "SELECT deployment_id, status, message, at FROM v_deployment_event "  # noqa: S608
                f"WHERE deployment_id IN ({marks}) ORDER BY deployment_id, seq", chunk,
            ):
                events[str(e["deployment_id"])].append(rows.to_event(e))
            for s in await tx.all(
                f"SELECT * FROM v_deployment_step WHERE deployment_id IN ({marks}) "  # noqa: S608
                "ORDER BY deployment_id, seq", chunk,
            ):
                steps[str(s["deployment_id"])].append(rows.to_step(s))
        return [rows.to_deployment(row, events[str(row["id"])], steps[str(row["id"])],
                                   self._py_json)
                for row in found]

    async def _get_deployment(self, tx: Tx, deployment_id: str) -> DeploymentRecord | None:
        if is_uuid(deployment_id):
            found = await self._deployments(tx, "id = %s", (deployment_id,), "seq")
        else:  # an identifier; comparing it with a UUID column would be a type error
            found = await self._deployments(tx, "identifier = %s", (deployment_id,), "seq")
        return found[0] if found else None

    async def _next_seq(self, tx: Tx, table: str, fk_column: str, fk: int) -> int:
        # Safe only while the parent row is locked FOR UPDATE by this transaction.
        row = await tx.one(rows.NEXT_SEQ_SELECT.format(table=table, fk_column=fk_column,
                                                       mark="%s"), (fk,))
        assert row is not None
        return int(row["seq"])

    async def _add_event(self, tx: Tx, pk_deployment: int, identifier: str, status: str,
                         message: str | None, at: datetime, seq: int | None = None) -> None:
        if seq is None:
            seq = await self._next_seq(tx, "tb_deployment_event", "fk_deployment", pk_deployment)
        await insert_event(tx, pk_deployment, identifier, seq, status, message,
                           self._db_time(at))

    async def create_deployment(
        self,
        key: ResourceKey,
        *,
        from_revision: str | None,
        to_revision: str,
        config_commit: str | None,
        trigger: str,
        strategy: str,
        spec: dict[str, Any] | None = None,
    ) -> DeploymentRecord:
        """Insert a ``pending`` deployment (and its first event), identifier ``env/Kind/name#n``."""
        deployment_id = str(uuid.uuid4())  # before the first attempt: a retry finds it

        async def op(tx: Tx, retrying: bool) -> DeploymentRecord:
            if retrying and (done := await self._get_deployment(tx, deployment_id)) is not None:
                return done  # the earlier attempt committed; its acknowledgement was lost
            now = utc_now()
            pk_resource = await self._ensure_resource(tx, key, now)
            seq = await self._next_seq(tx, "tb_deployment", "fk_resource", pk_resource)
            row = journal.deployment_row(deployment_id, key, pk_resource, seq,
                                         self._db_time(now))
            identifier = row["identifier"]
            pk = await tx.insert("tb_deployment", {
                **row,
                "from_revision": from_revision,
                "to_revision": to_revision,
                "config_commit": config_commit,
                self.trigger_column: trigger,
                "strategy": strategy,
                "spec": self._db_json(spec),
            }, "pk_deployment")
            await self._add_event(tx, pk, identifier, PENDING, None, now, seq=1)
            created = await self._get_deployment(tx, deployment_id)
            assert created is not None
            return created

        return await self._run("create_deployment", op)

    async def _require_deployment(self, tx: Tx, deployment_id: str) -> Row:
        row = None
        if is_uuid(deployment_id):
            row = await tx.one(
                "SELECT pk_deployment, identifier, status FROM tb_deployment WHERE id = %s "
                "FOR UPDATE", (deployment_id,))
        if row is None:
            raise NotFound(f"no deployment {deployment_id}")
        return row

    async def transition(
        self,
        deployment_id: str,
        status: str,
        *,
        message: str | None = None,
        error: str | None = None,
        output: str | None = None,
        exit_code: int | None = None,
    ) -> None:
        """Move a deployment to ``status`` (checked against TRANSITIONS) and log an event."""
        extra = journal.transition_extra(status, error, output, exit_code)

        async def op(tx: Tx, retrying: bool) -> None:
            row = await self._require_deployment(tx, deployment_id)
            current = row["status"]
            if retrying and current == status:
                return  # the earlier attempt committed; its acknowledgement was lost
            now = utc_now()
            values = journal.transition_values(row, status, extra, self._db_time(now))
            names = sorted(values)
            await tx.execute(
                f"UPDATE tb_deployment SET {', '.join(f'{n} = %s' for n in names)} "  # noqa: S608
                "WHERE pk_deployment = %s",
                (*(values[n] for n in names), row["pk_deployment"]),
            )
            await self._add_event(tx, row["pk_deployment"], row["identifier"], status, message,
                                  now)
            if status in FINAL_STATUSES:
                await self._audit_final(tx, row, current, status,
                                        message or error, now, actor)

        actor = current_actor()
        await self._run("transition", op)

    async def _audit_final(self, tx: Tx, row: Row, previous: str, status: str,
                           message: str | None, now: datetime, actor: str | None) -> None:
        """The audit row of a deployment that reached a final status (same transaction)."""
        dep = await tx.one(
            rows.FINAL_AUDIT_SELECT.format(trigger=self.trigger_column, mark="%s"),
            (row["pk_deployment"],))
        assert dep is not None
        await tx.insert("tb_audit_event", rows.final_audit_values(
            row, dep, previous, status, message, self._db_time(now), actor, str(uuid.uuid4())),
            "pk_audit_event")

    async def start_step(self, deployment_id: str, action: str, instance: str,
                         detail: str | None = None) -> str:
        """Journal a provider action *before* it runs; returns the step id."""
        step_id = str(uuid.uuid4())

        async def op(tx: Tx, retrying: bool) -> str:
            row = await self._require_deployment(tx, deployment_id)
            if retrying and await tx.one("SELECT 1 AS found FROM tb_deployment_step "
                                         "WHERE id = %s", (step_id,)):
                return step_id
            seq = await self._next_seq(tx, "tb_deployment_step", "fk_deployment",
                                       row["pk_deployment"])
            await tx.insert("tb_deployment_step", journal.step_row(
                step_id, row, seq, action, instance, detail, self._db_time(utc_now())),
                "pk_deployment_step")
            return step_id

        return await self._run("start_step", op)

    async def finish_step(self, step_id: str, status: str, detail: str | None = None) -> None:
        """Close a started step as ``succeeded``, ``failed`` or ``interrupted`` (once)."""
        journal.check_finish_status(status)

        async def op(tx: Tx, retrying: bool) -> None:
            found = None
            if is_uuid(step_id):
                found = await tx.one(
                    "SELECT pk_deployment_step, identifier, status FROM tb_deployment_step "
                    "WHERE id = %s FOR UPDATE", (step_id,))
            row = journal.found_step(found, step_id)
            if not journal.step_to_finish(row, status, retrying=retrying):
                return  # the earlier attempt committed; its acknowledgement was lost
            await tx.execute(FINISH_STEP_UPDATE, (status, detail, self._db_time(utc_now()),
                                                  row["pk_deployment_step"]))

        await self._run("finish_step", op)

    async def get_deployment(self, deployment_id: str) -> DeploymentRecord | None:
        """By id (UUID) or identifier (``env/Kind/name#n``)."""
        return await self._run("get_deployment",
                               lambda tx, _: self._get_deployment(tx, deployment_id),
                               read_only=True)

    async def list_deployments(self, key: ResourceKey | None = None,
                               limit: int = 50) -> list[DeploymentRecord]:
        """Newest first, with events and steps; ``limit <= 0`` means all."""
        if key is None:
            return await self._run("list_deployments", lambda tx, _: self._deployments(
                tx, "1 = 1", (), "created_at DESC, seq DESC", limit), read_only=True)
        return await self._run("list_deployments", lambda tx, _: self._deployments(
            tx, RESOURCE_WHERE, rows.key_params(key), "seq DESC", limit), read_only=True)

    async def unfinished_deployments(self) -> list[DeploymentRecord]:
        """Deployments left ``pending`` / ``in_progress`` (a crash): oldest first."""
        return await self._run("unfinished_deployments", lambda tx, _: self._deployments(
            tx, "status IN ('pending', 'in_progress')", (), "created_at, seq"), read_only=True)

    async def last_good(self, key: ResourceKey) -> DeploymentRecord | None:
        """The newest ``succeeded`` deployment of a resource."""
        found = await self._run("last_good", lambda tx, _: self._deployments(
            tx, f"{RESOURCE_WHERE} AND status = %s", (*rows.key_params(key), SUCCEEDED),
            "seq DESC", 1), read_only=True)
        return found[0] if found else None


__all__ = ["ServerJournal", "insert_event"]
