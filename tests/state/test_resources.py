"""Resources through the Store interface, on a real SQLite file."""

from __future__ import annotations

import sqlite3
import uuid
from datetime import UTC, datetime

import pytest

from reconciler.errors import NotFound, StoreError
from reconciler.spec.model import ResourceKey, spec_hash
from reconciler.state.sqlite import SQLiteStore

SPEC = {"kind": "Service", "spec": {"image": "registry.local/api:1.2", "replicas": 2}}


async def test_new_store_has_no_resources(store: SQLiteStore, api: ResourceKey) -> None:
    assert await store.list_resources() == []
    assert await store.get_resource(api) is None


async def test_record_desired_creates_then_updates(store: SQLiteStore, api: ResourceKey) -> None:
    before = datetime.now(UTC)
    created = await store.record_desired(
        api, revision="r1", spec_hash="h1", spec=SPEC, config_commit="c1"
    )
    assert created.key == api
    uuid.UUID(created.id)  # a real UUID
    assert (created.desired_revision, created.desired_hash) == ("r1", "h1")
    assert created.desired_spec == SPEC
    assert created.config_commit == "c1"
    assert created.applied_revision is None
    assert created.sync_status == "OutOfSync"
    assert created.health_status == "Unknown"
    assert created.suspended is False and created.deleted is False
    assert created.updated_at is not None and created.updated_at >= before
    assert created.updated_at.tzinfo is not None

    updated = await store.record_desired(
        api, revision="r2", spec_hash="h2", spec={"x": 1}, config_commit="c2"
    )
    assert updated.id == created.id  # same row
    assert (updated.desired_revision, updated.desired_hash, updated.desired_spec) == (
        "r2", "h2", {"x": 1},
    )
    assert updated.config_commit == "c2"
    assert updated.updated_at is not None and created.updated_at is not None
    assert updated.updated_at > created.updated_at
    assert await store.get_resource(api) == updated


async def test_record_applied_and_sync_status(store: SQLiteStore, api: ResourceKey) -> None:
    await store.record_desired(api, revision="r1", spec_hash="h1", spec=SPEC, config_commit="c1")
    await store.record_applied(api, revision="r1", spec_hash="h1", spec=SPEC, config_commit="c1")
    record = await store.get_resource(api)
    assert record is not None
    assert (record.applied_revision, record.applied_hash, record.applied_spec) == ("r1", "h1", SPEC)
    assert record.sync_status == "Synced"

    # git moves on: out of sync until the new revision is applied
    record = await store.record_desired(
        api, revision="r2", spec_hash="h2", spec={"v": 2}, config_commit="c2"
    )
    assert record.sync_status == "OutOfSync"
    await store.record_applied(
        api, revision="r2", spec_hash="h2", spec={"v": 2}, config_commit=None
    )
    record = await store.get_resource(api)
    assert record is not None
    assert record.sync_status == "Synced"
    assert record.config_commit == "c2"  # None does not erase the known commit


async def test_rollback_apply_keeps_failed_revision(store: SQLiteStore, api: ResourceKey) -> None:
    await store.record_desired(api, revision="r2", spec_hash="h2", spec=SPEC, config_commit="c2")
    await store.update_status(api, failed_revision="r2", last_result="rolled_back")
    await store.record_applied(api, revision="r1", spec_hash="h1", spec=SPEC, config_commit="c1")
    record = await store.get_resource(api)
    assert record is not None
    assert record.failed_revision == "r2"
    assert record.applied_revision == "r1"
    assert record.sync_status == "OutOfSync"


async def test_record_applied_creates_unknown_resource(store: SQLiteStore) -> None:
    key = ResourceKey("default", "Job", "etl")
    await store.record_applied(key, revision="r1", spec_hash="h", spec={}, config_commit=None)
    record = await store.get_resource(key)
    assert record is not None
    assert record.applied_revision == "r1" and record.desired_revision is None


async def test_update_status_fields(store: SQLiteStore, api: ResourceKey) -> None:
    await store.record_desired(api, revision="r1", spec_hash="h1", spec=SPEC, config_commit="c1")
    await store.update_status(
        api,
        sync_status="Synced",
        health_status="Degraded",
        last_result="failed",
        last_error="health check: 503 from /healthz",
        failed_revision="r1",
    )
    record = await store.get_resource(api)
    assert record is not None
    assert record.sync_status == "Synced"
    assert record.health_status == "Degraded"
    assert record.last_result == "failed"
    assert record.last_error == "health check: 503 from /healthz"
    assert record.failed_revision == "r1"
    # clearing works too
    await store.update_status(api, last_error=None, failed_revision=None)
    record = await store.get_resource(api)
    assert record is not None
    assert record.last_error is None and record.failed_revision is None
    assert record.health_status == "Degraded"  # untouched fields stay


@pytest.mark.parametrize(
    "fields",
    [
        {"sync_status": "Whatever"},
        {"health_status": "Fine"},
        {"last_result": "done"},
        {"desired_revision": "r9"},  # not a status field
        {"suspended": True},  # has its own method
    ],
)
async def test_update_status_refuses_bad_fields(
    store: SQLiteStore, api: ResourceKey, fields: dict[str, object]
) -> None:
    await store.record_desired(api, revision="r1", spec_hash="h1", spec=SPEC, config_commit="c1")
    with pytest.raises(StoreError):
        await store.update_status(api, **fields)
    record = await store.get_resource(api)
    assert record is not None and record.desired_revision == "r1"


async def test_suspend_or_delete_unknown_resource_is_not_found(store: SQLiteStore) -> None:
    ghost = ResourceKey("prod", "Service", "ghost")
    with pytest.raises(NotFound):
        await store.set_suspended(ghost, True)
    with pytest.raises(NotFound):
        await store.mark_deleted(ghost)
    assert await store.list_resources(include_deleted=True) == []


async def test_update_status_records_an_unseen_resource(store: SQLiteStore) -> None:
    # e.g. blocked on a missing Target before it was ever deployed: status must show it
    new = ResourceKey("prod", "Service", "blocked")
    await store.update_status(new, sync_status="OutOfSync", last_error="target web is missing")
    record = await store.get_resource(new)
    assert record is not None
    assert (record.sync_status, record.last_error) == ("OutOfSync", "target web is missing")
    assert record.desired_revision is None and record.applied_revision is None


async def test_suspend_and_resume(store: SQLiteStore, api: ResourceKey) -> None:
    await store.record_desired(api, revision="r1", spec_hash="h1", spec=SPEC, config_commit="c1")
    await store.set_suspended(api, True)
    record = await store.get_resource(api)
    assert record is not None and record.suspended is True
    await store.set_suspended(api, False)
    record = await store.get_resource(api)
    assert record is not None and record.suspended is False


async def test_mark_deleted_hides_and_record_desired_revives(
    store: SQLiteStore, api: ResourceKey
) -> None:
    other = ResourceKey("prod", "Target", "web")
    await store.record_desired(api, revision="r1", spec_hash="h1", spec=SPEC, config_commit="c1")
    await store.record_desired(other, revision="r1", spec_hash="h", spec={}, config_commit="c1")
    await store.mark_deleted(api)
    assert [r.key for r in await store.list_resources()] == [other]
    everything = await store.list_resources(include_deleted=True)
    assert [(r.key, r.deleted) for r in everything] == [(api, True), (other, False)]
    revived = await store.record_desired(
        api, revision="r3", spec_hash="h3", spec=SPEC, config_commit="c3"
    )
    assert revived.deleted is False


async def test_list_resources_sorted_by_identity(store: SQLiteStore) -> None:
    keys = [
        ResourceKey("staging", "Service", "b"),
        ResourceKey("prod", "Target", "a"),
        ResourceKey("prod", "Service", "z"),
        ResourceKey("default", "Job", "m"),
    ]
    for key in keys:
        await store.record_desired(key, revision="r", spec_hash="h", spec={}, config_commit=None)
    assert [r.key for r in await store.list_resources()] == sorted(keys)


async def test_same_name_in_other_environment_or_kind_is_another_resource(
    store: SQLiteStore,
) -> None:
    a = ResourceKey("prod", "Service", "api")
    b = ResourceKey("staging", "Service", "api")
    c = ResourceKey("prod", "Job", "api")
    ids = set()
    for key in (a, b, c):
        ids.add((await store.record_desired(
            key, revision="r", spec_hash="h", spec={}, config_commit=None
        )).id)
    assert len(ids) == 3


async def test_unicode_and_large_values_round_trip(store: SQLiteStore) -> None:
    key = ResourceKey("prod-é", "Service", "api-🚀-日本")
    big_text = "ü" * 1_000_000  # 2 MB of UTF-8
    spec = {
        "command": ["echo", "héllo wörld ✓", "引号\"'`$(x)"],
        "blob": "x" * 1_048_576,
        "nested": {"ключ": "значение", "emoji": "🎉", "nul": "a\u0000b"},
    }
    record = await store.record_desired(
        key, revision="r-ü", spec_hash=spec_hash(spec), spec=spec, config_commit="c"
    )
    assert record.desired_spec == spec
    await store.update_status(key, last_error=big_text)
    again = await store.get_resource(key)
    assert again is not None
    assert again.key == key
    assert again.desired_spec == spec
    assert again.last_error == big_text


async def test_spec_is_stored_as_canonical_json(store: SQLiteStore, api: ResourceKey) -> None:
    await store.record_desired(
        api, revision="r1", spec_hash="h1", spec={"b": 1, "a": "é"}, config_commit=None
    )
    conn = sqlite3.connect(store.path)
    try:
        (text,) = conn.execute("SELECT desired_spec FROM tb_resource").fetchone()
    finally:
        conn.close()
    assert text == '{"a":"é","b":1}'


async def test_identifier_is_the_key_text(store: SQLiteStore, api: ResourceKey) -> None:
    await store.record_desired(api, revision="r1", spec_hash="h1", spec={}, config_commit=None)
    conn = sqlite3.connect(store.path)
    try:
        row = conn.execute("SELECT identifier, environment, kind, name FROM v_resource").fetchone()
    finally:
        conn.close()
    assert row == ("prod/Service/api", "prod", "Service", "api")
