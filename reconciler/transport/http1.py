"""One HTTP/1.1 exchange on a connection of its own: h11's framing on asyncio streams.

What the health gate's http probe and the compose provider's Docker engine client send and read.
One request per connection (``Connection: close``): no pool whose idle connections are polled
at every request, no proxy from the environment, no redirect followed. Deadlines are the
caller's (``asyncio.timeout`` around the call); a peer that closes before answering raises
``NoResponse``, one that answers something other than HTTP/1.x raises ``h11.RemoteProtocolError``.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass

import h11

_READ_CHUNK = 64 * 1024
# The largest response head (status line and headers) read before giving up on the peer.
MAX_HEAD = 64 * 1024


class NoResponse(Exception):
    """The peer accepted the connection and closed it without a response."""


@dataclass(frozen=True)
class Response:
    status: int
    headers: tuple[tuple[bytes, bytes], ...]  # names in lower case, as h11 gives them
    body: bytes

    def header(self, name: str) -> str:
        """The value of the first header named ``name`` (any case), or ""."""
        wanted = name.lower().encode("latin-1")
        for key, value in self.headers:
            if key == wanted:
                return value.decode("latin-1")
        return ""


async def exchange(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, method: str,
                   target: str, headers: Sequence[tuple[str, str]], body: bytes = b"", *,
                   body_limit: int | None = None, head_only: bool = False) -> Response:
    """Send the request and read the response: its status and headers, and its body unless
    ``head_only`` (then the body is empty), cut at ``body_limit`` bytes. The body ends where the
    response says, or where the peer closes the connection. Informational (1xx) responses are
    skipped. h11.LocalProtocolError, before anything is sent, for a request that cannot be (a
    bad target or header). The writer is not closed here."""
    connection = h11.Connection(h11.CLIENT, max_incomplete_event_size=MAX_HEAD)
    fields = list(headers)
    if body:
        fields.append(("Content-Length", str(len(body))))
    wire = connection.send(h11.Request(method=method, target=target, headers=fields)) or b""
    if body:
        wire += connection.send(h11.Data(data=body)) or b""
    writer.write(wire + (connection.send(h11.EndOfMessage()) or b""))
    await writer.drain()
    status: int | None = None
    answer_headers: tuple[tuple[bytes, bytes], ...] = ()
    received = bytearray()
    answered = False
    while True:
        event = connection.next_event()
        if event is h11.NEED_DATA:
            data = await reader.read(_READ_CHUNK)
            if not data and not answered:
                raise NoResponse("closed the connection without a response")
            answered = True  # h11 judges the rest, a truncated answer included
            connection.receive_data(data)
        elif isinstance(event, h11.Response):
            status, answer_headers = event.status_code, tuple(event.headers)
            if head_only:
                break
        elif isinstance(event, h11.Data):
            received += event.data
            if body_limit is not None and len(received) >= body_limit:
                del received[body_limit:]
                break
        elif isinstance(event, h11.EndOfMessage | h11.ConnectionClosed) or event is h11.PAUSED:
            break
        # else an informational (1xx) response: the real one follows
    if status is None:
        raise NoResponse("closed the connection without a response")
    return Response(status, answer_headers, bytes(received))
