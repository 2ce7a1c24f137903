"""The daemon's retention task (retention.py): audit events older than ``--audit-retention`` and
webhook delivery ids past the replay window are deleted, periodically, once the first pass has
run; the rest is kept.

A real SQLite store and the daemon that owns the task (its first-pass event, its config); the
retention functions are driven directly (no HTTP, no pass)."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from reconciler.daemon.config import DaemonConfig
from reconciler.daemon.loop import Daemon
from reconciler.rollout.engine import Reconciler
from reconciler.source.git import GitSource
from reconciler.state.sqlite import SQLiteStore
from reconciler.state.store import AuditRecord
from tests.e2e.conftest import git

pytestmark = pytest.mark.timeout(90)


@pytest.fixture
async def daemon(tmp_path: Path) -> AsyncIterator[Daemon]:
    work, state = tmp_path / "work", tmp_path / "state"
    work.mkdir()
    git(work, "init", "-q", "-b", "main")
    state.mkdir()
    store = SQLiteStore(state / "fraisier.db")
    await store.migrate()
    source = GitSource(str(work), state_dir=state)
    engine = Reconciler(store, state_dir=state, source=source)
    cfg = DaemonConfig(repo=str(work), ref=None, path="", listen_host="127.0.0.1",
                       listen_port=0, interval=3600, prune=True, state_dir=state,
                       db_url=store.url, audit_retention=timedelta(days=30),
                       audit_prune_interval=0.05)
    it = Daemon(cfg, store, source, engine)
    try:
        yield it
    finally:
        it.stop()
        await engine.close()
        await store.close()


def _event(days_ago: float, number: int, action: str = "sync") -> AuditRecord:
    return AuditRecord(id=str(uuid.uuid4()), identifier=f"-:{action}:{number}",
                       at=datetime.now(UTC) - timedelta(days=days_ago), actor="poll",
                       action=action, outcome="failed", revision=f"r{number}")


async def test_retention_task_prunes_old_events_periodically(daemon: Daemon) -> None:
    store = daemon.store
    for number in (7, 8):  # written now by something else than a sync
        await store.import_audit(_event(0, number, "deploy"))
    for number, days in enumerate((300, 31, 29, 1)):
        await store.import_audit(_event(days, number))

    task = asyncio.create_task(daemon.retention.run())
    try:
        async def old_left() -> int:
            return len([e for e in await store.list_audit(limit=0)
                        if e.revision in ("r0", "r1")])

        await asyncio.sleep(0.3)
        assert await old_left() == 2  # the task waits for the main loop's first pass
        daemon.passed.set()
        for _ in range(100):
            if await old_left() == 0:
                break
            await asyncio.sleep(0.05)
        left = await store.list_audit(limit=0)
        assert sorted(e.revision or "" for e in left if e.action == "sync") == ["r2", "r3"]
        assert len(left) == 4  # the two deploy events and the two recent ones
        # an event that ages past the retention later goes at the next run (every 0.05 s)
        await store.import_audit(_event(40, 9))
        for _ in range(100):
            if len(await store.list_audit(limit=0)) == 4:
                break
            await asyncio.sleep(0.05)
        assert len(await store.list_audit(limit=0)) == 4
        assert not task.done()
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


async def test_retention_zero_keeps_everything(daemon: Daemon) -> None:
    daemon.cfg.audit_retention = None
    await daemon.store.import_audit(_event(3650, 0))
    assert await daemon.retention.prune_audit_once() == 0
    daemon.passed.set()
    task = asyncio.create_task(daemon.retention.run())  # runs every 0.05 s
    await asyncio.sleep(0.3)
    assert not task.done()
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    assert [e.revision for e in await daemon.store.list_audit(limit=0)] == ["r0"]
    daemon.cfg.audit_retention = timedelta(days=3649)
    assert await daemon.retention.prune_audit_once() == 1


async def test_webhook_delivery_ids_are_forgotten_after_the_replay_window(
        daemon: Daemon) -> None:
    store = daemon.store
    assert await store.record_delivery("github", "d-1")
    assert await daemon.retention.prune_deliveries_once() == 0  # 30 days by default
    assert not await store.record_delivery("github", "d-1")  # still a replay
    daemon.cfg.delivery_retention = timedelta(0)
    assert await daemon.retention.prune_deliveries_once() == 1
    assert await store.record_delivery("github", "d-1")  # forgotten: new again
