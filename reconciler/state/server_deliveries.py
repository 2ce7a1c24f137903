"""Webhook deliveries on PostgreSQL/MySQL: the ids already received (``tb_webhook_delivery``),
so a replayed delivery is refused, and their pruning (a bounded table)."""

from __future__ import annotations

import uuid
from abc import abstractmethod
from datetime import UTC, datetime

from reconciler.state.server_tx import ServerHooks, Tx


class ServerDeliveries(ServerHooks):
    """``record_delivery`` and ``prune_deliveries``."""

    async def record_delivery(self, provider: str, delivery_id: str) -> bool:
        """Remember a webhook delivery id; False when it was seen before (a replay)."""
        row_id = str(uuid.uuid4())

        async def op(tx: Tx, retrying: bool) -> bool:
            existing = await tx.one(
                "SELECT id FROM tb_webhook_delivery WHERE provider = %s AND delivery_id = %s",
                (provider, delivery_id))
            if existing is not None:
                return retrying and str(existing["id"]) == row_id
            return await self._insert_delivery(tx, row_id, provider, delivery_id)

        return await self._run("record_delivery", op)

    async def prune_deliveries(self, before: datetime) -> int:
        """Forget deliveries received before ``before`` (bounded table); returns the count."""
        return await self._run("prune_deliveries", lambda tx, _: tx.execute(
            "DELETE FROM tb_webhook_delivery WHERE received_at < %s",
            (self._db_time(before.astimezone(UTC)),)))

    @abstractmethod
    async def _insert_delivery(self, tx: Tx, row_id: str, provider: str,
                               delivery_id: str) -> bool:
        """Insert unless (provider, delivery_id) exists; True when inserted."""


__all__ = ["ServerDeliveries"]
