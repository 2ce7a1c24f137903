"""Retention: audit events older than ``--audit-retention`` and webhook delivery ids past the
replay window are deleted, periodically, so neither table grows forever."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta

from reconciler.backoff import TIMER_FLOOR_S, jittered
from reconciler.daemon.config import DaemonConfig
from reconciler.errors import ReconcilerError
from reconciler.state.store import Store

log = logging.getLogger("reconciler.daemon")


class Retention:
    """The pruning of ``store``, by the ages in ``cfg`` (read at every run).

    ``passed`` is set once the daemon's first pass has run; ``stopping()`` ends the runs."""

    def __init__(self, cfg: DaemonConfig, store: Store, passed: asyncio.Event,
                 stopping: Callable[[], bool]) -> None:
        self._cfg = cfg
        self._store = store
        self._passed = passed
        self._stopping = stopping

    async def run(self) -> None:
        """Delete audit events older than ``--audit-retention`` and webhook delivery ids older
        than ``delivery_retention``: once the first pass has run (startup is not slowed), then
        every ``audit_prune_interval`` (an hour)."""
        await self._passed.wait()
        while not self._stopping():
            await self.prune_audit_once()
            await self.prune_deliveries_once()
            await asyncio.sleep(jittered(self._cfg.audit_prune_interval, floor=TIMER_FLOOR_S))

    async def prune_deliveries_once(self) -> int:
        """Forget webhook delivery ids past the replay window (the table grew forever)."""
        return await self._prune("webhook delivery ids", self._store.prune_deliveries,
                                 self._cfg.delivery_retention)

    async def prune_audit_once(self) -> int:
        """One retention pass (batched deletes through the index on the event time)."""
        if self._cfg.audit_retention is None:
            return 0
        return await self._prune("audit events", self._store.prune_audit,
                                 self._cfg.audit_retention)

    async def _prune(self, what: str, prune: Callable[[datetime], Awaitable[int]],
                     age: timedelta) -> int:
        before = datetime.now(UTC) - age
        try:
            deleted = await prune(before)
        except ReconcilerError as exc:
            log.warning(f"retention: pruning {what} failed", extra={"error": exc.message})
            return 0
        if deleted:
            log.info(f"{what} pruned", extra={"deleted": deleted, "before": before.isoformat()})
        return deleted
