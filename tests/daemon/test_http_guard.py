"""The connection guard with small limits, on real loopback sockets: who is evicted, who is
refused, and that refusals are summarised rather than logged one by one."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from collections.abc import AsyncIterator
from dataclasses import dataclass

import pytest
from aiohttp import web

from reconciler.daemon.http_guard import (
    AcceptErrorFilter,
    ConnectionGuard,
    HttpLimits,
    RefusalLog,
)
from reconciler.observe.metrics import HTTP_REFUSED

pytestmark = pytest.mark.timeout(30)
PARTIAL = b"GET /slow HTTP/1.1\r\nHost: x\r\nX-Slow: "


@dataclass
class Front:
    guard: ConnectionGuard
    port: int
    release: asyncio.Event


@pytest.fixture
async def front() -> AsyncIterator[Front]:
    release = asyncio.Event()

    async def ok(_: web.Request) -> web.Response:
        return web.Response(text="ok")

    async def busy(_: web.Request) -> web.Response:
        await release.wait()
        return web.Response(text="done")

    limits = HttpLimits(max_connections=6, max_connections_per_peer=3, header_timeout=1.0,
                        idle_timeout=1.0, log_interval=0.2)
    guard = ConnectionGuard(limits, soft_limit=65536, open_fds=20)
    app = web.Application(middlewares=[guard.middleware()])
    app.router.add_get("/ok", ok)
    app.router.add_get("/busy", busy)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    assert runner.server is not None
    loop = asyncio.get_running_loop()
    server = await loop.create_server(guard.factory(runner.server), "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        yield Front(guard, port, release)
    finally:
        release.set()
        server.close()
        await runner.cleanup()
        guard.refusals.close()


async def half_open(port: int, source: str) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port, local_addr=(source, 0))
    writer.write(PARTIAL)
    await writer.drain()
    return reader, writer


async def get(port: int, path: str, source: str = "127.0.0.1") -> bytes:
    reader, writer = await asyncio.open_connection("127.0.0.1", port, local_addr=(source, 0))
    writer.write(f"GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode())
    try:
        return await asyncio.wait_for(reader.read(), 5)
    finally:
        writer.close()


def refused(reason: str) -> float:
    return HTTP_REFUSED.labels(reason)._value.get()


async def test_a_peer_holding_its_slots_with_half_requests_loses_the_oldest(front: Front) -> None:
    before = refused("evicted")
    held = [await half_open(front.port, "127.0.0.2") for _ in range(3)]
    await asyncio.sleep(0.05)
    assert front.guard.connections == 3
    answer = await get(front.port, "/ok", source="127.0.0.2")  # the same peer, a 4th slot
    assert answer.startswith(b"HTTP/1.1 200") and answer.endswith(b"ok")
    assert await asyncio.wait_for(held[0][0].read(), 2) == b""  # the oldest was closed
    assert refused("evicted") == before + 1
    for _, writer in held:
        writer.close()


async def test_total_cap_evicts_across_peers_and_refuses_when_all_are_busy(front: Front) -> None:
    held = [await half_open(front.port, f"127.0.0.{3 + i % 3}") for i in range(6)]
    await asyncio.sleep(0.05)
    assert (await get(front.port, "/ok")).endswith(b"ok")  # evicts one of the six
    for _, writer in held:
        writer.close()
    await asyncio.sleep(0.1)
    # six connections inside a request: nothing may be evicted, the seventh is refused
    busy = [asyncio.create_task(get(front.port, "/busy", f"127.0.0.{6 + i % 3}"))
            for i in range(6)]
    await asyncio.sleep(0.2)
    before = refused("connections")
    assert (await get(front.port, "/ok", "127.0.0.9")).startswith(b"HTTP/1.1 503")
    assert refused("connections") == before + 1
    front.release.set()
    assert all(answer.endswith(b"done") for answer in await asyncio.gather(*busy))


def lowest_free_fd() -> int:
    fd = os.open(os.devnull, os.O_RDONLY)
    os.close(fd)
    return fd


async def test_past_the_descriptor_line_the_oldest_idle_connection_makes_room(
        front: Front) -> None:
    """The daemon's own descriptors grew (git, SSH, asyncio's accept batches): a new socket is
    numbered past the line. A half-open peer loses its oldest connection, not the health probe;
    only when nothing is idle is the newcomer closed. A CI machine under load reset 1 probe in
    4 flood runs while 1,800 idle half-open connections were kept."""
    held = [await half_open(front.port, "127.0.0.11") for _ in range(2)]
    await asyncio.sleep(0.05)
    assert front.guard.connections == 2
    front.guard.fd_ceiling = lowest_free_fd()  # every socket from now on is past the line
    evicted, reserve = refused("evicted"), refused("fd_reserve")
    answer = await get(front.port, "/ok")
    assert answer.startswith(b"HTTP/1.1 200") and answer.endswith(b"ok"), answer
    assert await asyncio.wait_for(held[0][0].read(), 2) == b""  # the oldest made room
    assert (refused("evicted"), refused("fd_reserve")) == (evicted + 1, reserve)
    for _, writer in held:
        writer.close()
    await asyncio.sleep(0.1)
    assert front.guard.connections == 0
    front.guard.fd_ceiling = lowest_free_fd()  # the closed ones' descriptors are free again
    with contextlib.suppress(ConnectionResetError):  # nothing idle to close: the newcomer goes
        assert await get(front.port, "/ok") == b""
    assert refused("fd_reserve") == reserve + 1


async def test_headers_not_complete_in_time_are_cut_off(front: Front) -> None:
    before = refused("header_timeout")
    reader, writer = await half_open(front.port, "127.0.0.10")
    assert await asyncio.wait_for(reader.read(), 3) == b""
    assert refused("header_timeout") == before + 1
    writer.close()


async def test_refusals_are_one_summary_line_per_interval(
        caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="reconciler.daemon.http")
    refusals = RefusalLog(interval=0.1)
    accept_errors = AcceptErrorFilter(refusals)
    asyncio_log = logging.getLogger("asyncio")
    asyncio_log.addFilter(accept_errors)
    try:
        for _ in range(500):
            refusals.note("connections", "127.0.0.2")
            asyncio_log.error("socket.accept() out of system resource\nsocket: <fd=9>")
        asyncio_log.error("some other asyncio error")
    finally:
        asyncio_log.removeFilter(accept_errors)
    await asyncio.sleep(0.3)
    summaries = [r for r in caplog.records if r.name == "reconciler.daemon.http"]
    assert len(summaries) == 1
    assert summaries[0].counts == {"connections": 500, "accept_failed": 500}  # type: ignore[attr-defined]
    assert [r.getMessage() for r in caplog.records if r.name == "asyncio"] == [
        "some other asyncio error"]
