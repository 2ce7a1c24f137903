"""Real loopback receivers for notification tests: an SMTP server (aiosmtpd) and an aiohttp
server that records every request and checks it against the documented payload shapes."""

from __future__ import annotations

import asyncio
import contextlib
import email
import json
from dataclasses import dataclass, field
from email.message import Message as Email
from typing import Any

from aiohttp import web
from aiosmtpd.controller import Controller

from tests.helpers import free_port


class Mailbox:
    def __init__(self) -> None:
        self.messages: list[Email] = []
        self.received = asyncio.Event()
        self.loop = asyncio.get_running_loop()

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        self.messages.append(email.message_from_bytes(envelope.content))
        self.loop.call_soon_threadsafe(self.received.set)
        return "250 OK"


@dataclass
class Hit:
    path: str
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


@dataclass
class Receiver:
    """Answers ``status`` (or hangs when ``hang``) and records every request."""

    hits: list[Hit] = field(default_factory=list)
    status: int = 200
    hang: float = 0.0
    port: int = 0
    runner: web.AppRunner | None = None
    arrived: asyncio.Event = field(default_factory=asyncio.Event)
    released: asyncio.Event = field(default_factory=asyncio.Event)  # ends a hang at stop()

    async def handle(self, request: web.Request) -> web.Response:
        self.hits.append(Hit(request.path, dict(request.headers), await request.read()))
        self.arrived.set()
        if self.hang:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.released.wait(), self.hang)
        if request.path.startswith("/api/webhooks/") and self.status == 200:
            return web.Response(status=204)  # Discord answers 204 No Content
        return web.Response(status=self.status, text="ok" if self.status == 200 else "boom")

    async def start(self) -> Receiver:
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self.handle)
        self.runner = web.AppRunner(app)
        await self.runner.setup()
        self.port = free_port()
        await web.TCPSite(self.runner, "127.0.0.1", self.port).start()
        return self

    async def stop(self) -> None:
        self.released.set()
        if self.runner is not None:
            await self.runner.cleanup()

    def of(self, prefix: str) -> list[Hit]:
        return [h for h in self.hits if h.path.startswith(prefix)]


def smtp_server(mailbox: Mailbox) -> Controller:
    controller = Controller(mailbox, hostname="127.0.0.1", port=free_port())
    controller.start()
    return controller
