"""Leases and webhook delivery de-duplication, including two connections on one file."""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from reconciler.errors import StoreError
from reconciler.state.sqlite import SQLiteStore


@pytest.fixture
async def second(store: SQLiteStore) -> AsyncIterator[SQLiteStore]:
    """Another store (its own connection and thread) on the same file."""
    other = SQLiteStore(store.path)
    yield other
    await other.close()


def lock_row(path: str, name: str) -> tuple[str, str, str] | None:
    conn = sqlite3.connect(path)
    try:
        return conn.execute(
            "SELECT owner, acquired_at, expires_at FROM v_lock WHERE name = ?", (name,)
        ).fetchone()
    finally:
        conn.close()


async def test_lock_contention_and_release(store: SQLiteStore, second: SQLiteStore) -> None:
    assert await store.acquire_lock("reconcile", "daemon-1", 30) is True
    assert await second.acquire_lock("reconcile", "cli-2", 30) is False
    assert await store.acquire_lock("other-lock", "cli-2", 30) is True  # names are independent
    # releasing someone else's lock does nothing
    await second.release_lock("reconcile", "cli-2")
    assert await second.acquire_lock("reconcile", "cli-2", 30) is False
    await store.release_lock("reconcile", "daemon-1")
    assert await second.acquire_lock("reconcile", "cli-2", 30) is True
    assert await store.acquire_lock("reconcile", "daemon-1", 30) is False


async def test_renewal_keeps_acquired_at_and_extends_expiry(store: SQLiteStore) -> None:
    assert await store.acquire_lock("reconcile", "me", 5)
    first = lock_row(store.path, "reconcile")
    assert first is not None
    await asyncio.sleep(0.01)
    assert await store.acquire_lock("reconcile", "me", 60)
    renewed = lock_row(store.path, "reconcile")
    assert renewed is not None
    assert renewed[0] == "me"
    assert renewed[1] == first[1]  # acquired_at kept
    expires = datetime.fromisoformat(renewed[2])
    assert expires > datetime.fromisoformat(first[2])
    assert expires - datetime.now(UTC) > timedelta(seconds=50)


async def test_expired_lease_can_be_taken_over(store: SQLiteStore, second: SQLiteStore) -> None:
    assert await store.acquire_lock("reconcile", "crashed", 0.2)
    assert await second.acquire_lock("reconcile", "new", 30) is False
    await asyncio.sleep(0.3)
    assert await second.acquire_lock("reconcile", "new", 30) is True
    row = lock_row(store.path, "reconcile")
    assert row is not None and row[0] == "new"
    taken_at = datetime.fromisoformat(row[1])
    assert datetime.now(UTC) - taken_at < timedelta(seconds=5)  # a fresh acquired_at
    assert await store.acquire_lock("reconcile", "crashed", 30) is False


async def test_lock_ttl_must_be_positive(store: SQLiteStore) -> None:
    with pytest.raises(StoreError):
        await store.acquire_lock("reconcile", "me", 0)


async def test_concurrent_acquire_has_exactly_one_winner(
    store: SQLiteStore, second: SQLiteStore
) -> None:
    third = SQLiteStore(store.path)
    try:
        stores = [store, second, third]
        results = await asyncio.gather(
            *(s.acquire_lock("race", f"owner-{i}", 30) for i, s in enumerate(stores))
        )
    finally:
        await third.close()
    assert sorted(results) == [False, False, True]


async def test_record_delivery_detects_replays(store: SQLiteStore, second: SQLiteStore) -> None:
    assert await store.record_delivery("github", "72d3162e-cc78-11e3-81ab-4c9367dc0958") is True
    assert await store.record_delivery("github", "72d3162e-cc78-11e3-81ab-4c9367dc0958") is False
    assert await second.record_delivery("github", "72d3162e-cc78-11e3-81ab-4c9367dc0958") is False
    # the same id from another provider is another delivery
    assert await store.record_delivery("gitea", "72d3162e-cc78-11e3-81ab-4c9367dc0958") is True
    assert await store.record_delivery("github", "ünïcode-☃") is True
    assert await store.record_delivery("github", "ünïcode-☃") is False


async def test_prune_deliveries(store: SQLiteStore) -> None:
    assert await store.record_delivery("github", "old")
    cutoff = datetime.now(UTC) + timedelta(seconds=1)
    assert await store.prune_deliveries(cutoff) == 1
    assert await store.record_delivery("github", "old") is True  # forgotten


async def test_closed_store_refuses_calls(tmp_path: Path) -> None:
    s = SQLiteStore(tmp_path / "x.db")
    await s.migrate()
    await s.close()
    await s.close()  # idempotent
    with pytest.raises(StoreError, match="closed"):
        await s.record_delivery("github", "1")


async def test_list_locks_lets_recovery_release_a_dead_owners_lease(
    store: SQLiteStore, second: SQLiteStore
) -> None:
    assert await store.list_locks() == []
    assert await store.acquire_lock("resource:prod/Service/api", "host:4242", 3600)
    assert await store.acquire_lock("a-first", "host:1", 10)
    locks = await second.list_locks()
    assert [(lk.name, lk.owner) for lk in locks] == [
        ("a-first", "host:1"), ("resource:prod/Service/api", "host:4242"),
    ]
    api_lock = locks[1]
    assert api_lock.expires_at - api_lock.acquired_at == timedelta(seconds=3600)
    assert api_lock.acquired_at.tzinfo is not None
    # a restarted process knows host:4242 is gone and frees its lease by the recorded owner
    await second.release_lock(api_lock.name, api_lock.owner)
    assert await second.acquire_lock("resource:prod/Service/api", "host:5000", 60)


async def test_lock_owner(store: SQLiteStore, second: SQLiteStore) -> None:
    assert await store.lock_owner("reconcile") is None
    assert await store.acquire_lock("reconcile", "host:1", 0.2)
    assert await second.lock_owner("reconcile") == "host:1"
    await asyncio.sleep(0.3)
    assert await second.lock_owner("reconcile") is None  # expired: nobody holds it
    assert await second.acquire_lock("reconcile", "host:2", 30)
    assert await store.lock_owner("reconcile") == "host:2"
    await second.release_lock("reconcile", "host:2")
    assert await store.lock_owner("reconcile") is None
