"""Connection loss and server restarts: the store reconnects with backoff, retries the write and
loses (or doubles) no record. PostgreSQL is really stopped and started (a server of the test's own:
stopping the shared one would fail every other test using it at that moment); MariaDB connections
are killed server-side (restarting the shared MariaDB would disturb every other test for longer)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from reconciler.observe.metrics import DB_ERRORS
from reconciler.spec.model import ResourceKey
from reconciler.state import Store, open_store
from tests.helpers import need
from tests.state.backends import available, raw_query, throwaway_url
from tests.state.private_postgresql import PrivatePostgreSQL

KEY = ResourceKey("prod", "Service", "api")


async def _write_deployments(store: Store, count: int, done: list[str]) -> None:
    for i in range(count):
        deployment = await store.create_deployment(
            KEY, from_revision=None, to_revision=f"r{i}", config_commit=None, trigger="commit",
            strategy="rolling")
        await store.transition(deployment.id, "in_progress")
        step = await store.start_step(deployment.id, "act", "host")
        await store.finish_step(step, "succeeded")
        await store.transition(deployment.id, "succeeded")
        done.append(deployment.identifier)
        await asyncio.sleep(0.02)


def _assert_journal_complete(url: str, count: int) -> None:
    rows = raw_query(url, "SELECT identifier, status FROM v_deployment ORDER BY seq")
    assert [r[0] for r in rows] == [f"prod/Service/api#{i}" for i in range(1, count + 1)]
    assert {r[1] for r in rows} == {"succeeded"}
    assert raw_query(url, "SELECT COUNT(*) FROM tb_deployment_event") == [(3 * count,)]
    assert raw_query(url, "SELECT COUNT(*) FROM tb_deployment_step "
                          "WHERE status = 'succeeded'") == [(count,)]


@pytest.mark.timeout(150)
async def test_postgresql_restart_loses_no_write(private_postgresql: PrivatePostgreSQL) -> None:
    count = 40
    server = private_postgresql
    url = server.url
    store = open_store(url)
    await store.migrate()
    errors_before = DB_ERRORS._value.get()
    done: list[str] = []
    try:
        writer = asyncio.create_task(_write_deployments(store, count, done))
        while len(done) < 8 and not writer.done():
            await asyncio.sleep(0.01)
        stopped_at = time.monotonic()
        try:
            await asyncio.to_thread(server.stop, "fast")
            during_outage = len(done)
            await asyncio.sleep(1.5)  # the writer is backing off meanwhile
            assert len(done) == during_outage  # nothing can be written while it is down
        finally:
            await asyncio.to_thread(server.start)
        await asyncio.wait_for(writer, timeout=90)
        recovered_in = time.monotonic() - stopped_at
    finally:
        await store.close()
    print(f"PostgreSQL stop/start: writer finished {recovered_in:.1f} s after the stop")
    assert len(done) == count
    assert DB_ERRORS._value.get() > errors_before  # failed attempts were counted
    _assert_journal_complete(url, count)


@pytest.mark.timeout(120)
async def test_mysql_killed_connections_lose_no_write(tmp_path: Path, mysql_url: str) -> None:
    count = 40
    url = mysql_url
    database = url.rsplit("/", 1)[1]
    store = open_store(url)
    await store.migrate()
    done: list[str] = []
    kills = 0
    try:
        writer = asyncio.create_task(_write_deployments(store, count, done))
        while not writer.done():
            await asyncio.sleep(0.4)
            ids = raw_query(url, "SELECT id FROM information_schema.processlist "
                                 "WHERE db = %s AND id <> CONNECTION_ID()", (database,))
            for (connection_id,) in ids:
                try:
                    raw_query(url, f"KILL CONNECTION {int(connection_id)}")
                    kills += 1
                except Exception:  # it may have gone already
                    continue
        await writer
    finally:
        await store.close()
    assert kills >= 3, kills
    assert len(done) == count
    _assert_journal_complete(url, count)


def lost_connection(backend: str, postgresql_message: str) -> Callable[[], Exception]:
    """What the backend's driver raises when its connection broke (skips a missing backend)."""
    ok, reason = available(backend)
    need(ok, reason)
    if backend == "postgresql":
        import psycopg

        return lambda: psycopg.OperationalError(postgresql_message)
    import pymysql

    return lambda: pymysql.err.OperationalError(2013, "Lost connection to server during query")


@pytest.mark.parametrize("backend", ["postgresql", "mysql"])
async def test_lost_commit_acknowledgement_does_not_write_twice(
    backend: str, tmp_path: Path
) -> None:
    """The connection dies right after COMMIT reached the server, so the client cannot know
    whether it took: the retry must find the committed write instead of repeating it."""
    from contextlib import asynccontextmanager
    from typing import Any

    lost = lost_connection(backend, "server closed the connection unexpectedly")

    with throwaway_url(backend, tmp_path) as url:
        store: Any = open_store(url)
        await store.migrate()
        real = store._connection
        armed = {"on": False}

        @asynccontextmanager
        async def acknowledgement_lost(*, transaction: bool, read_only: bool = False) -> Any:
            async with real(transaction=transaction, read_only=read_only) as tx:
                yield tx
            if armed["on"]:  # the work is committed; the client only sees an error
                armed["on"] = False
                raise lost()

        store._connection = acknowledgement_lost
        try:
            armed["on"] = True
            deployment = await store.create_deployment(
                KEY, from_revision=None, to_revision="r1", config_commit=None,
                trigger="commit", strategy="rolling")
            armed["on"] = True
            await store.transition(deployment.id, "in_progress")
            armed["on"] = True
            step = await store.start_step(deployment.id, "act", "host")
            armed["on"] = True
            await store.finish_step(step, "succeeded")
            armed["on"] = True
            assert await store.record_delivery("github", "d-1") is True  # new, though retried
            armed["on"] = True
            assert await store.acquire_lock("lease", "me", 30) is True
            assert armed["on"] is False  # every call above really lost its first answer
        finally:
            await store.close()
        assert raw_query(url, "SELECT identifier, status FROM v_deployment") == [
            ("prod/Service/api#1", "in_progress")]
        assert raw_query(url, "SELECT status FROM v_deployment_event ORDER BY seq") == [
            ("pending",), ("in_progress",)]
        assert raw_query(url, "SELECT status FROM v_deployment_step") == [("succeeded",)]
        assert raw_query(url, "SELECT COUNT(*) FROM tb_webhook_delivery") == [(1,)]


@pytest.mark.timeout(60)
@pytest.mark.parametrize("backend", ["postgresql", "mysql"])
async def test_a_cancelled_call_is_not_retried_when_the_driver_raises_over_the_cancel(
    backend: str, tmp_path: Path
) -> None:
    """A call cancelled while its connection is busy (a lease renewal when its rollout ends):
    the driver's cleanup on that connection may fail and raise over the CancelledError. That
    error looks like a lost connection, but the caller gave up: no retry, the cancel stands
    (a renewal that retried returned normally and went on renewing a finished rollout's lease
    forever)."""
    from contextlib import asynccontextmanager
    from typing import Any

    lost = lost_connection(backend, "another command is already in progress")

    with throwaway_url(backend, tmp_path) as url:
        store: Any = open_store(url)
        await store.migrate()
        real = store._connection
        busy = asyncio.Event()
        calls = {"n": 0}

        @asynccontextmanager
        async def busy_then_broken(*, transaction: bool, read_only: bool = False) -> Any:
            calls["n"] += 1
            async with real(transaction=transaction, read_only=read_only) as tx:
                if calls["n"] == 1:
                    busy.set()
                    try:
                        await asyncio.sleep(30)  # the statement waits (a lock, a slow server)
                    except asyncio.CancelledError:
                        raise lost() from None  # the cleanup fails, over the cancel
                yield tx

        store._connection = busy_then_broken
        try:
            renewal = asyncio.create_task(store.acquire_lock("lease", "me", 30))
            await asyncio.wait_for(busy.wait(), 10)
            renewal.cancel()
            with pytest.raises(asyncio.CancelledError):
                await asyncio.wait_for(renewal, 10)
            assert calls["n"] == 1  # not retried
        finally:
            await store.close()
