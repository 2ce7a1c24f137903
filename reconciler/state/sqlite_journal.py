"""The deployment journal on SQLite: deployments, their events and steps, written by the rules
of ``journal.py`` (shared with the servers) and read back with their events and steps.

Per-parent sequence numbers (deployment ``#n``, event and step seq) are computed inside one
``BEGIN IMMEDIATE`` transaction (``_write``), which keeps every other writer out until it
commits.
"""

from __future__ import annotations

import json
import uuid
from typing import Any

from reconciler.errors import NotFound
from reconciler.spec.model import ResourceKey
from reconciler.state import journal, rows
from reconciler.state.audit import current_actor
from reconciler.state.sqlite_tx import RESOURCE_WHERE, SQLiteHooks, json_text, json_value, now_text
from reconciler.state.store import (
    FINAL_STATUSES,
    PENDING,
    SUCCEEDED,
    DeploymentEvent,
    DeploymentRecord,
    StepRecord,
)

FINISH_STEP_UPDATE = rows.FINISH_STEP_UPDATE.format(mark="?")


class SQLiteJournal(SQLiteHooks):
    """``create_deployment``, ``transition``, ``start_step``, ``finish_step``,
    ``get_deployment``, ``list_deployments``, ``unfinished_deployments``, ``last_good``."""

    def _deployments(self, where: str, params: tuple[Any, ...], order: str,
                     limit: int = -1) -> list[DeploymentRecord]:
        """Deployments of v_deployment matching ``where``, each with its events and steps."""
        with self._read():
            found = self._all(
                f"SELECT * FROM v_deployment WHERE {where} ORDER BY {order} LIMIT ?",  # noqa: S608
                (*params, limit),
            )
            if not found:
                return []
            ids = json.dumps([row["id"] for row in found])
            events: dict[str, list[DeploymentEvent]] = {row["id"]: [] for row in found}
            for e in self._all(
                "SELECT deployment_id, status, message, at FROM v_deployment_event "
                "WHERE deployment_id IN (SELECT value FROM json_each(?)) "
                "ORDER BY deployment_id, seq",
                (ids,),
            ):
                events[e["deployment_id"]].append(rows.to_event(e))
            steps: dict[str, list[StepRecord]] = {row["id"]: [] for row in found}
            for s in self._all(
                "SELECT * FROM v_deployment_step "
                "WHERE deployment_id IN (SELECT value FROM json_each(?)) "
                "ORDER BY deployment_id, seq",
                (ids,),
            ):
                steps[s["deployment_id"]].append(rows.to_step(s))
        return [rows.to_deployment(row, events[row["id"]], steps[row["id"]], json_value)
                for row in found]

    def _get_deployment(self, deployment_id: str) -> DeploymentRecord | None:
        found = self._deployments("id = ? OR identifier = ?", (deployment_id, deployment_id),
                                  "seq")
        return found[0] if found else None

    def _add_event(self, pk_deployment: int, identifier: str, status: str,
                   message: str | None, at: str) -> None:
        seq = self._next_seq("tb_deployment_event", "fk_deployment", pk_deployment)
        self._insert("tb_deployment_event", journal.event_row(
            str(uuid.uuid4()), pk_deployment, identifier, seq, status, message, at))

    def _next_seq(self, table: str, fk_column: str, fk: int) -> int:
        # Safe only inside _write: BEGIN IMMEDIATE keeps other writers out until COMMIT.
        row = self._one(rows.NEXT_SEQ_SELECT.format(table=table, fk_column=fk_column,
                                                    mark="?"), (fk,))
        assert row is not None
        return int(row["seq"])

    def _create_deployment(self, key: ResourceKey, values: dict[str, Any]) -> DeploymentRecord:
        deployment_id = str(uuid.uuid4())
        with self._write():
            now = now_text()
            pk_resource = self._ensure_resource(key, now)
            seq = self._next_seq("tb_deployment", "fk_resource", pk_resource)
            row = journal.deployment_row(deployment_id, key, pk_resource, seq, now)
            identifier = row["identifier"]
            pk = self._insert("tb_deployment", {**row, **values})
            self._add_event(pk, identifier, PENDING, None, now)
            created = self._get_deployment(deployment_id)
        assert created is not None
        return created

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
        """Insert a ``pending`` deployment (and its first event).

        Its identifier is ``environment/Kind/name#<n>``, n counting 1, 2, 3… per resource. A
        resource the store has not seen yet gets a bare row, so the journal never drops an action.
        """
        values = {
            "from_revision": from_revision,
            "to_revision": to_revision,
            "config_commit": config_commit,
            "trigger": trigger,
            "strategy": strategy,
            "spec": json_text(spec),
        }
        return await self._run(self._create_deployment, key, values)

    def _require_deployment(self, deployment_id: str) -> dict[str, Any]:
        row = self._one(
            "SELECT pk_deployment, identifier, status FROM tb_deployment WHERE id = ?",
            (deployment_id,),
        )
        if row is None:
            raise NotFound(f"no deployment {deployment_id}")
        return row

    def _transition(self, deployment_id: str, status: str, message: str | None,
                    extra: dict[str, Any], actor: str | None = None) -> None:
        with self._write():
            row = self._require_deployment(deployment_id)
            current = row["status"]
            now = now_text()
            values = journal.transition_values(row, status, extra, now)
            assignments = ", ".join(f"{name} = :{name}" for name in sorted(values))
            self._conn.execute(
                f"UPDATE tb_deployment SET {assignments} WHERE pk_deployment = :pk",  # noqa: S608
                {**values, "pk": row["pk_deployment"]},
            )
            self._add_event(row["pk_deployment"], row["identifier"], status, message, now)
            if status in FINAL_STATUSES:
                self._audit_final(row, current, status, message or extra.get("error"), now,
                                  actor)

    def _audit_final(self, row: dict[str, Any], previous: str, status: str,
                     message: str | None, now: str, actor: str | None) -> None:
        """The audit row of a deployment that reached a final status (inside _write)."""
        dep = self._one(rows.FINAL_AUDIT_SELECT.format(trigger='"trigger"', mark="?"),
                        (row["pk_deployment"],))
        assert dep is not None
        self._insert("tb_audit_event", rows.final_audit_values(
            row, dep, previous, status, message, now, actor, str(uuid.uuid4())))

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
        """Move a deployment to ``status`` (checked against TRANSITIONS) and log an event.

        Entering ``in_progress`` sets ``started_at``; entering a final status sets
        ``finished_at`` (again when a failed deployment is then rolled back). ``error``,
        ``output`` and ``exit_code`` are stored when given and kept otherwise.
        """
        extra = journal.transition_extra(status, error, output, exit_code)
        # read here, in the caller's task: the worker thread does not see its context
        await self._run(self._transition, deployment_id, status, message, extra,
                        current_actor())

    def _start_step(self, deployment_id: str, action: str, instance: str,
                    detail: str | None) -> str:
        step_id = str(uuid.uuid4())
        with self._write():
            row = self._require_deployment(deployment_id)
            seq = self._next_seq("tb_deployment_step", "fk_deployment", row["pk_deployment"])
            self._insert("tb_deployment_step", journal.step_row(
                step_id, row, seq, action, instance, detail, now_text()))
        return step_id

    async def start_step(self, deployment_id: str, action: str, instance: str,
                         detail: str | None = None) -> str:
        """Journal a provider action *before* it runs; returns the step id."""
        return await self._run(self._start_step, deployment_id, action, instance, detail)

    def _finish_step(self, step_id: str, status: str, detail: str | None) -> None:
        with self._write():
            row = journal.found_step(self._one(
                "SELECT pk_deployment_step, identifier, status FROM tb_deployment_step "
                "WHERE id = ?", (step_id,)
            ), step_id)
            journal.step_to_finish(row, status)
            self._conn.execute(FINISH_STEP_UPDATE, (status, detail, now_text(),
                                                    row["pk_deployment_step"]))

    async def finish_step(self, step_id: str, status: str, detail: str | None = None) -> None:
        """Close a started step as ``succeeded``, ``failed`` or ``interrupted`` (once);
        ``detail`` replaces the start detail when given."""
        journal.check_finish_status(status)
        await self._run(self._finish_step, step_id, status, detail)

    async def get_deployment(self, deployment_id: str) -> DeploymentRecord | None:
        """By id (UUID) or identifier (``env/Kind/name#n``)."""
        return await self._run(self._get_deployment, deployment_id)

    async def list_deployments(self, key: ResourceKey | None = None,
                               limit: int = 50) -> list[DeploymentRecord]:
        """Newest first, with events and steps; ``limit <= 0`` means all."""
        limit = limit if limit > 0 else -1
        if key is None:
            return await self._run(self._deployments, "1 = 1", (),
                                   "created_at DESC, seq DESC", limit)
        return await self._run(self._deployments, RESOURCE_WHERE, rows.key_params(key),
                               "seq DESC", limit)

    async def unfinished_deployments(self) -> list[DeploymentRecord]:
        """Deployments left ``pending`` / ``in_progress`` (a crash): oldest first."""
        # Literal statuses (not parameters) so SQLite can use the partial index on them.
        return await self._run(self._deployments, "status IN ('pending', 'in_progress')", (),
                               "created_at, seq")

    async def last_good(self, key: ResourceKey) -> DeploymentRecord | None:
        """The newest ``succeeded`` deployment of a resource."""
        found = await self._run(self._deployments, f"{RESOURCE_WHERE} AND status = ?",
                                (*rows.key_params(key), SUCCEEDED), "seq DESC", 1)
        return found[0] if found else None


__all__ = ["SQLiteJournal"]
