"""Requests to one host answered many per remote command (observations, deploys' commits).

A request waits for the next batch that starts after it (never an answer read before it
asked); a batch takes every request queued by then, up to ``limit``, once ``ready()`` returns,
and no sooner than ``linger`` seconds after its first request: requests made at about the same
time (the looks of a pass, the gates of a host's deploys committed together) then share one
batch, where the first of them used to run alone and the others wait for it to end.
The batch runs in its own task: a caller cancelled while waiting (a gate's watcher, once the
verdict is in) does not stop a command the others wait for. A failed batch fails each of its
requests with the same error.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from typing import Generic, TypeVar

# How long a batch of looks at a host (observations, listening sockets) waits for the looks
# asked about the same time: a round trip of the look's command costs far more
# (docs/performance.md, session 21)
LOOK_LINGER_S = 0.02

Req = TypeVar("Req")
Res = TypeVar("Res")


class RequestBatches(Generic[Req, Res]):
    def __init__(self, run: Callable[[Sequence[Req]], Awaitable[list[Res]]], *, limit: int,
                 ready: Callable[[], Awaitable[None]] | None = None,
                 linger: float = 0.0) -> None:
        self._run = run
        self._limit = limit
        self._ready = ready
        self._linger = linger
        self._pending: list[tuple[Req, asyncio.Future[Res]]] = []
        self._runner: asyncio.Task[None] | None = None
        self.batches = 0  # remote commands run (tests read it)

    @property
    def busy(self) -> bool:
        """A batch runs, or requests wait for the next one."""
        return bool(self._pending) or (self._runner is not None and not self._runner.done())

    async def ask(self, request: Req) -> Res:
        future: asyncio.Future[Res] = asyncio.get_running_loop().create_future()
        self._pending.append((request, future))
        if self._runner is None or self._runner.done():
            self._runner = asyncio.create_task(self._drain())
        return await future

    async def _drain(self) -> None:
        while self._pending:
            if self._linger > 0:
                await asyncio.sleep(self._linger)
            if self._ready is not None:
                await self._ready()
            batch = self._pending[: self._limit]
            del self._pending[: self._limit]
            batch = [(r, f) for r, f in batch if not f.done()]  # callers that gave up
            if not batch:
                continue
            self.batches += 1
            try:
                results = await self._run([r for r, _ in batch])
            except Exception as exc:  # every caller of this batch gets the error
                for _, future in batch:
                    if not future.done():
                        future.set_exception(exc)
                continue
            except BaseException:  # cancelled (loop shutting down): nobody waits forever
                for _, future in batch + self._pending:
                    future.cancel()
                self._pending.clear()
                raise
            for (_, future), result in zip(batch, results, strict=True):
                if not future.done():
                    future.set_result(result)
