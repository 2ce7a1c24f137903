"""Delivery: a bounded queue and a worker per destination, retries with jittered backoff, and a
state file so a restart neither loses what was queued nor re-sends what was delivered.

A pass only puts messages on queues (``put_nowait``): a destination that hangs or fails fills
its own queue and then drops (counted), and never waits a pass. Apprise is synchronous, so each
send runs in this module's own small thread pool (not the default one, which git and the loader
use): a hung send holds one of these threads until Apprise's socket timeouts end it.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import threading
import time
from collections.abc import Awaitable, Callable, Collection
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Protocol

from reconciler.backoff import exponential, jittered
from reconciler.notifications.destinations import Destination
from reconciler.notifications.digest import (
    Memory,
    Message,
    Sent,
    continued_by,
    forget,
    remember,
)
from reconciler.notifications.settings import DeliveryLimits
from reconciler.observe import metrics
from reconciler.observe.redact import redact
from reconciler.spec.model import ResourceKey
from reconciler.state.notices import Claim

log = logging.getLogger("reconciler.notifications")

SendFn = Callable[[Destination, Message], Awaitable[None]]


class Claims(Protocol):
    """What replicas sharing a database told (``Store``: reconciler/state/notices.py)."""

    async def claim_notice(self, destination: str, subject: str, kind: str, message_id: str,
                           repeat_s: float, *, continues: Collection[str] = ()) -> Claim: ...

    async def close_notice(self, destination: str, subject: str) -> bool: ...

    async def notice_delivered(self, message_id: str) -> None: ...

    async def release_notice(self, message_id: str) -> int: ...


class DeliveryFailed(Exception):
    """One attempt failed; the text is already redacted."""


class ApprisePool:
    """Sends through Apprise, in threads of its own."""

    def __init__(self, workers: int = 4) -> None:
        self.executor = ThreadPoolExecutor(max_workers=workers,
                                           thread_name_prefix="fraisier-notify")

    async def send(self, dest: Destination, message: Message) -> None:
        loop = asyncio.get_running_loop()
        ok, logs = await loop.run_in_executor(self.executor, _apprise_send, dest.url, message)
        if not ok:
            detail = redact("; ".join(logs[-3:]) or "the service refused the message",
                            urls=[dest.url], secrets=_url_parts(dest.url))
            raise DeliveryFailed(detail)

    def close(self) -> None:
        self.executor.shutdown(wait=False, cancel_futures=True)


def _url_parts(url: str) -> list[str]:
    """Every piece of an Apprise URL past its scheme: any of them may be a token."""
    rest = url.partition("://")[2]
    for sep in "?&=@:#":
        rest = rest.replace(sep, "/")
    return [p for p in rest.split("/") if len(p) >= 6]


class _ThreadCapture(logging.Handler):
    """Apprise's log lines of the sending thread only (its logger is global, and a line of one
    destination's send must never reach another's error, nor the daemon's log unredacted)."""

    local = threading.local()

    def emit(self, record: logging.LogRecord) -> None:
        lines: list[str] | None = getattr(self.local, "lines", None)
        if lines is not None and record.levelno >= logging.WARNING:
            lines.append(record.getMessage())


_CAPTURE = _ThreadCapture()
_apprise_log = logging.getLogger("apprise")
_apprise_log.propagate = False  # redacted and summarised by this module instead
_apprise_log.addHandler(_CAPTURE)


def _apprise_send(url: str, message: Message) -> tuple[bool, list[str]]:
    import apprise

    lines: list[str] = []
    _CAPTURE.local.lines = lines
    try:
        app = apprise.Apprise()
        if not app.add(url):
            return False, ["Apprise does not understand this URL (scheme or form)"]
        ok = app.notify(body=message.body, title=message.title,
                        notify_type=apprise.NotifyType(message.severity),
                        body_format=apprise.NotifyFormat.TEXT)
        return bool(ok), lines
    finally:
        _CAPTURE.local.lines = None


class Deliveries:
    """The queues, workers and state file of every destination.

    With ``claims`` (the store: several replicas of ``daemon --ha``, or ``apply`` runs, share
    its database), the worker claims each problem a message tells before sending it, and sends
    only what it won: the database, not this process, says what was told and when. The state
    file then only keeps this process's queue (and a cache of what it told) across a restart.
    Claims are written by the worker, never by a pass."""

    def __init__(self, state_path: Path | None, *, limits: DeliveryLimits | None = None,
                 send: SendFn | None = None, claims: Claims | None = None) -> None:
        self.state_path = state_path
        self.claims = claims
        self.limits = limits or DeliveryLimits()
        self._pool = ApprisePool() if send is None else None
        self._send: SendFn = send if send is not None else self._pool.send  # type: ignore[union-attr]
        self.destinations: dict[str, Destination] = {}
        self.memory: Memory = {}
        self.outbox: dict[str, Message] = {}
        self.delivered: list[str] = []
        self.queues: dict[str, asyncio.Queue[Message]] = {}
        self.workers: dict[str, asyncio.Task[None]] = {}
        self.queued: set[str] = set()  # ids on a queue or being sent
        self.idle = asyncio.Event()
        self.idle.set()
        self._load()

    # -- state file ------------------------------------------------------------------------
    def _load(self) -> None:
        if self.state_path is None or not self.state_path.is_file():
            return
        try:
            doc = json.loads(self.state_path.read_text())
            self.memory = {d: {s: Sent(**v) for s, v in subjects.items()}
                           for d, subjects in doc.get("memory", {}).items()}
            self.delivered = list(doc.get("delivered", []))
            done = set(self.delivered)
            self.outbox = {m["id"]: Message.from_json(m) for m in doc.get("outbox", [])
                           if m["id"] not in done}
        except (OSError, ValueError, TypeError, KeyError) as exc:
            log.error("notification state unreadable; starting afresh",
                      extra={"path": str(self.state_path), "error": repr(exc)})

    def save(self) -> None:
        if self.state_path is None:
            return
        doc = {"memory": {d: {s: {"kind": v.kind, "at": v.at} for s, v in subjects.items()}
                          for d, subjects in self.memory.items()},
               "outbox": [m.to_json() for m in self.outbox.values()],
               "delivered": self.delivered[-self.limits.delivered_kept:]}
        tmp = self.state_path.with_suffix(".tmp")
        self.state_path.parent.mkdir(parents=True, exist_ok=True)
        tmp.write_text(json.dumps(doc))
        os.replace(tmp, self.state_path)

    # -- queues ----------------------------------------------------------------------------
    def configure(self, destinations: list[Destination]) -> None:
        """The current destinations; messages left from a restart are queued again."""
        self.destinations = {d.id: d for d in destinations}
        for message in list(self.outbox.values()):
            if message.destination in self.destinations and message.id not in self.queued:
                self._enqueue(message, persist=False)

    def open_keys(self) -> set[ResourceKey]:
        """The resources some destination was told of a problem of (a handful, not the fleet)."""
        keys: set[ResourceKey] = set()
        for subjects in self.memory.values():
            for subject in subjects:
                if subject.count("/") >= 2:  # a resource key, not "daemon" or "commits"
                    keys.add(ResourceKey.parse(subject))
        return keys

    def memory_of(self, dest: Destination) -> dict[str, Sent]:
        return self.memory.setdefault(dest.id, {})

    def submit(self, message: Message) -> bool:
        """Queue ``message`` (never waits); False when its destination's queue was full."""
        dest = self.destinations[message.destination]
        remember(self.memory_of(dest), message)
        self.outbox[message.id] = message
        if not self._enqueue(message, persist=True):
            forget(self.memory_of(dest), message)
            del self.outbox[message.id]
            self.save()
            return False
        return True

    def _enqueue(self, message: Message, *, persist: bool) -> bool:
        dest = self.destinations[message.destination]
        queue = self.queues.get(dest.id)
        if queue is None:
            queue = self.queues[dest.id] = asyncio.Queue(self.limits.queue)
        try:
            queue.put_nowait(message)
        except asyncio.QueueFull:
            for kind in message.kinds:
                metrics.NOTIFICATIONS_TOTAL.labels(dest.label, kind, "dropped").inc()
            log.error("notification dropped: queue full", extra={
                "destination": dest.label, "queued": queue.qsize(), "title": message.title})
            return False
        self.queued.add(message.id)
        self.idle.clear()
        if persist:
            self.save()
        worker = self.workers.get(dest.id)
        if worker is None or worker.done():
            self.workers[dest.id] = asyncio.create_task(self._work(dest.id),
                                                        name=f"notify:{dest.label}")
        return True

    async def _work(self, dest_id: str) -> None:
        queue = self.queues[dest_id]
        while True:
            message = await queue.get()
            try:
                await self._deliver(message)
            finally:
                queue.task_done()
                self.queued.discard(message.id)
                if not self.queued:
                    self.idle.set()

    async def _deliver(self, message: Message) -> None:
        dest = self.destinations.get(message.destination)
        if dest is None:  # its Notifier was removed from the repo meanwhile
            self.outbox.pop(message.id, None)
            self.save()
            return
        verdict = await self._claim(dest, message)
        if verdict is not Claim.WON:  # told by another replica, or by this one before a restart
            for kind in message.kinds:
                outcome = "suppressed" if verdict is Claim.HELD else "delivered"
                metrics.NOTIFICATIONS_TOTAL.labels(dest.label, kind, outcome).inc()
            self.outbox.pop(message.id, None)
            self.save()
            return
        limits = self.limits
        error = ""
        for attempt in range(1, limits.attempts + 1):
            try:
                async with asyncio.timeout(limits.timeout_s):
                    await self._send(dest, message)
            except TimeoutError:
                error = f"no answer within {limits.timeout_s:g}s"
            except DeliveryFailed as exc:
                error = str(exc)
            except Exception as exc:  # an Apprise plugin bug must not end the worker
                error = redact(f"{type(exc).__name__}: {exc}", urls=[dest.url],
                               secrets=_url_parts(dest.url))
            else:
                for kind in message.kinds:
                    metrics.NOTIFICATIONS_TOTAL.labels(dest.label, kind, "delivered").inc()
                self.outbox.pop(message.id, None)
                self.delivered.append(message.id)
                del self.delivered[:-limits.delivered_kept]
                self.save()
                await self._settle(dest, message, delivered=True)
                return
            log.warning("notification attempt failed", extra={
                "destination": dest.label, "attempt": attempt, "of": limits.attempts,
                "error": error})
            if attempt < limits.attempts:
                delay = exponential(attempt, first=limits.backoff_s, cap=limits.max_backoff_s)
                await asyncio.sleep(jittered(delay, 0.5))
        for kind in message.kinds:
            metrics.NOTIFICATIONS_TOTAL.labels(dest.label, kind, "failed").inc()
        log.error("notification not delivered; giving up", extra={
            "destination": dest.label, "attempts": limits.attempts, "error": error,
            "title": message.title})
        forget(self.memory_of(dest), message)
        self.outbox.pop(message.id, None)
        self.save()
        await self._settle(dest, message, delivered=False)

    async def _claim(self, dest: Destination, message: Message) -> Claim:
        """Whether this process is to send ``message``: won when it claimed one of the problems
        it tells or closed one of them (or tells neither: a plain success, which only the
        replica owning the resource sees); done when it was delivered before a restart."""
        if self.claims is None or not (message.opened or message.closed):
            return Claim.WON
        verdicts: list[Claim] = []
        try:
            for subject, kind in message.opened.items():
                verdicts.append(await self.claims.claim_notice(
                    dest.id, subject, kind, message.id, dest.repeat_s,
                    continues=continued_by(kind)))
            for subject in message.closed:
                closed = await self.claims.close_notice(dest.id, subject)
                verdicts.append(Claim.WON if closed else Claim.HELD)
        except Exception as exc:  # the database is away: better told twice than never
            log.warning("notification claim failed; sending unclaimed", extra={
                "destination": dest.label, "error": redact(str(exc))})
            return Claim.WON
        if Claim.WON in verdicts:
            return Claim.WON
        return Claim.DONE if verdicts and all(v is Claim.DONE for v in verdicts) else Claim.HELD

    async def _settle(self, dest: Destination, message: Message, *, delivered: bool) -> None:
        """Record in the database that ``message`` was delivered, or drop its claims."""
        if self.claims is None or not message.opened:
            return
        try:
            if delivered:
                await self.claims.notice_delivered(message.id)
            else:
                await self.claims.release_notice(message.id)
        except Exception as exc:
            log.warning("notification claim not updated", extra={
                "destination": dest.label, "error": redact(str(exc))})

    async def drain(self, within_s: float) -> bool:
        """Wait until every queue is empty (or ``within_s``); True when they are."""
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(within_s):
                await self.idle.wait()
        return self.idle.is_set()

    async def close(self) -> None:
        for task in self.workers.values():
            task.cancel()
        await asyncio.gather(*self.workers.values(), return_exceptions=True)
        self.save()  # what is still in the outbox is sent after the restart
        if self.state_path is None:  # no restart will send it: another process may
            for message in list(self.outbox.values()):
                dest = self.destinations.get(message.destination)
                if dest is not None:
                    await self._settle(dest, message, delivered=False)
        if self._pool is not None:
            self._pool.close()

    def stats(self) -> dict[str, Any]:
        return {d: q.qsize() for d, q in self.queues.items()}


def now() -> float:
    return time.time()
