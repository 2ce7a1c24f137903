"""Operator signals (rollout/control.py) on a real SQLite store: a rollout starts clean — every
signal of its resource is dropped, and only of its resource."""

from __future__ import annotations

from pathlib import Path

import pytest

from reconciler.rollout import control
from reconciler.spec.model import ResourceKey
from reconciler.state import default_db_url, open_store

pytestmark = pytest.mark.timeout(30)


async def test_clear_drops_every_signal_of_the_resource_only(tmp_path: Path) -> None:
    store = open_store(default_db_url(tmp_path))
    await store.migrate()
    api, web = ResourceKey("prod", "Service", "api"), ResourceKey("prod", "Service", "web")
    try:
        await control.send(store, api, control.PROMOTE, "alice")
        await control.send(store, api, control.ABORT, "bob")
        await control.send(store, web, control.PROMOTE, "carol")
        await control.clear(store, api)
        assert [await control.pending(store, api, v) for v in control.VERBS] == [None] * 3
        assert await control.pending(store, web, control.PROMOTE) == "carol"
        assert await control.consume(store, web, control.PROMOTE) == "carol"
        assert await control.pending(store, web, control.PROMOTE) is None
    finally:
        await store.close()
