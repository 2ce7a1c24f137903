"""One HTTP/1.1 exchange on its own connection, against real sockets on loopback."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager

import h11
import pytest

from reconciler.transport.http1 import NoResponse, Response, exchange

pytestmark = pytest.mark.timeout(30)

Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


@asynccontextmanager
async def server(handler: Handler) -> AsyncIterator[int]:
    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            await handler(reader, writer)
        finally:
            writer.close()

    listening = await asyncio.start_server(serve, "127.0.0.1", 0)
    try:
        yield listening.sockets[0].getsockname()[1]
    finally:
        listening.close()
        await listening.wait_closed()


async def head_of(reader: asyncio.StreamReader) -> bytes:
    return await reader.readuntil(b"\r\n\r\n")


async def ask(port: int, method: str = "GET", body: bytes = b"", *,
              body_limit: int | None = None, head_only: bool = False) -> Response:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        return await exchange(reader, writer, method, "/v1/x?a=1",
                              [("Host", "docker"), ("Connection", "close")], body,
                              body_limit=body_limit, head_only=head_only)
    finally:
        writer.close()


async def test_a_post_body_goes_with_its_length_and_the_answer_comes_back() -> None:
    seen: dict[str, bytes] = {}

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        seen["head"] = await head_of(reader)
        seen["body"] = await reader.readexactly(7)
        writer.write(b"HTTP/1.1 201 Created\r\nContent-Type: application/json\r\n"
                     b"Content-Length: 11\r\n\r\n{\"Id\":\"ab\"}")
        await writer.drain()

    async with server(handler) as port:
        answer = await ask(port, "POST", b'{"a":1}')
    assert seen["head"].startswith(b"POST /v1/x?a=1 HTTP/1.1\r\n")
    assert b"content-length: 7\r\n" in seen["head"].lower()
    assert seen["body"] == b'{"a":1}'
    assert (answer.status, answer.body) == (201, b'{"Id":"ab"}')
    assert answer.header("CONTENT-TYPE") == "application/json"
    assert answer.header("x-absent") == ""


async def test_a_body_without_length_ends_where_the_peer_closes() -> None:
    # dockerd's answer to an exec start without Upgrade: raw frames until the command ends
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await head_of(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: application/vnd.docker.raw-stream\r\n\r\n")
        for part in (b"one ", b"two ", b"three"):
            writer.write(part)
            await writer.drain()
            await asyncio.sleep(0.01)

    async with server(handler) as port:
        answer = await ask(port)
    assert (answer.status, answer.body) == (200, b"one two three")


async def test_an_informational_answer_is_skipped_and_the_body_cut_at_its_limit() -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await head_of(reader)
        writer.write(b"HTTP/1.1 100 Continue\r\n\r\n"
                     b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\n0123456789")
        await writer.drain()

    async with server(handler) as port:
        assert (await ask(port, body_limit=4)).body == b"0123"
        head = await ask(port, head_only=True)
    assert (head.status, head.body) == (200, b"")


async def test_a_peer_that_closes_without_answering() -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await head_of(reader)

    async with server(handler) as port:
        with pytest.raises(NoResponse):
            await ask(port)


async def test_an_answer_cut_short_or_not_http_is_a_protocol_error() -> None:
    async def short(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await head_of(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nonly this")
        await writer.drain()

    async def other(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await head_of(reader)
        writer.write(b"SSH-2.0-OpenSSH_9.2\r\n\r\n")
        await writer.drain()

    for handler in (short, other):
        async with server(handler) as port:
            with pytest.raises(h11.RemoteProtocolError):
                await ask(port)


async def test_a_request_that_cannot_be_sent_fails_before_anything_is_written() -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        received.append(await reader.read())

    received: list[bytes] = []
    async with server(handler) as port:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        with pytest.raises(h11.LocalProtocolError):
            await exchange(reader, writer, "GET", "/a b", [("Host", "docker")])
        writer.close()
        await asyncio.sleep(0.05)
    assert received == [b""]
