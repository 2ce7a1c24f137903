"""copy_store: history moved from SQLite to PostgreSQL and MariaDB, record for record."""

from __future__ import annotations

from pathlib import Path

import pytest

from reconciler.errors import StoreError
from reconciler.spec.model import ResourceKey
from reconciler.state import open_store
from reconciler.state.copy import copy_store
from reconciler.state.sqlite import SQLiteStore

API = ResourceKey("prod", "Service", "api")
ETL = ResourceKey("prød", "Job", "etl-🍓")


async def _history(store: SQLiteStore) -> None:
    spec = {"image": "api:1", "env": {"TOKEN": {"env": "API_TOKEN"}}}
    await store.record_desired(API, revision="r1", spec_hash="h1", spec=spec, config_commit="c1")
    first = await store.create_deployment(API, from_revision=None, to_revision="r1",
                                          config_commit="c1", trigger="commit",
                                          strategy="rolling", spec=spec)
    await store.transition(first.id, "in_progress", message="go")
    step = await store.start_step(first.id, "pull", "host-1", detail="api:1")
    await store.finish_step(step, "succeeded")
    await store.transition(first.id, "succeeded", output="ok ✓")
    await store.record_applied(API, revision="r1", spec_hash="h1", spec=spec, config_commit="c1")
    second = await store.create_deployment(API, from_revision="r1", to_revision="r2",
                                           config_commit="c2", trigger="webhook",
                                           strategy="blue_green")
    await store.transition(second.id, "in_progress")
    await store.start_step(second.id, "restart", "host-1")  # left open: a crash
    await store.update_status(API, health_status="Degraded", last_result="in_progress")
    job = await store.create_deployment(ETL, from_revision=None, to_revision="j1",
                                        config_commit=None, trigger="schedule", strategy="run")
    await store.transition(job.id, "in_progress")
    await store.transition(job.id, "failed", error="exit 2", exit_code=2)
    await store.transition(job.id, "rolled_back")
    await store.update_status(ETL, failed_revision="j1", last_result="rolled_back")
    await store.set_suspended(ETL, True)
    await store.record_audit("suspend", actor="cli:ops@host", outcome="succeeded", resource=ETL,
                             message="paused ✓")
    await store.mark_deleted(ETL)


@pytest.mark.timeout(60)
async def test_copy_sqlite_history_to_server(server_url: str, tmp_path: Path) -> None:
    src = SQLiteStore(tmp_path / "old.db")
    dst = open_store(server_url)
    try:
        await src.migrate()
        await _history(src)
        await dst.migrate()
        result = await copy_store(src, dst)
        assert (result.resources, result.deployments, result.events, result.steps,
                result.audit) == (2, 3, 3 + 2 + 4, 2, 1 + 2 + 1)
        assert await dst.list_resources(include_deleted=True) == await src.list_resources(
            include_deleted=True)
        assert await dst.list_deployments(limit=0) == await src.list_deployments(limit=0)
        assert await dst.unfinished_deployments() == await src.unfinished_deployments()
        assert await dst.list_audit(limit=0) == await src.list_audit(limit=0)
        # the copy goes on where the source stopped
        third = await dst.create_deployment(API, from_revision="r1", to_revision="r3",
                                            config_commit=None, trigger="commit",
                                            strategy="rolling")
        assert third.identifier == "prod/Service/api#3"
        with pytest.raises(StoreError, match="already holds"):
            await copy_store(src, dst)
        with pytest.raises(StoreError, match="not SQLiteStore"):
            await copy_store(dst, src)
    finally:
        await src.close()
        await dst.close()
