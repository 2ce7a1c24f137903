"""Bulk import on PostgreSQL/MySQL (``reconciler.state.copy``): resources and deployments,
with their events and steps, inserted exactly as another store recorded them (same ids,
identifiers, statuses and timestamps) into an empty database."""

from __future__ import annotations

from datetime import datetime

from reconciler.errors import NotFound
from reconciler.state import rows
from reconciler.state.server_journal import insert_event
from reconciler.state.server_tx import RESOURCE_WHERE, ServerHooks, Tx, utc_now
from reconciler.state.store import DeploymentRecord, ResourceRecord


class ServerImport(ServerHooks):
    """``is_empty``, ``import_resource``, ``import_deployment``."""

    async def is_empty(self) -> bool:
        """No resource and no deployment recorded (a safe destination for ``copy_store``)."""
        row = await self._run("is_empty", lambda tx, _: tx.one(
            "SELECT (SELECT COUNT(*) FROM tb_resource) AS resources, "
            "(SELECT COUNT(*) FROM tb_deployment) AS deployments"), transaction=False)
        assert row is not None
        return int(row["resources"]) == 0 and int(row["deployments"]) == 0

    async def import_resource(self, record: ResourceRecord, created_at: datetime) -> None:
        """Insert a resource exactly as another store recorded it (same id)."""
        updated = record.updated_at or created_at
        values = {
            "id": record.id, "identifier": str(record.key),
            "environment": record.key.environment, "kind": record.key.kind,
            "name": record.key.name,
            "desired_revision": record.desired_revision, "desired_hash": record.desired_hash,
            "desired_spec": self._db_json(record.desired_spec),
            "applied_revision": record.applied_revision, "applied_hash": record.applied_hash,
            "applied_spec": self._db_json(record.applied_spec),
            "config_commit": record.config_commit, "sync_status": record.sync_status,
            "health_status": record.health_status, "last_result": record.last_result,
            "last_error": record.last_error, "failed_revision": record.failed_revision,
            "suspended": record.suspended, "deleted": record.deleted,
            "created_at": self._db_time(min(created_at, updated)),
            "updated_at": self._db_time(updated),
        }

        async def op(tx: Tx, retrying: bool) -> None:
            if retrying and await tx.one("SELECT 1 AS found FROM tb_resource WHERE id = %s",
                                         (record.id,)):
                return
            await tx.insert("tb_resource", values, "pk_resource")

        await self._run("import_resource", op)

    async def import_deployment(self, record: DeploymentRecord) -> None:
        """Insert a deployment with its events and steps exactly as another store recorded it
        (same ids, identifiers, statuses and timestamps; its resource must be imported first)."""
        seq = int(record.identifier.rsplit("#", 1)[1])
        created = record.created_at or utc_now()

        async def op(tx: Tx, retrying: bool) -> None:
            if retrying and await tx.one("SELECT 1 AS found FROM tb_deployment WHERE id = %s",
                                         (record.id,)):
                return
            parent = await tx.one(
                f"SELECT pk_resource FROM tb_resource WHERE {RESOURCE_WHERE}",  # noqa: S608
                rows.key_params(record.key))
            if parent is None:
                raise NotFound(f"{record.identifier}: resource {record.key} not imported")
            pk = await tx.insert("tb_deployment", {
                "id": record.id, "identifier": record.identifier,
                "fk_resource": parent["pk_resource"], "seq": seq, "status": record.status,
                "from_revision": record.from_revision, "to_revision": record.to_revision,
                "config_commit": record.config_commit, self.trigger_column: record.trigger,
                "strategy": record.strategy, "error": record.error, "output": record.output,
                "exit_code": record.exit_code, "spec": self._db_json(record.spec),
                "created_at": self._db_time(created),
                "started_at": self._db_time(record.started_at) if record.started_at else None,
                "finished_at": (self._db_time(record.finished_at) if record.finished_at
                                else None),
            }, "pk_deployment")
            for number, event in enumerate(record.events, start=1):
                await insert_event(tx, pk, record.identifier, number, event.status,
                                   event.message, self._db_time(event.at))
            for step in record.steps:
                await tx.insert("tb_deployment_step", {
                    "id": step.id, "identifier": f"{record.identifier}/step/{step.seq}",
                    "fk_deployment": pk, "seq": step.seq, "action": step.action,
                    "instance": step.instance, "status": step.status, "detail": step.detail,
                    "started_at": self._db_time(step.started_at),
                    "finished_at": (self._db_time(step.finished_at) if step.finished_at
                                    else None),
                }, "pk_deployment_step")

        await self._run("import_deployment", op)


__all__ = ["ServerImport"]
