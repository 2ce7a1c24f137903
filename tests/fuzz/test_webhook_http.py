"""Fuzzing the daemon's webhook route over real HTTP on loopback (aiohttp test server on
127.0.0.1), with the delivery register of a real SQLite store.

Properties: every request gets a clean answer (200, 202, 400, 401 or 404 with a JSON body,
never a 5xx or a dropped connection); 401 exactly when the signature does not verify; and a
rejected request (any 4xx) records no delivery and triggers nothing.
"""

from __future__ import annotations

import asyncio
import logging
import sqlite3
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from hypothesis import given
from hypothesis import strategies as st

from reconciler.daemon.webhook_routes import RateLimit, WebhookConfig, webhook_routes
from reconciler.source.webhooks import PROVIDERS, WebhookEvent
from reconciler.state import open_store
from reconciler.state.store import Store
from tests.fuzz.conftest import fuzz
from tests.fuzz.test_webhooks import WATCHED, expected_to_verify
from tests.fuzz.webhook_cases import SECRETS, Delivery, deliveries, samples_present
from tests.helpers import need


@dataclass
class Server:
    loop: asyncio.AbstractEventLoop
    client: TestClient
    store: Store
    db: Path
    pushed: list[WebhookEvent] = field(default_factory=list)

    def deliveries(self) -> int:
        with sqlite3.connect(self.db) as connection:
            (count,) = connection.execute("SELECT count(*) FROM tb_webhook_delivery").fetchone()
        return int(count)

    def post(self, path: str, body: bytes, headers: Any) -> tuple[int, Any]:
        async def send() -> tuple[int, Any]:
            async with asyncio.timeout(10):
                response = await self.client.post(path, data=body, headers=headers)
                return response.status, await response.json()

        return self.loop.run_until_complete(send())


@pytest.fixture(scope="module")
def server() -> Iterator[Server]:
    need(samples_present(), "contracts/webhooks not found (set FRAISIER_CONTRACTS)")
    # one warning per rejected request would dominate the run time under pytest's log capture
    logger = logging.getLogger("reconciler.daemon.webhooks")
    level = logger.level
    logger.setLevel(logging.ERROR)
    loop = asyncio.new_event_loop()
    with tempfile.TemporaryDirectory(prefix="fuzz-webhook-") as tmp:
        db = Path(tmp) / "state.db"
        store = open_store(f"sqlite:///{db}")
        loop.run_until_complete(store.migrate())
        pushed: list[WebhookEvent] = []

        async def on_push(event: WebhookEvent) -> str:
            pushed.append(event)
            return f"rc-{len(pushed)}"

        config = WebhookConfig(
            secrets=SECRETS,
            repo_urls=WATCHED,
            branches=("master", "main", "develop"),
            rate_limit=RateLimit(per_second=1e9, burst=10**9),  # not what is fuzzed here
            peer_rate_limit=RateLimit(per_second=1e9, burst=10**9),
        )
        app = web.Application()
        app.add_routes(webhook_routes(config, on_push, store.record_delivery))

        async def start() -> TestClient:
            client = TestClient(TestServer(app, host="127.0.0.1"))
            await client.start_server()
            return client

        client = loop.run_until_complete(start())
        try:
            yield Server(loop, client, store, db, pushed)
        finally:
            loop.run_until_complete(client.close())
            loop.run_until_complete(store.close())
            loop.close()
            logger.setLevel(level)


def _clean(value: str) -> str:
    """What an HTTP client can send in a header value at all (RFC 9110: no control character
    but tab)."""
    return "".join(c for c in value if (c >= " " or c == "\t") and c != "\x7f")


PATHS = st.one_of(
    st.sampled_from(PROVIDERS),
    st.sampled_from(["GitHub", "GITLAB", "forgejo", "gogs", "unknown", "github%20", "x" * 100]),
)


@fuzz()
@given(data=st.data(), provider=st.sampled_from(PROVIDERS), path=PATHS)
def test_webhook_route(server: Server, data: Any, provider: str, path: str) -> None:
    delivery: Delivery = data.draw(deliveries(provider))
    if data.draw(st.integers(0, 4)):
        path = provider  # mostly the right route
    headers = [(name, _clean(value)) for name, value in delivery.headers.items()]
    before_deliveries, before_pushed = server.deliveries(), len(server.pushed)

    status, body = server.post(f"/webhooks/{path}", delivery.body, headers)

    assert status in (200, 202, 400, 401, 404), (status, body)
    assert isinstance(body, dict) and isinstance(body.get("status"), str)
    known = path.lower() in PROVIDERS
    if not known:
        assert status == 404
    if known and path.lower() == provider:
        sent = Delivery(provider, delivery.body, type(delivery.headers)(headers), delivery.tampered)
        assert (status == 401) == (not expected_to_verify(sent)), (status, body)
    if status >= 400:
        assert server.deliveries() == before_deliveries, "a rejected request recorded a delivery"
        assert len(server.pushed) == before_pushed, "a rejected request triggered a reconcile"
    if status == 202:
        assert len(server.pushed) > before_pushed
        assert body.get("reconcile_id")
    else:
        assert len(server.pushed) == before_pushed
