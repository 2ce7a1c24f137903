"""A real HTTP server on 127.0.0.1 whose answers a test scripts."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import pytest
from aiohttp import web

from tests.helpers import free_port as free_port  # re-exported: tests import it from here


@dataclass
class ScriptedServer:
    port: int
    # (status, body) answered in order; when used up, `default` forever
    script: list[tuple[int, str]] = field(default_factory=list)
    default: tuple[int, str] = (200, "ok")
    hits: int = 0

    def url(self, path: str = "/healthz") -> str:
        return f"http://{{host}}:{self.port}{path}"


@pytest.fixture
async def server() -> AsyncIterator[ScriptedServer]:
    state = ScriptedServer(port=0)

    async def healthz(_request: web.Request) -> web.Response:
        state.hits += 1
        status, body = state.script.pop(0) if state.script else state.default
        return web.Response(status=status, text=body)

    async def slow(_request: web.Request) -> web.Response:
        await asyncio.sleep(10)
        return web.Response(text="late")

    async def redirect(_request: web.Request) -> web.Response:
        raise web.HTTPFound("/healthz")

    app = web.Application()
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/slow", slow)
    app.router.add_get("/redirect", redirect)
    runner = web.AppRunner(app, shutdown_timeout=0.1)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    sockets = site._server.sockets  # type: ignore[union-attr]
    state.port = sockets[0].getsockname()[1]
    try:
        yield state
    finally:
        await runner.cleanup()
