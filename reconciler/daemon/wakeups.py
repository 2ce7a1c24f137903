"""What wakes the pass loop besides its poll timer and webhooks: a commit on a local config repo,
and a change of this replica's share of the shards (``daemon --ha``)."""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import logging
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from reconciler.backoff import TIMER_FLOOR_S, jittered
from reconciler.errors import ReconcilerError
from reconciler.source.git import GitSource

if TYPE_CHECKING:
    from reconciler.state.shards import ShardLeases

log = logging.getLogger("reconciler.daemon")


class LocalRefsWatch:
    """Wakes the loop (``trigger("commit")``) when a ref of a local repo changes."""

    def __init__(self, source: GitSource, trigger: Callable[[str], None]) -> None:
        self._source = source
        self._trigger = trigger
        self._stop = asyncio.Event()

    async def run(self) -> None:
        """Wake on ref changes of a local repo (watchfiles ignores .git by default)."""
        from watchfiles import awatch

        git_dir = self._source.git_dir

        def is_ref(path: str) -> bool:
            rel = Path(path).relative_to(git_dir).as_posix() if path.startswith(
                str(git_dir)) else path
            return rel in ("HEAD", "packed-refs") or rel.startswith("refs/")

        # step: how often the watcher thread wakes (and takes the GIL) to look for events.
        # 50 ms, not 20: measured 0.10 % instead of 0.23 % of a core while idle, for at most
        # 30 ms more between a commit and its pass (the 200 ms debounce dominates).
        async for changes in awatch(git_dir, watch_filter=None, stop_event=self._stop,
                                    debounce=200, step=50, recursive=True):
            if any(is_ref(p) and not p.endswith(".lock") for _, p in changes):
                self._trigger("commit")

    def stop(self) -> None:
        self._stop.set()


class ShardKeeper:
    """Holds this replica's share of the shards (``daemon --ha``) on a thread of its own, with
    its own event loop and its own store connection; a change of share triggers a pass.

    Why not a task on the daemon's loop: a pass keeps that loop busy (SSH crypto, JSON, plans)
    and its store pool in use, and a heartbeat queued behind them renews late and claims a dead
    replica's shards late (docs/performance.md, session 9). Here a heartbeat waits for nothing
    but the GIL (switched every 5 ms) and its own round trips.
    """

    def __init__(self, leases: ShardLeases, trigger: Callable[[str], None]) -> None:
        self.leases = leases
        self._trigger = trigger
        self._main: asyncio.AbstractEventLoop | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._first: concurrent.futures.Future[None] = concurrent.futures.Future()
        self._thread = threading.Thread(target=self._run, name="shard-leases", daemon=True)

    async def start(self) -> None:
        """Start the thread; return once the first heartbeat took a share (or failed: the
        thread keeps trying, as the daemon did before)."""
        self._main = asyncio.get_running_loop()
        self._thread.start()
        await asyncio.wrap_future(self._first)

    async def stop(self) -> None:
        """Stop heartbeating and release every lease: the others take over at once."""
        loop, stop = self._loop, self._stop
        if loop is not None and stop is not None and not loop.is_closed():
            with contextlib.suppress(RuntimeError):  # the thread's loop just ended
                loop.call_soon_threadsafe(stop.set)
        await asyncio.to_thread(self._thread.join, 60)

    def _run(self) -> None:
        asyncio.run(self._hold())

    def _changed(self) -> None:
        main = self._main
        if main is not None and not main.is_closed():
            with contextlib.suppress(RuntimeError):  # the daemon's loop is closing
                main.call_soon_threadsafe(self._trigger, "shards")

    async def _hold(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._stop = stop = asyncio.Event()
        leases = self.leases
        due = time.monotonic()
        try:
            while not stop.is_set():
                before = leases.owned
                late = time.monotonic() - due  # how long this thread kept the heartbeat waiting
                try:
                    owned = await leases.heartbeat()
                except ReconcilerError as exc:
                    log.warning("shard heartbeat failed", extra={"error": exc.message})
                except Exception as exc:  # one bad beat must not end the thread
                    log.error("shard heartbeat failed unexpectedly", exc_info=exc)
                else:
                    beat = leases.last
                    if owned != before and beat is not None:
                        log.info("shards changed", extra={
                            "owned": len(owned), "replicas": len(leases.live_replicas),
                            "claimed": list(beat.claimed), "released": list(beat.released),
                            "late_s": round(late, 3), "took_s": round(beat.took, 3),
                            "overdue_s": None if beat.overdue is None
                            else round(beat.overdue, 3)})
                        self._changed()
                finally:
                    if not self._first.done():
                        self._first.set_result(None)
                pause = leases.next_beat_in(jittered(leases.interval, 0.1, floor=TIMER_FLOOR_S))
                due = time.monotonic() + pause
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(pause):
                        await stop.wait()
            with contextlib.suppress(ReconcilerError):
                await leases.leave()
        finally:
            if not self._first.done():
                self._first.set_result(None)
            await leases.store.close()
