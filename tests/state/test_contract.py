"""The Store contract, run on SQLite, PostgreSQL and MariaDB alike (each test: its own database).

What one backend does, the others must do too: CRUD on every table, journal transitions,
concurrent writers, rollback of a failed transaction, migration idempotency and checksum
refusal, unicode and large values, leases.
"""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from reconciler.errors import MigrationError, NotFound, StoreError
from reconciler.spec.model import ResourceKey
from reconciler.state import Store, open_store
from reconciler.state.migrations import default_sql_dir, discover
from reconciler.state.store import (
    DEPLOYMENT_STATUSES,
    TRANSITIONS,
    TransitionError,
)
from tests.state.backends import columns_of, dialect_of, raw_query

pytestmark = pytest.mark.timeout(60)

API = ResourceKey("prod", "Service", "api")
SPEC = {"kind": "Service", "spec": {"image": "registry.local/api:1.2", "replicas": 2,
                                    "env": {"TOKEN": {"env": "API_TOKEN"}}}}


# -- resources --------------------------------------------------------------------------------

async def test_resource_lifecycle(any_store: Store) -> None:
    assert await any_store.list_resources() == []
    assert await any_store.get_resource(API) is None
    before = datetime.now(UTC) - timedelta(seconds=1)
    created = await any_store.record_desired(API, revision="r1", spec_hash="h1", spec=SPEC,
                                             config_commit="c1")
    assert created.key == API and len(created.id) == 36
    assert (created.desired_revision, created.desired_hash, created.desired_spec) == (
        "r1", "h1", SPEC)
    assert created.sync_status == "OutOfSync" and created.health_status == "Unknown"
    assert created.suspended is False and created.deleted is False
    assert created.updated_at is not None and created.updated_at > before
    assert created.updated_at.tzinfo is not None and created.updated_at.utcoffset() == timedelta(0)

    await any_store.record_applied(API, revision="r1", spec_hash="h1", spec=SPEC,
                                   config_commit=None)
    record = await any_store.get_resource(API)
    assert record is not None
    assert (record.applied_revision, record.applied_spec, record.sync_status) == (
        "r1", SPEC, "Synced")
    assert record.config_commit == "c1"  # None kept the known commit
    again = await any_store.record_desired(API, revision="r1", spec_hash="h1", spec=SPEC,
                                           config_commit="c1")
    assert again.sync_status == "Synced" and again.id == created.id

    moved = await any_store.record_desired(API, revision="r2", spec_hash="h2", spec={"v": 2},
                                           config_commit="c2")
    assert moved.sync_status == "OutOfSync" and moved.id == created.id

    await any_store.update_status(API, health_status="Degraded", last_result="rolled_back",
                                  last_error="health gate failed", failed_revision="r2")
    record = await any_store.get_resource(API)
    assert record is not None
    assert (record.health_status, record.last_result, record.last_error,
            record.failed_revision) == ("Degraded", "rolled_back", "health gate failed", "r2")
    await any_store.update_status(API, last_result=None, last_error=None)
    record = await any_store.get_resource(API)
    assert record is not None and record.last_result is None and record.last_error is None
    with pytest.raises(StoreError):
        await any_store.update_status(API, health_status="Fine")
    with pytest.raises(StoreError):
        await any_store.update_status(API, owner="me")

    await any_store.set_suspended(API, True)
    record = await any_store.get_resource(API)
    assert record is not None and record.suspended is True
    await any_store.set_suspended(API, False)
    with pytest.raises(NotFound):
        await any_store.set_suspended(ResourceKey("prod", "Service", "typo"), True)

    await any_store.mark_deleted(API)
    assert await any_store.list_resources() == []
    hidden = await any_store.list_resources(include_deleted=True)
    assert [r.key for r in hidden] == [API] and hidden[0].deleted
    revived = await any_store.record_desired(API, revision="r3", spec_hash="h3", spec={},
                                             config_commit=None)
    assert revived.deleted is False and revived.id == created.id


async def test_update_status_creates_a_bare_row_and_listing_is_ordered(any_store: Store) -> None:
    keys = [ResourceKey("b", "Service", "x"), ResourceKey("a", "Job", "z"),
            ResourceKey("a", "Job", "y"), ResourceKey("a", "Service", "a")]
    for key in keys:
        await any_store.update_status(key, health_status="Missing")
    listed = await any_store.list_resources()
    assert [r.key for r in listed] == sorted(keys, key=lambda k: (k.environment, k.kind, k.name))
    assert {r.health_status for r in listed} == {"Missing"}
    assert all(r.desired_revision is None for r in listed)


# -- deployment journal -----------------------------------------------------------------------

async def _deploy(store: Store, key: ResourceKey = API, to: str = "r1", **kw: Any) -> str:
    d = await store.create_deployment(key, from_revision=None, to_revision=to,
                                      config_commit="c", trigger="commit", strategy="rolling",
                                      **kw)
    return d.id


async def test_deployment_journal(any_store: Store) -> None:
    first = await any_store.create_deployment(
        API, from_revision=None, to_revision="r1", config_commit="c1", trigger="commit",
        strategy="rolling", spec=SPEC)
    assert first.identifier == "prod/Service/api#1" and first.status == "pending"
    assert first.spec == SPEC and first.created_at is not None
    assert [e.status for e in first.events] == ["pending"] and first.steps == []
    assert (await any_store.get_resource(API)) is not None  # bare row made for the journal

    await any_store.transition(first.id, "in_progress", message="starting")
    step1 = await any_store.start_step(first.id, "pull", "host-1", detail="image api:1.2")
    step2 = await any_store.start_step(first.id, "restart", "host-1")
    await any_store.finish_step(step1, "succeeded")
    await any_store.finish_step(step2, "failed", detail="exit 3")
    with pytest.raises(StoreError, match="already finished"):
        await any_store.finish_step(step2, "succeeded")
    with pytest.raises(StoreError):
        await any_store.finish_step(step1, "started")
    with pytest.raises(NotFound):
        await any_store.finish_step("00000000-0000-4000-8000-000000000000", "failed")
    with pytest.raises(NotFound):
        await any_store.finish_step("not-a-uuid", "failed")
    await any_store.transition(first.id, "failed", error="restart failed", output="log\n",
                               exit_code=3)
    await any_store.transition(first.id, "rolled_back", message="back to nothing")

    got = await any_store.get_deployment(first.id)
    assert got is not None
    assert got.status == "rolled_back"
    assert (got.error, got.output, got.exit_code) == ("restart failed", "log\n", 3)
    assert [e.status for e in got.events] == ["pending", "in_progress", "failed", "rolled_back"]
    assert [e.message for e in got.events] == [None, "starting", None, "back to nothing"]
    assert [(s.seq, s.action, s.status, s.detail) for s in got.steps] == [
        (1, "pull", "succeeded", "image api:1.2"), (2, "restart", "failed", "exit 3")]
    assert all(s.finished_at is not None for s in got.steps)
    assert got.started_at is not None and got.finished_at is not None
    assert got.finished_at >= got.started_at >= got.created_at  # type: ignore[operator]
    assert await any_store.get_deployment("prod/Service/api#1") == got
    assert await any_store.get_deployment("prod/Service/api#9") is None
    assert await any_store.get_deployment("00000000-0000-4000-8000-000000000000") is None

    second = await _deploy(any_store, to="r2")
    await any_store.transition(second, "in_progress")
    await any_store.transition(second, "succeeded")
    third = await _deploy(any_store, to="r3")
    other = await _deploy(any_store, ResourceKey("prod", "Job", "etl"), to="j1")

    history = await any_store.list_deployments(API)
    assert [d.identifier for d in history] == [f"prod/Service/api#{n}" for n in (3, 2, 1)]
    assert [d.identifier for d in await any_store.list_deployments(API, limit=2)] == [
        "prod/Service/api#3", "prod/Service/api#2"]
    everything = await any_store.list_deployments(limit=0)
    assert [d.id for d in everything] == [other, third, second, first.id]
    unfinished = await any_store.unfinished_deployments()
    assert [d.id for d in unfinished] == [third, other]
    good = await any_store.last_good(API)
    assert good is not None and good.id == second
    assert await any_store.last_good(ResourceKey("prod", "Job", "etl")) is None
    with pytest.raises(NotFound):
        await any_store.transition("00000000-0000-4000-8000-000000000000", "in_progress")
    with pytest.raises(TransitionError):
        await any_store.transition(third, "paused")


async def test_every_transition_is_checked(any_store: Store) -> None:
    """Each (from, to) pair: allowed exactly when TRANSITIONS says so."""
    paths = {"pending": [], "in_progress": ["in_progress"], "failed": ["in_progress", "failed"],
             "succeeded": ["in_progress", "succeeded"], "cancelled": ["cancelled"]}
    for start, path in paths.items():
        for target in DEPLOYMENT_STATUSES:
            deployment = await _deploy(any_store, ResourceKey("t", "Job", f"{start}-{target}"))
            for status in path:
                await any_store.transition(deployment, status)
            if target in TRANSITIONS.get(start, frozenset()):
                await any_store.transition(deployment, target)
                got = await any_store.get_deployment(deployment)
                assert got is not None and got.status == target
            else:
                with pytest.raises(TransitionError):
                    await any_store.transition(deployment, target)


async def test_database_refuses_illegal_transition_written_by_hand(
    any_store: Store, db_url: str
) -> None:
    deployment = await _deploy(any_store)
    await any_store.transition(deployment, "in_progress")
    await any_store.transition(deployment, "succeeded")
    with pytest.raises(Exception, match="illegal deployment status transition"):
        raw_query(db_url, "UPDATE tb_deployment SET status = 'pending' WHERE id = %s",
                  (deployment,))
    got = await any_store.get_deployment(deployment)
    assert got is not None and got.status == "succeeded"


# -- concurrency and transactions ----------------------------------------------------------------

async def test_concurrent_writers_number_deployments_without_gaps(
    any_store: Store, any_second: Store
) -> None:
    async def writer(store: Store, tag: str) -> None:
        for i in range(15):
            deployment = await store.create_deployment(
                API, from_revision=None, to_revision=f"{tag}{i}", config_commit=None,
                trigger=tag, strategy="rolling")
            await store.transition(deployment.id, "in_progress")
            await store.start_step(deployment.id, "act", tag)
            await store.start_step(deployment.id, "act2", tag)
            await store.record_desired(API, revision=f"{tag}{i}", spec_hash="h", spec={},
                                       config_commit=None)

    await asyncio.gather(writer(any_store, "a"), writer(any_second, "b"), writer(any_store, "c"))
    history = await any_store.list_deployments(API, limit=0)
    assert sorted(d.identifier for d in history) == sorted(
        f"prod/Service/api#{n}" for n in range(1, 46))
    assert all([s.seq for s in d.steps] == [1, 2] for d in history)
    assert all([e.status for e in d.events] == ["pending", "in_progress"] for d in history)


async def test_concurrent_acquire_has_exactly_one_winner(
    any_store: Store, any_second: Store, db_url: str
) -> None:
    third = open_store(db_url)
    try:
        stores = [any_store, any_second, third]
        for round_ in range(10):
            results = await asyncio.gather(*(
                s.acquire_lock(f"race-{round_}", f"owner-{i}", 30) for i, s in enumerate(stores)
            ))
            assert sum(results) == 1, results
            winner = f"owner-{results.index(True)}"
            assert await third.lock_owner(f"race-{round_}") == winner
    finally:
        await third.close()


async def test_failed_transaction_leaves_nothing(any_store: Store, db_url: str) -> None:
    """A write that fails half-way (here: the deployment insert, after the resource row was
    made in the same transaction) rolls back entirely."""
    dialect = dialect_of(db_url)
    too_long = "x" * 300 if dialect == "mysql" else "\x00"  # VARCHAR(255) / NUL in text
    if dialect == "sqlite":
        # SQLite accepts both; make the step insert fail on an unknown deployment instead
        with pytest.raises(NotFound):
            await any_store.start_step("00000000-0000-4000-8000-000000000000", "a", "b")
        sqlite_store: Any = any_store

        def half_then_fail() -> None:
            with sqlite_store._write():
                sqlite_store._ensure_resource(API, "2026-01-01T00:00:00+00:00")
                raise RuntimeError("boom")

        with pytest.raises(RuntimeError, match="boom"):
            await sqlite_store._run(half_then_fail)
    else:
        with pytest.raises(StoreError):
            await any_store.create_deployment(API, from_revision=None, to_revision=too_long,
                                              config_commit=None, trigger="t", strategy="s")
    assert await any_store.list_resources(include_deleted=True) == []
    assert raw_query(db_url, "SELECT COUNT(*) FROM tb_deployment") == [(0,)]
    # the store is still usable afterwards
    assert await _deploy(any_store)


# -- leases and deliveries -----------------------------------------------------------------------

async def test_leases(any_store: Store, any_second: Store) -> None:
    assert await any_store.list_locks() == []
    assert await any_store.acquire_lock("reconcile", "replica-1", 30) is True
    assert await any_second.acquire_lock("reconcile", "replica-2", 30) is False
    assert await any_second.lock_owner("reconcile") == "replica-1"
    first = (await any_store.list_locks())[0]
    await asyncio.sleep(0.02)
    assert await any_store.acquire_lock("reconcile", "replica-1", 60) is True  # renew
    renewed = (await any_second.list_locks())[0]
    assert renewed.acquired_at == first.acquired_at and renewed.expires_at > first.expires_at
    assert timedelta(seconds=59) < renewed.expires_at - renewed.acquired_at < timedelta(
        seconds=62)
    await any_second.release_lock("reconcile", "replica-2")  # not the owner: no effect
    assert await any_store.lock_owner("reconcile") == "replica-1"
    await any_store.release_lock("reconcile", "replica-1")
    assert await any_store.lock_owner("reconcile") is None
    assert await any_second.acquire_lock("reconcile", "replica-2", 30) is True
    # the clock leases are judged by: the server's, or this host's for SQLite (~ now here)
    from datetime import UTC, datetime
    assert abs((await any_store.database_now() - datetime.now(UTC)).total_seconds()) < 5
    # several at once, one query: only the held, unexpired ones
    assert await any_store.acquire_lock("signal:abort:x", "cli", 30) is True
    assert await any_store.acquire_lock("signal:promote:x", "gone", 0.01) is True
    await asyncio.sleep(0.05)
    assert await any_second.lock_owners(
        ["reconcile", "signal:abort:x", "signal:promote:x", "never"]) == {
        "reconcile": "replica-2", "signal:abort:x": "cli"}
    assert await any_second.lock_owners([]) == {}
    await any_store.release_lock("signal:abort:x", "cli")
    await any_store.release_lock("signal:promote:x", "gone")

    # expiry: a short lease of a "dead" owner is taken over after its TTL
    assert await any_store.acquire_lock("resource:prod/Service/api", "dead", 0.3) is True
    assert await any_second.acquire_lock("resource:prod/Service/api", "alive", 30) is False
    await asyncio.sleep(0.4)
    assert await any_store.lock_owner("resource:prod/Service/api") is None
    assert [lock.owner for lock in await any_store.list_locks()] == ["replica-2", "dead"]
    assert await any_second.acquire_lock("resource:prod/Service/api", "alive", 30) is True
    taken = next(lock for lock in await any_store.list_locks() if lock.owner == "alive")
    assert taken.acquired_at > first.acquired_at
    assert await any_store.acquire_lock("resource:prod/Service/api", "dead", 30) is False
    with pytest.raises(StoreError):
        await any_store.acquire_lock("x", "me", 0)


async def test_webhook_deliveries(any_store: Store, any_second: Store) -> None:
    assert await any_store.record_delivery("github", "72d3162e-cc78-11e3") is True
    assert await any_second.record_delivery("github", "72d3162e-cc78-11e3") is False
    assert await any_store.record_delivery("gitea", "72d3162e-cc78-11e3") is True
    assert await any_store.record_delivery("github", "ünïcode-☃-🍓") is True
    assert await any_store.record_delivery("github", "ünïcode-☃-🍓") is False
    results = await asyncio.gather(*(s.record_delivery("gitlab", "same")
                                     for s in (any_store, any_second, any_store)))
    assert sorted(results) == [False, False, True]
    prune: Any = any_store
    assert await prune.prune_deliveries(datetime.now(UTC) + timedelta(seconds=5)) == 4
    assert await any_store.record_delivery("github", "72d3162e-cc78-11e3") is True


# -- values ------------------------------------------------------------------------------------

async def test_unicode_and_large_values(any_store: Store) -> None:
    key = ResourceKey("prød", "Service", "api-ünï-🍓")
    spec = {"name": "日本語 ✓ 🍓", "quote": "it's \"quoted\" \\ back", "nested": {
        "list": list(range(2000)), "blob": "é" * 200_000}}
    record = await any_store.record_desired(key, revision="ü1", spec_hash="h", spec=spec,
                                            config_commit=None)
    assert record.desired_spec == spec and record.key == key
    output = ("line ☃ " * 10 + "\n") * 40_000  # ~3.2 MB of UTF-8 output
    deployment = await any_store.create_deployment(
        key, from_revision=None, to_revision="ü1", config_commit=None, trigger="commit",
        strategy="rolling", spec=spec)
    await any_store.transition(deployment.id, "in_progress", message="démarrage 🚀")
    await any_store.transition(deployment.id, "failed", output=output,
                               error="échec: ✗ " * 1000)
    got = await any_store.get_deployment(deployment.id)
    assert got is not None
    assert got.output == output and got.error == "échec: ✗ " * 1000
    assert got.spec == spec and got.events[1].message == "démarrage 🚀"
    assert got.identifier == "prød/Service/api-ünï-🍓#1"
    assert (await any_store.get_resource(key)) == record.__class__(**{
        **record.__dict__, "updated_at": (await any_store.get_resource(key)).updated_at,  # type: ignore[union-attr]
    })


# -- schema and migrations ---------------------------------------------------------------------

async def test_migrations_are_idempotent(any_store: Store, db_url: str) -> None:
    dialect = dialect_of(db_url)
    files = discover(default_sql_dir(dialect))
    status = await any_store.migration_status()
    assert [(m.version, m.name) for m in status] == [(f.version, f.name) for f in files]
    assert all(m.applied_at is not None for m in status)
    assert [m.checksum for m in status] == [f.checksum for f in files]
    assert await any_store.migrate() == []
    again = open_store(db_url)
    try:
        assert await again.migrate() == []
    finally:
        await again.close()
    assert raw_query(db_url, "SELECT COUNT(*) FROM tb_schema_migration") == [(len(files),)]


async def test_edited_applied_migration_is_refused(db_url: str, any_sql_copy: Path) -> None:
    store = open_store(db_url, sql_dir=any_sql_copy)
    try:
        assert len(await store.migrate()) == len(discover(any_sql_copy))
        first = sorted(any_sql_copy.glob("*.sql"))[0]
        first.write_text(first.read_text() + "\n-- edited\n")
        with pytest.raises(MigrationError, match="changed after it was applied"):
            await store.migrate()
        with pytest.raises(MigrationError, match="changed after it was applied"):
            await store.migration_status()
        # CRLF checkouts are not edits
        first.write_text(first.read_text().replace("\n-- edited\n", ""))
        first.write_bytes(first.read_bytes().replace(b"\n", b"\r\n"))
        assert await store.migrate() == []
    finally:
        await store.close()


async def test_new_migration_is_pending_then_applied(db_url: str, any_sql_copy: Path) -> None:
    store = open_store(db_url, sql_dir=any_sql_copy)
    try:
        await store.migrate()
        (any_sql_copy / "900_note.sql").write_text(
            "-- a later change; 'quotes; and semicolons' in comments and strings\n"
            "CREATE TABLE tb_note (pk_note INTEGER PRIMARY KEY, body VARCHAR(100));\n"
            "INSERT INTO tb_note (pk_note, body) VALUES (1, 'a; b');\n"
        )
        pending = [m for m in await store.migration_status() if m.applied_at is None]
        assert [(m.version, m.name) for m in pending] == [(900, "note")]
        assert [(m.version, m.name) for m in await store.migrate()] == [(900, "note")]
        assert raw_query(db_url, "SELECT body FROM tb_note") == [("a; b",)]
    finally:
        await store.close()


VIEWS = ("v_resource", "v_deployment", "v_deployment_event", "v_deployment_step", "v_lock",
         "v_webhook_delivery", "v_resource_status", "v_deployment_history", "v_notification")


async def test_views_are_valid_and_hide_internal_keys(any_store: Store, db_url: str) -> None:
    deployment = await _deploy(any_store)
    await any_store.transition(deployment, "in_progress")
    await any_store.start_step(deployment, "act", "host")
    await any_store.transition(deployment, "succeeded")
    await any_store.acquire_lock("l", "o", 10)
    await any_store.record_delivery("github", "d")
    await any_store.claim_notice("operator1:json", "commits", "refused", "m1", 60)
    for view in VIEWS:
        rows = raw_query(db_url, f"SELECT * FROM {view}")
        assert len(rows) == (3 if view == "v_deployment_event" else 1), view
        columns = columns_of(db_url, view)
        assert "id" in columns and "identifier" in columns, (view, columns)
        assert not [c for c in columns if c.startswith(("pk_", "fk_"))], (view, columns)
    status = raw_query(db_url, "SELECT identifier, last_deployment, last_deployment_status "
                               "FROM v_resource_status")
    assert status == [("prod/Service/api", "prod/Service/api#1", "succeeded")]
    (duration,) = raw_query(db_url, "SELECT duration_seconds FROM v_deployment_history")[0]
    assert 0 <= float(duration) < 10


async def test_native_types_and_foreign_keys(any_store: Store, db_url: str) -> None:
    dialect = dialect_of(db_url)
    if dialect == "sqlite":
        rows = raw_query(db_url, "SELECT COUNT(*) FROM pragma_foreign_key_list('tb_deployment')")
        assert rows == [(1,)]
        return
    if dialect == "postgresql":
        types = dict(raw_query(db_url, """
            SELECT column_name || '@' || table_name, data_type FROM information_schema.columns
            WHERE table_schema = 'public' AND table_name LIKE 'tb\\_%%'"""))
        assert types["id@tb_resource"] == "uuid"
        assert types["created_at@tb_deployment"] == "timestamp with time zone"
        assert types["spec@tb_deployment"] == "jsonb"
        identity = raw_query(db_url, "SELECT is_identity FROM information_schema.columns "
                                     "WHERE table_name = 'tb_deployment' "
                                     "AND column_name = 'pk_deployment'")
        assert identity == [("YES",)]
    else:
        tables = raw_query(db_url, "SELECT table_name, engine, table_collation "
                                   "FROM information_schema.tables WHERE table_schema = "
                                   "DATABASE() AND table_type = 'BASE TABLE' "
                                   "AND table_name LIKE 'tb\\_%%'")
        assert {engine for _, engine, _ in tables} == {"InnoDB"}
        assert all(collation.startswith("utf8mb4") for _, _, collation in tables)
        types = dict(raw_query(db_url, """
            SELECT CONCAT(column_name, '@', table_name), column_type
            FROM information_schema.columns WHERE table_schema = DATABASE()"""))
        assert types["id@tb_resource"] == "char(36)"
        assert types["created_at@tb_deployment"] == "datetime(6)"
        assert types["spec@tb_deployment"] in ("json", "longtext")  # MariaDB: JSON = LONGTEXT
        assert "auto_increment" in raw_query(
            db_url, "SELECT extra FROM information_schema.columns WHERE table_schema = "
                    "DATABASE() AND table_name = 'tb_deployment' "
                    "AND column_name = 'pk_deployment'")[0][0]
    # real foreign keys: a deployment pointing at no resource is refused by the server
    with pytest.raises(Exception, match=r"(?i)foreign key"):
        raw_query(db_url, "INSERT INTO tb_deployment (id, identifier, fk_resource, seq, "
                          "to_revision, \"trigger\", strategy, created_at) VALUES "
                          "('00000000-0000-4000-8000-000000000001', 'x#1', 999, 1, 'r', 't', "
                          "'s', '2026-01-01 00:00:00')".replace(
                              '"trigger"', "`trigger`" if dialect == "mysql" else '"trigger"'))


async def test_closed_store_refuses_calls(db_url: str) -> None:
    store = open_store(db_url)
    await store.migrate()
    await store.close()
    with pytest.raises(StoreError, match="closed"):
        await store.list_resources()
    await store.close()  # twice is fine


async def test_light_listing_leaves_specs_out(any_store: Store) -> None:
    await any_store.record_desired(API, revision="r1", spec_hash="h1", spec=SPEC,
                                   config_commit="c1")
    await any_store.record_applied(API, revision="r1", spec_hash="h1", spec=SPEC,
                                   config_commit="c1")
    full = await any_store.list_resources()
    light = await any_store.list_resources(with_specs=False)
    assert full[0].desired_spec == SPEC and full[0].applied_spec == SPEC
    assert light[0].desired_spec is None and light[0].applied_spec is None
    assert light[0].__dict__ | {"desired_spec": SPEC, "applied_spec": SPEC} == full[0].__dict__


async def test_plan_listing_gives_what_a_plan_reads_of_every_resource(any_store: Store) -> None:
    keys = [ResourceKey("prod", "Service", n) for n in ("b", "a", "é", "c", "gone")]
    for n, key in enumerate(keys):
        await any_store.record_desired(key, revision=f"r{n}", spec_hash="h", spec={"n": n},
                                       config_commit="c1")
    await any_store.record_applied(keys[0], revision="r0", spec_hash="h", spec={"n": 0},
                                   config_commit="c1")
    await any_store.update_status(keys[1], last_result="rolled_back", failed_revision="r1")
    await any_store.set_suspended(keys[2], True)
    await any_store.mark_deleted(keys[4])
    light = await any_store.list_resources(with_specs=False)
    planned = await any_store.plan_listing()
    fields = ("key", "id", "applied_revision", "failed_revision", "last_result", "suspended",
              "deleted")
    assert ([tuple(getattr(r, f) for f in fields) for r in planned]
            == [tuple(getattr(r, f) for f in fields) for r in light])  # same order, no deleted
    assert [r.key.name for r in planned] == ["a", "b", "c", "é"]
    by_name = {r.key.name: r for r in planned}
    assert by_name["b"].applied_revision == "r0" and by_name["a"].failed_revision == "r1"
    assert by_name["a"].last_result == "rolled_back" and by_name["é"].suspended
    assert by_name["b"].desired_spec is None and by_name["b"].applied_spec is None


async def test_get_resources_reads_the_full_records_of_many_keys(any_store: Store) -> None:
    from reconciler.state.rows import KEYS_PER_QUERY

    keys = [ResourceKey("prod", "Service", f"s{i:04d}") for i in range(KEYS_PER_QUERY + 3)]
    for n, key in enumerate(keys):
        await any_store.record_desired(key, revision=f"r{n}", spec_hash="h", spec={"n": n},
                                       config_commit="c1")
    await any_store.record_applied(keys[1], revision="r1", spec_hash="h", spec={"n": 1},
                                   config_commit="c1")
    gone = ResourceKey("prod", "Service", "never-recorded")
    asked = [*reversed(keys), keys[0], gone]  # more than one IN (…), a repeat, one unknown
    found = await any_store.get_resources(asked)
    assert sorted(found) == sorted(keys)
    for key in (keys[0], keys[1], keys[-1]):
        assert found[key] == await any_store.get_resource(key)  # the same full record
    assert found[keys[1]].applied_spec == {"n": 1} and found[keys[-1]].desired_spec == {
        "n": len(keys) - 1}
    assert await any_store.get_resources([]) == {}


async def test_listings_sort_by_code_point_on_every_backend(any_store: Store) -> None:
    names = ["b", "B", "a", "é", "Z", "_x", "a-b", "a_b", "10", "9"]
    for name in names:
        await any_store.update_status(ResourceKey("prod", "Service", name), health_status="Missing")
        await any_store.acquire_lock(f"lock-{name}", "me", 30)
    assert [r.key.name for r in await any_store.list_resources()] == sorted(names)
    assert [lock.name for lock in await any_store.list_locks()] == sorted(
        f"lock-{n}" for n in names)


async def test_mark_observed_records_when_health_was_seen(any_store: Store) -> None:
    api, web = ResourceKey("prod", "Service", "api"), ResourceKey("prod", "Service", "web")
    for key in (api, web):
        await any_store.record_desired(key, revision="r1", spec_hash="h1", spec={"a": 1},
                                       config_commit=None)
    before = datetime.now(UTC)
    assert all(r.health_observed_at is None
               for r in await any_store.list_resources(with_specs=False))
    await any_store.mark_observed([api], "Healthy")
    await any_store.mark_observed([web])
    await any_store.mark_observed([ResourceKey("prod", "Service", "gone")], "Degraded")
    records = {r.key: r for r in await any_store.list_resources(with_specs=False)}
    assert records[api].health_status == "Healthy"
    assert records[web].health_status == "Unknown"  # only the time, as asked
    for key in (api, web):
        seen = records[key].health_observed_at
        assert seen is not None and abs((seen - before).total_seconds()) < 30
    one = await any_store.get_resource(api)
    assert one is not None and one.health_observed_at == records[api].health_observed_at
    with pytest.raises(StoreError):
        await any_store.mark_observed([api], "Fine")
