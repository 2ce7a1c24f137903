"""What notification destinations were told, once for every store (SQLite, PostgreSQL, MySQL):
the rules by which replicas sharing a database agree on who sends a notification.

A row of ``tb_notification`` is an open problem (``kind``) of a ``subject`` told to a
``destination`` by the message ``message_id`` at ``sent_at``. Before sending, a replica *claims*
each problem its message tells (``claim_notice``): it inserts the row, or takes over an
existing one whose repeat interval is over or whose problem changed; both are single atomic
statements, so when every replica sees the same refused commit, exactly one wins and sends.
A recovery deletes the row (``close_notice``); the replica whose DELETE removed it sends it.

The stores only say how one statement runs (``_notice_insert``, ``_notice_execute``,
``_notice_row``); times are the stores' own representation (``_audit_time``).
"""

from __future__ import annotations

import uuid
from abc import ABC, abstractmethod
from collections.abc import Collection
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from typing import Any, ClassVar

from reconciler.observe.printable import printable

Row = dict[str, Any]
MAX_DESTINATION = 255
MAX_SUBJECT = 500


class Claim(StrEnum):
    WON = "won"  # this message is to be sent
    HELD = "held"  # another message (of this replica or another) told it within the interval
    DONE = "done"  # this very message was delivered already (a retry after a restart)


class NotificationClaims(ABC):
    """``claim_notice``, ``close_notice``, ``notice_delivered`` and ``release_notice`` of every
    store, over three one-statement hooks."""

    param_mark: ClassVar[str]

    @abstractmethod
    def _audit_time(self, value: datetime) -> Any: ...

    @abstractmethod
    async def _notice_insert(self, values: Row) -> bool:
        """Insert a ``tb_notification`` row unless (destination, subject) has one; True when
        inserted (a retried statement whose first attempt committed returns False)."""

    @abstractmethod
    async def _notice_execute(self, sql: str, params: tuple[Any, ...]) -> int:
        """Run one write statement in a transaction of its own; the rows it changed."""

    @abstractmethod
    async def _notice_row(self, sql: str, params: tuple[Any, ...]) -> Row | None: ...

    def _sql(self, sql: str) -> str:
        return sql.replace("?", self.param_mark)

    async def claim_notice(self, destination: str, subject: str, kind: str, message_id: str,
                           repeat_s: float, *, continues: Collection[str] = ()) -> Claim:
        """Claim telling ``kind`` of ``subject`` to ``destination`` with ``message_id``. Held
        when a claim of the same problem (or of one ``kind`` continues) is younger than
        ``repeat_s``; won by exactly one of concurrent callers otherwise."""
        destination = printable(destination, MAX_DESTINATION)
        subject = printable(subject, MAX_SUBJECT)
        now = datetime.now(UTC)
        values: Row = {
            "id": str(uuid.uuid4()), "identifier": f"{destination} {subject}",
            "destination": destination, "subject": subject, "kind": kind,
            "message_id": message_id, "sent_at": self._audit_time(now), "delivered_at": None,
        }
        if await self._notice_insert(values):
            return Claim.WON
        same = (kind, *continues)
        marks = ", ".join("?" for _ in same)
        take = ("UPDATE tb_notification SET kind = ?, message_id = ?, sent_at = ?, "  # noqa: S608
                "delivered_at = NULL WHERE destination = ? AND subject = ? AND message_id <> ? "
                f"AND (sent_at < ? OR kind NOT IN ({marks}))")  # only parameter markers added
        taken = await self._notice_execute(self._sql(take),
            (kind, message_id, values["sent_at"], destination, subject, message_id,
             self._audit_time(now - timedelta(seconds=repeat_s)), *same))
        if taken:
            return Claim.WON
        row = await self._notice_row(self._sql(
            "SELECT message_id, delivered_at FROM v_notification "
            "WHERE destination = ? AND subject = ?"), (destination, subject))
        if row is not None and row["message_id"] == message_id:  # ours, claimed before
            return Claim.DONE if row["delivered_at"] is not None else Claim.WON
        return Claim.HELD

    async def close_notice(self, destination: str, subject: str) -> bool:
        """The problem of ``subject`` told to ``destination`` is over: True when this call
        removed it (its recovery is this caller's to send)."""
        return await self._notice_execute(self._sql(
            "DELETE FROM tb_notification WHERE destination = ? AND subject = ?"),
            (printable(destination, MAX_DESTINATION), printable(subject, MAX_SUBJECT))) > 0

    async def notice_delivered(self, message_id: str) -> None:
        """The message that claimed these rows was delivered (a restart does not resend it)."""
        await self._notice_execute(self._sql(
            "UPDATE tb_notification SET delivered_at = ? WHERE message_id = ? "
            "AND delivered_at IS NULL"), (self._audit_time(datetime.now(UTC)), message_id))

    async def release_notice(self, message_id: str) -> int:
        """The message could not be delivered: its claims are dropped, so the next pass (of any
        replica) tells the problem again. Returns how many."""
        return await self._notice_execute(self._sql(
            "DELETE FROM tb_notification WHERE message_id = ? AND delivered_at IS NULL"),
            (message_id,))


__all__ = ["Claim", "NotificationClaims"]
