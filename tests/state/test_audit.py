"""The audit trail, on SQLite, PostgreSQL and MariaDB alike (each test: its own database).

A deployment's final status writes its audit row in the same transaction; other changes are
recorded with ``record_audit``; ``list_audit`` reads newest first, by resource and time.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from reconciler.errors import StoreError
from reconciler.spec.model import ResourceKey
from reconciler.state import Store, open_store
from reconciler.state.audit import (
    acting_as,
    action_for,
    actor_for_trigger,
    cli_actor,
    parse_retention,
)
from reconciler.state.store import AuditRecord

pytestmark = pytest.mark.timeout(60)

API = ResourceKey("prod", "Service", "api")
ETL = ResourceKey("prod", "Job", "etl")


async def _deployment(store: Store, key: ResourceKey = API, *, trigger: str = "commit",
                      strategy: str = "rolling", to: str = "r1") -> str:
    dep = await store.create_deployment(key, from_revision=None, to_revision=to,
                                        config_commit=f"c-{to}", trigger=trigger,
                                        strategy=strategy)
    await store.transition(dep.id, "in_progress")
    return dep.id


async def test_final_status_writes_one_audit_row(any_store: Store) -> None:
    dep = await _deployment(any_store)
    assert await any_store.list_audit() == []  # pending / in_progress are not audited
    before = datetime.now(UTC) - timedelta(seconds=1)
    await any_store.transition(dep, "succeeded", message="healthy")
    (event,) = await any_store.list_audit()
    assert (event.actor, event.action, event.outcome) == ("watch", "deploy", "succeeded")
    assert (event.resource, event.deployment) == ("prod/Service/api", "prod/Service/api#1")
    assert (event.config_commit, event.revision, event.message) == ("c-r1", "r1", "healthy")
    assert event.identifier == "prod/Service/api#1:succeeded" and len(event.id) == 36
    assert event.at > before and event.at.utcoffset() == timedelta(0)


async def test_failed_then_rolled_back_is_two_events(any_store: Store) -> None:
    trigger = "webhook:github:72d3162e-cc78-11e3-81ab-4c9367dc0958"
    dep = await _deployment(any_store, trigger=trigger)
    await any_store.transition(dep, "failed", error="api-1: health check failed: 503")
    await any_store.transition(dep, "rolled_back", message="rolled back to r0")
    rolled, failed = await any_store.list_audit()
    assert (failed.action, failed.outcome, failed.message) == (
        "deploy", "failed", "api-1: health check failed: 503")
    assert (rolled.action, rolled.outcome, rolled.message) == (
        "rollback", "rolled_back", "rolled back to r0")
    assert failed.actor == rolled.actor == trigger


async def test_task_actor_wins_over_the_trigger(any_store: Store) -> None:
    with acting_as("cli:alice@laptop"):
        dep = await _deployment(any_store, trigger="manual", strategy="rollback")
        await any_store.transition(dep, "succeeded", message="rolled back by operator")
    prune = await _deployment(any_store, ETL, trigger="prune", strategy="delete")
    with acting_as("replica:host-b:4242:99"):
        # a task started inside the block inherits the actor
        await asyncio.create_task(any_store.transition(prune, "failed", error="gone"))
    events = await any_store.list_audit()
    assert [(e.actor, e.action, e.outcome) for e in events] == [
        ("replica:host-b:4242:99", "prune", "failed"),
        ("cli:alice@laptop", "rollback", "succeeded"),
    ]


async def test_record_and_filter(any_store: Store) -> None:
    await any_store.record_desired(API, revision="r1", spec_hash="h", spec={}, config_commit="c1")
    first = await any_store.record_audit("suspend", actor="cli:bob@ops", outcome="succeeded",
                                         resource=API, config_commit="c1", revision="r1")
    assert (first.action, first.actor, first.resource, first.outcome) == (
        "suspend", "cli:bob@ops", "prod/Service/api", "succeeded")
    assert first.identifier.startswith("prod/Service/api:suspend:")
    run = await _deployment(any_store, ETL, trigger="schedule", strategy="run")
    await any_store.transition(run, "succeeded", output="done", exit_code=0)
    nothing = await any_store.record_audit("sync", actor="webhook:gitlab:x-1",
                                           outcome="failed", config_commit="f" * 40,
                                           message="pushed commit not found after 6 fetches")
    third = await any_store.record_audit("resume", actor="cli:bob@ops", outcome="succeeded",
                                         resource=API)

    everything = await any_store.list_audit()
    assert [e.action for e in everything] == ["resume", "sync", "run", "suspend"]
    assert everything[1].resource is None and everything[1].id == nothing.id
    assert everything[2].actor == "schedule"
    assert [e.action for e in await any_store.list_audit(resource=API)] == ["resume", "suspend"]
    assert [e.action for e in await any_store.list_audit(limit=2)] == ["resume", "sync"]
    assert [e.id for e in await any_store.list_audit(since=third.at)] == [third.id]
    assert len(await any_store.list_audit(limit=0)) == 4
    assert await any_store.list_audit(resource=ResourceKey("prod", "Service", "other")) == []

    with pytest.raises(StoreError, match="outcome"):
        await any_store.record_audit("suspend", actor="cli:x@y", outcome="done", resource=API)
    assert len(await any_store.list_audit(limit=0)) == 4


async def test_long_values_are_clipped_and_long_triggers_fit(any_store: Store) -> None:
    actor = "cli:" + "u" * 300 + "@host"
    event = await any_store.record_audit("resume", actor=actor, outcome="succeeded",
                                         resource=API, message="é" * 5000)
    assert len(event.actor) == 255 and event.actor.endswith("…")
    assert event.message is not None and len(event.message) == 2000
    # triggers carry actors now (MySQL's column was 64 characters before 003)
    dep = await _deployment(any_store, trigger="cli:" + "a" * 100 + "@" + "h" * 120)
    await any_store.transition(dep, "cancelled", message="stopped")
    assert (await any_store.list_audit(limit=1))[0].actor.startswith("cli:aaaa")


def test_actor_and_action_names() -> None:
    assert actor_for_trigger("commit") == "watch"
    assert actor_for_trigger("drift") == "heal"
    assert actor_for_trigger("poll,webhook:github:abc") == "webhook:github:abc"
    assert actor_for_trigger("drift,poll") == "heal"
    assert actor_for_trigger("startup") == "startup"
    assert actor_for_trigger("") == "unknown"
    assert cli_actor().startswith("cli:") and "@" in cli_actor()
    assert action_for("Service", "rolling", "poll", "succeeded", "in_progress") == "deploy"
    assert action_for("Service", "rolling", "poll", "rolled_back", "failed") == "rollback"
    assert action_for("Service", "rollback", "manual", "succeeded", "in_progress") == "rollback"
    assert action_for("Job", "run", "poll", "failed", "in_progress") == "run"
    assert action_for("Schedule", "install", "poll", "succeeded", "in_progress") == "install"
    assert action_for("Service", "delete", "prune", "succeeded", "in_progress") == "prune"


# -- retention ---------------------------------------------------------------------------------
def _event(at: datetime, number: int) -> AuditRecord:
    return AuditRecord(id=str(uuid.uuid4()), identifier=f"prod/Service/api:deploy:{number}",
                       at=at, actor="poll", action="deploy", outcome="succeeded",
                       resource=str(API), revision=f"r{number}")


@pytest.mark.parametrize("batch_size", [1000, 3, 2])
async def test_prune_audit_deletes_exactly_the_events_before_the_cutoff(
        any_store: Store, batch_size: int) -> None:
    cutoff = datetime.now(UTC).replace(microsecond=500_000) - timedelta(days=90)
    # six older than the cutoff (down to one microsecond), four at or after it
    ages = [timedelta(days=400), timedelta(days=91), timedelta(hours=1), timedelta(seconds=1),
            timedelta(milliseconds=1), timedelta(microseconds=1)]
    keeps = [timedelta(0), -timedelta(microseconds=1), -timedelta(days=60), -timedelta(days=89)]
    old = [_event(cutoff - age, n) for n, age in enumerate(ages)]
    new = [_event(cutoff - age, 100 + n) for n, age in enumerate(keeps)]
    for event in old + new:
        await any_store.import_audit(event)
    dep = await _deployment(any_store)
    await any_store.transition(dep, "succeeded")  # a live audit row, written now

    assert await any_store.prune_audit(cutoff, batch_size=batch_size) == len(old)
    left = await any_store.list_audit(limit=0)
    (live,) = [e for e in left if e.deployment == "prod/Service/api#1"]
    assert {e.id for e in left} == {e.id for e in new} | {live.id}
    assert sorted(e.at for e in left if e is not live) == sorted(e.at for e in new)
    assert await any_store.prune_audit(cutoff, batch_size=batch_size) == 0
    assert len(await any_store.list_audit(limit=0)) == len(new) + 1


async def test_prune_audit_on_an_empty_trail_and_bad_batch(any_store: Store) -> None:
    assert await any_store.prune_audit(datetime.now(UTC)) == 0
    with pytest.raises(StoreError, match="batch_size"):
        await any_store.prune_audit(datetime.now(UTC), batch_size=0)


async def test_prune_audit_removes_a_backlog_larger_than_one_batch(any_store: Store) -> None:
    now = datetime.now(UTC)
    for n in range(25):
        await any_store.import_audit(_event(now - timedelta(days=200, minutes=n), n))
    await any_store.import_audit(_event(now - timedelta(days=10), 99))
    assert await any_store.prune_audit(now - timedelta(days=90), batch_size=4) == 25
    (kept,) = await any_store.list_audit(limit=0)
    assert kept.revision == "r99"


def test_retention_setting() -> None:
    assert parse_retention("90d") == parse_retention("90") == timedelta(days=90)
    assert parse_retention("720h") == timedelta(days=30)
    assert parse_retention(" 1.5d ") == timedelta(days=1, hours=12)
    assert parse_retention("0") is None and parse_retention("0d") is None
    for bad in ("", "-1d", "ninety", "90 days"):
        with pytest.raises(ValueError, match="audit retention"):
            parse_retention(bad)


@pytest.mark.timeout(120)
def test_db_prune_audit_command(db_url: str, tmp_path: Path) -> None:
    """`reconciler db prune-audit` through the real CLI, on each backend."""

    def cli(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "reconciler", "--db", db_url, "--state-dir",
             str(tmp_path / "state"), "--log-format", "text", *args],
            capture_output=True, text=True, timeout=60,
            env={**os.environ, "RECONCILER_AUDIT_RETENTION": "", **env})

    async def seed() -> None:
        store = open_store(db_url)
        try:
            await store.migrate()
            now = datetime.now(UTC)
            for n, days in enumerate((400, 120, 45, 20, 1)):
                await store.import_audit(_event(now - timedelta(days=days), n))
        finally:
            await store.close()

    async def trail() -> list[AuditRecord]:
        store = open_store(db_url)
        try:
            return await store.list_audit(limit=0)
        finally:
            await store.close()

    asyncio.run(seed())
    kept = cli("db", "prune-audit", "--older-than", "0")
    assert kept.returncode == 0 and "kept forever" in kept.stdout, kept.stderr
    assert [e.revision for e in asyncio.run(trail())] == ["r4", "r3", "r2", "r1", "r0"]
    bad = cli("db", "prune-audit", "--older-than", "a while")
    assert bad.returncode == 2 and "--older-than" in bad.stderr

    default = cli("db", "prune-audit")  # 90 days
    assert default.returncode == 0 and "deleted 2 audit event(s)" in default.stdout, default
    from_env = cli("db", "prune-audit", RECONCILER_AUDIT_RETENTION="30")
    assert from_env.returncode == 0 and "deleted 1 audit event(s)" in from_env.stdout
    # the pruning is itself audited, as the CLI user (and kept: it is new)
    second, first, *rest = asyncio.run(trail())
    assert [e.revision for e in rest] == ["r4", "r3"]
    assert [(e.action, e.outcome, e.actor.startswith("cli:")) for e in (second, first)] == [
        ("prune-audit", "succeeded", True)] * 2
    assert second.message is not None and second.message.startswith("deleted 1 audit event")
    assert first.message is not None and first.message.startswith("deleted 2 audit event")
