"""The SQLite store's light listing (what every no-op pass reads) is read again only when the
database changed: the same records while nothing was written, and every write shows at once —
this connection's own, another store's on the same file (another process, as the CLI beside
the daemon), and a plain sqlite3 connection's."""

from __future__ import annotations

import sqlite3
from pathlib import Path

from reconciler.spec.model import ResourceKey
from reconciler.state.sqlite import SQLiteStore

A = ResourceKey("prod", "Service", "a")
B = ResourceKey("prod", "Service", "b")


async def statuses(store: SQLiteStore) -> dict[str, str]:
    return {r.key.name: r.sync_status for r in await store.list_resources(with_specs=False)}


async def test_light_listing_is_reused_until_the_database_changes(tmp_path: Path) -> None:
    path = tmp_path / "state.db"
    store, other = SQLiteStore(path), SQLiteStore(path)
    try:
        await store.migrate()
        for key in (A, B):
            await store.record_desired(key, revision="r1", spec_hash="h1", spec={"x": 1},
                                       config_commit="c1")
        first = await store.list_resources(with_specs=False)
        again = await store.list_resources(with_specs=False)
        assert first == again and first is not again
        assert all(x is y for x, y in zip(first, again, strict=True))  # not read again

        assert await statuses(store) == {"a": "OutOfSync", "b": "OutOfSync"}

        await store.update_status(A, sync_status="Synced")  # this connection
        assert await statuses(store) == {"a": "Synced", "b": "OutOfSync"}

        await other.update_status(B, sync_status="Unknown")  # another connection
        assert await statuses(store) == {"a": "Synced", "b": "Unknown"}

        with sqlite3.connect(path) as raw:  # not through a store at all
            raw.execute("UPDATE tb_resource SET deleted = 1 WHERE name = 'a'")
        assert await statuses(store) == {"b": "Unknown"}
        assert {r.key.name for r in await store.list_resources(include_deleted=True,
                                                                with_specs=False)} == {"a", "b"}
        assert await statuses(store) == {"b": "Unknown"}
    finally:
        await store.close()
        await other.close()
