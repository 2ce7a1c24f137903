"""Webhook deliveries on SQLite: the ids already received (``tb_webhook_delivery``), so a
replayed delivery is refused, and their pruning (a bounded table)."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime

from reconciler.state.sqlite_tx import SQLiteHooks, now_text


class SQLiteDeliveries(SQLiteHooks):
    """``record_delivery`` and ``prune_deliveries``."""

    def _record_delivery(self, provider: str, delivery_id: str) -> bool:
        with self._write():
            cursor = self._conn.execute(
                """INSERT INTO tb_webhook_delivery (id, identifier, provider, delivery_id,
                                                    received_at)
                   VALUES (?, ?, ?, ?, ?)
                   ON CONFLICT (provider, delivery_id) DO NOTHING""",
                (str(uuid.uuid4()), f"{provider}/{delivery_id}", provider, delivery_id,
                 now_text()),
            )
            return cursor.rowcount == 1

    async def record_delivery(self, provider: str, delivery_id: str) -> bool:
        """Remember a webhook delivery id; False when it was seen before (a replay)."""
        return await self._run(self._record_delivery, provider, delivery_id)

    def _prune_deliveries(self, before: datetime) -> int:
        with self._write():
            cursor = self._conn.execute(
                "DELETE FROM tb_webhook_delivery WHERE received_at < ?",
                (before.astimezone(UTC).isoformat(timespec="microseconds"),),
            )
            return cursor.rowcount

    async def prune_deliveries(self, before: datetime) -> int:
        """Forget deliveries received before ``before`` (bounded table); returns the count."""
        return await self._run(self._prune_deliveries, before)


__all__ = ["SQLiteDeliveries"]
