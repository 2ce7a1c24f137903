"""The daemon's HTTP front under abuse: who may hold a connection, for how long, at what cost.

aiohttp alone waits forever for the rest of a request's headers and accepts connections until
``accept()`` fails with EMFILE, after which the daemon's own git, SQLite and pidfile reads fail
too. Here, every accepted connection goes through a :class:`ConnectionGuard`:

- file descriptors: the soft ``RLIMIT_NOFILE`` is raised towards the hard limit at start and a
  reserve is kept for the daemon's own work. Linux hands out the lowest free descriptor, so a new
  socket numbered at or past ``soft - reserve`` means the reserve is about to be used: the
  oldest connection not inside a request is closed to make room, and when there is none, the
  new one is closed at once;
- a cap on connections, in total and per peer address. At a cap, the oldest connection that is
  not inside a request (still sending its headers, or idle between keep-alive requests) is
  closed to make room: a slow-loris peer holding every slot loses its oldest one to each new
  client, so a health probe still gets in; only when every connection is busy in a request is
  the new one refused (503);
- timeouts: the headers must be complete ``header_timeout`` after the connection opens (or
  after the idle keep-alive period that follows a response); bodies are read under
  ``body_timeout`` by the routes that read them; idle keep-alive connections close after
  ``idle_timeout``.

Refusals are counted in ``reconciler_http_refused_total{reason}`` and logged as one summary line
per ``log_interval``, never one line per connection.
"""

from __future__ import annotations

import asyncio
import logging
import os
import resource
from collections import Counter, OrderedDict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from aiohttp import web

from reconciler.observe.metrics import HTTP_REFUSED

log = logging.getLogger("reconciler.daemon.http")

# Children (git, ssh, services started by the local provider) inherit the raised soft limit;
# some programs loop over every possible descriptor, so it is raised this far, not to 2^20.
NOFILE_CEILING = 1 << 16

_REFUSED = b"HTTP/1.1 503 Service Unavailable\r\nConnection: close\r\nContent-Length: 0\r\n\r\n"


@dataclass(frozen=True)
class HttpLimits:
    header_timeout: float = 10.0
    """Seconds from connect (or from the end of the idle period after a response) to complete
    request headers."""
    body_timeout: float = 30.0
    """Seconds to read a request body (webhooks; 1 MiB at ~35 KB/s)."""
    idle_timeout: float = 30.0
    """Keep-alive: an idle connection is closed after this."""
    max_connections: int = 4096
    max_connections_per_peer: int = 256
    fd_reserve: int = 256
    """At least this many descriptors (and at least half of the soft limit) stay for the
    daemon's own work."""
    backlog: int = 128
    """Listen queue; asyncio also accepts up to this many sockets in one go before any of them
    reaches the guard, so the descriptor budget leaves room for one such batch."""
    max_line_size: int = 8190
    max_field_size: int = 8190
    max_headers: int = 64
    lingering_time: float = 2.0
    """How long an unread request body is drained after the response (aiohttp)."""
    log_interval: float = 10.0

    def handler_args(self) -> dict[str, Any]:
        """aiohttp ``RequestHandler`` options."""
        return {"keepalive_timeout": self.idle_timeout, "max_line_size": self.max_line_size,
                "max_field_size": self.max_field_size, "max_headers": self.max_headers,
                "lingering_time": self.lingering_time, "access_log": None}


def raise_nofile_limit(ceiling: int = NOFILE_CEILING) -> tuple[int, int]:
    """Raise the soft open-files limit towards the hard one (systemd gives 1024:524288);
    returns the (soft, hard) limits in force afterwards."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = ceiling if hard == resource.RLIM_INFINITY else min(hard, ceiling)
    if want > soft:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))
        except (ValueError, OSError) as exc:
            log.warning("cannot raise the open-files limit", extra={
                "soft": soft, "hard": hard, "error": str(exc)})
    return resource.getrlimit(resource.RLIMIT_NOFILE)


def open_fd_count() -> int:
    try:
        return len(os.listdir("/proc/self/fd"))
    except OSError:  # not Linux: assume a busy daemon
        return 64


class RefusalLog:
    """Counts refusals in the metric at once; logs one summary line per interval."""

    def __init__(self, interval: float = 10.0) -> None:
        self.interval = interval
        self._counts: Counter[str] = Counter()
        self._peers: Counter[str] = Counter()
        self._flush: asyncio.TimerHandle | None = None

    def note(self, reason: str, peer: str | None) -> None:
        HTTP_REFUSED.labels(reason).inc()
        self._counts[reason] += 1
        if peer:
            self._peers[peer] += 1
        if self._flush is None:
            self._flush = asyncio.get_running_loop().call_later(self.interval, self.flush)

    def flush(self) -> None:
        self._flush = None
        if not self._counts:
            return
        log.warning("HTTP requests refused or connections closed by the daemon's limits", extra={
            "counts": dict(self._counts), "interval_s": self.interval,
            "top_peers": [peer for peer, _ in self._peers.most_common(3)]})
        self._counts.clear()
        self._peers.clear()

    def close(self) -> None:
        if self._flush is not None:
            self._flush.cancel()
        self.flush()


class AcceptErrorFilter(logging.Filter):
    """asyncio logs one error per failed ``accept()`` (EMFILE/ENFILE: 20,000 lines in 5 s under
    a flood); those go to the refusal summary instead. Everything else passes."""

    def __init__(self, refusals: RefusalLog) -> None:
        super().__init__()
        self.refusals = refusals

    def filter(self, record: logging.LogRecord) -> bool:
        if str(record.msg).startswith("socket.accept() out of system resource"):
            self.refusals.note("accept_failed", None)
            return False
        return True


class GuardedHandler(web.RequestHandler):
    """aiohttp's connection protocol, admitted and timed by a :class:`ConnectionGuard`."""

    __slots__ = ("_admitted", "_guard", "guard_busy", "guard_peer", "guard_timer")

    def __init__(self, guard: ConnectionGuard, manager: web.Server, **kwargs: Any) -> None:
        super().__init__(manager, **kwargs)
        self._guard = guard
        self.guard_peer = ""  # the guard's bookkeeping of this connection
        self.guard_busy = False
        self.guard_timer: asyncio.TimerHandle | None = None
        self._admitted = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        if not self._guard.admit(self, transport):
            return  # closed already; aiohttp never sees this connection
        self._admitted = True
        super().connection_made(transport)

    def connection_lost(self, exc: BaseException | None) -> None:
        if not self._admitted:
            return
        self._guard.forget(self)
        super().connection_lost(exc)


class ConnectionGuard:
    """Admission, eviction and header deadlines for the daemon's HTTP connections."""

    def __init__(self, limits: HttpLimits, *, soft_limit: int, open_fds: int,
                 refusals: RefusalLog | None = None) -> None:
        self.limits = limits
        # half the limit, at least fd_reserve, but never all of a tiny limit
        reserve = max(soft_limit // 2, min(limits.fd_reserve, soft_limit - 64))
        self.fd_ceiling = soft_limit - reserve  # a socket numbered at or past this is refused
        # The connection cap stays below the descriptor ceiling by one accept batch, so
        # evicting (which keeps health probes working) happens before refusing for descriptors.
        self.max_connections = max(1, min(limits.max_connections,
                                          self.fd_ceiling - open_fds - limits.backlog - 32))
        self.refusals = refusals or RefusalLog(limits.log_interval)
        self._open: set[GuardedHandler] = set()
        self._per_peer: Counter[str] = Counter()
        self._idle: OrderedDict[GuardedHandler, None] = OrderedDict()  # oldest first
        self._idle_by_peer: dict[str, OrderedDict[GuardedHandler, None]] = {}

    @property
    def connections(self) -> int:
        return len(self._open)

    def factory(self, server: web.Server) -> Callable[[], GuardedHandler]:
        loop = asyncio.get_running_loop()
        args = self.limits.handler_args()
        return lambda: GuardedHandler(self, server, loop=loop, **args)

    def middleware(self) -> Callable[..., Awaitable[web.StreamResponse]]:
        """Marks a connection busy while a request is handled (its headers are complete)."""

        @web.middleware
        async def guard(request: web.Request,
                        handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
                        ) -> web.StreamResponse:
            protocol = request.protocol
            if not isinstance(protocol, GuardedHandler):  # an app served without the guard
                return await handler(request)
            self._busy(protocol)
            try:
                return await handler(request)
            finally:
                self._idle_again(protocol)

        return guard

    # -- admission --------------------------------------------------------------------------------
    def admit(self, conn: GuardedHandler, transport: asyncio.BaseTransport) -> bool:
        peername = transport.get_extra_info("peername")
        peer = str(peername[0]) if isinstance(peername, tuple) and peername else "?"
        sock = transport.get_extra_info("socket")
        fd = sock.fileno() if sock is not None else -1
        # Past the line, the oldest idle connection makes room, as at the caps: the newcomer
        # may be a health probe, the oldest idle one a half-open flood's.
        if fd >= self.fd_ceiling and not self._evict(self._idle):
            self.refusals.note("fd_reserve", peer)
            if isinstance(transport, asyncio.Transport):
                transport.abort()
            else:
                transport.close()  # the descriptor comes back now, not after a write
            return False
        if self._per_peer[peer] >= self.limits.max_connections_per_peer \
                and not self._evict(self._idle_by_peer.get(peer)):
            self._refuse(transport, "peer_connections", peer)
            return False
        if len(self._open) >= self.max_connections and not self._evict(self._idle):
            self._refuse(transport, "connections", peer)
            return False
        conn.guard_peer = peer
        self._open.add(conn)
        self._per_peer[peer] += 1
        self._idle_again(conn, first=True)
        return True

    def _refuse(self, transport: asyncio.BaseTransport, reason: str, peer: str) -> None:
        self.refusals.note(reason, peer)
        if isinstance(transport, asyncio.WriteTransport):
            transport.write(_REFUSED)
        transport.close()

    def _evict(self, idle: OrderedDict[GuardedHandler, None] | None) -> bool:
        if not idle:
            return False
        oldest = next(iter(idle))
        self.refusals.note("evicted", oldest.guard_peer)
        self.forget(oldest)
        oldest.force_close()
        return True

    def forget(self, conn: GuardedHandler) -> None:
        if conn not in self._open:
            return
        self._open.discard(conn)
        self._unidle(conn)
        self._per_peer[conn.guard_peer] -= 1
        if self._per_peer[conn.guard_peer] <= 0:
            del self._per_peer[conn.guard_peer]

    # -- request lifecycle ------------------------------------------------------------------------
    def _busy(self, conn: GuardedHandler) -> None:
        conn.guard_busy = True
        self._unidle(conn)

    def _idle_again(self, conn: GuardedHandler, *, first: bool = False) -> None:
        if conn not in self._open:
            return
        conn.guard_busy = False
        self._idle[conn] = None
        self._idle_by_peer.setdefault(conn.guard_peer, OrderedDict())[conn] = None
        # After a response the client may stay idle (keep-alive) before its next headers.
        wait = self.limits.header_timeout + (0.0 if first else self.limits.idle_timeout)
        conn.guard_timer = asyncio.get_running_loop().call_later(wait, self._deadline, conn)

    def _unidle(self, conn: GuardedHandler) -> None:
        if conn.guard_timer is not None:
            conn.guard_timer.cancel()
            conn.guard_timer = None
        self._idle.pop(conn, None)
        by_peer = self._idle_by_peer.get(conn.guard_peer)
        if by_peer is not None:
            by_peer.pop(conn, None)
            if not by_peer:
                del self._idle_by_peer[conn.guard_peer]

    def _deadline(self, conn: GuardedHandler) -> None:
        conn.guard_timer = None
        if conn.guard_busy or conn not in self._open:
            return
        self.refusals.note("header_timeout", conn.guard_peer)
        self.forget(conn)
        conn.force_close()


async def read_body(request: web.Request, cap: int, within: float,
                    chunk: int = 64 * 1024) -> bytes | None:
    """The body, or None as soon as it grows past ``cap`` (the rest is never read); raises
    TimeoutError when it takes longer than ``within`` seconds in all."""
    chunks: list[bytes] = []
    total = 0
    async with asyncio.timeout(within):
        while True:
            data = await request.content.read(chunk)
            if not data:
                return b"".join(chunks)
            total += len(data)
            if total > cap:
                return None
            chunks.append(data)
