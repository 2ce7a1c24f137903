"""Verified pushes and the commit a webhook pass runs at.

A push queues a pin (its SHA); the next pass fetches, keeps the pins that are in the repository,
on the followed branch and not older than the commit already loaded, and runs at the newest of
them. A pin not fetched yet is tried again with backoff; the others are logged with their reason
(and audited when the push is refused)."""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import git

from reconciler.backoff import TIMER_FLOOR_S, exponential, jittered
from reconciler.errors import ReconcilerError
from reconciler.observe import metrics
from reconciler.source.git import GitSource
from reconciler.source.webhooks import WebhookEvent
from reconciler.state.store import Store

log = logging.getLogger("reconciler.daemon")


@dataclass
class Pin:
    """A verified push the next pass must run at."""

    sha: str
    actor: str  # webhook:<provider>:<delivery id>
    reconcile_id: str
    branch: str | None = None
    attempts: int = 0  # fetches that did not bring the commit


def check_pins(source: GitSource, pins: list[Pin], head: str,
               current: str | None) -> list[tuple[Pin, str]]:
    """Each pin with its verdict: ``missing`` (not in the repository), ``off-branch`` (not an
    ancestor of ``head``), ``older`` (an ancestor of ``current``, the commit already loaded) or
    ``ok``; the ``ok`` ones last, ordered oldest first (by ancestry, then arrival)."""
    repo = source.repo

    def has(sha: str) -> bool:
        try:
            repo.git.cat_file("-e", f"{sha}^{{commit}}")
        except git.GitCommandError:
            return False
        return True

    def ancestor(a: str, b: str) -> bool:
        if a == b:
            return True
        try:
            repo.git.merge_base("--is-ancestor", a, b)  # exit 1: not an ancestor
        except git.GitCommandError:
            return False
        return True

    out: list[tuple[Pin, str]] = []
    usable: list[Pin] = []
    for pin in pins:
        if not has(pin.sha):
            out.append((pin, "missing"))
        elif not ancestor(pin.sha, head):
            out.append((pin, "off-branch"))
        elif current is not None and pin.sha != current and has(current) \
                and ancestor(pin.sha, current):
            out.append((pin, "older"))
        else:
            usable.append(pin)
    # newest last: a pin that is an ancestor of one already placed goes before it
    ordered: list[Pin] = []
    for pin in usable:
        at = len(ordered)
        for i, other in enumerate(ordered):
            if pin.sha != other.sha and ancestor(pin.sha, other.sha):
                at = i
                break
        ordered.insert(at, pin)
    out.extend((pin, "ok") for pin in ordered)
    return out


class PinTracker:
    """The pins waiting for a pass, their retries and the audit events of refused pushes.

    ``wake(reason)`` asks the daemon for a pass; ``report(message)`` tells it (its /readyz) why
    a push was given up."""

    def __init__(self, source: GitSource, store: Store, *, retries: int, backoff: float,
                 wake: Callable[[str], None], report: Callable[[str], None]) -> None:
        self.queued: list[Pin] = []  # verified pushes waiting for a pass
        self._source = source
        self._store = store
        self._retries = retries  # fetches of a pushed commit not found yet
        self._backoff = backoff
        self._wake = wake
        self._report = report
        self._stopped = False
        self._audits: set[asyncio.Task[Any]] = set()

    def queue_push(self, event: WebhookEvent) -> str:
        """A verified push to the watched repo/branch: fetch and reconcile now, pinned to the
        pushed SHA (``event.after``): the pass loads the desired state of exactly that commit,
        once it is fetched and found on the followed branch. Pushes queued together: the newest
        wins; a push older than the commit already applied is not rolled back to."""
        reconcile_id = uuid.uuid4().hex
        actor = f"webhook:{event.provider}:{event.delivery_id or reconcile_id}"
        log.info("webhook push queued", extra={"reconcile_id": reconcile_id,
                                               "sha": event.after, "branch": event.branch})
        if event.after:
            self.queued.append(Pin(event.after, actor, reconcile_id, event.branch))
        self._wake(actor)
        return reconcile_id

    def take(self) -> list[Pin]:
        """The queued pins, for this pass; the queue starts empty again."""
        pins, self.queued = self.queued, []
        return pins

    async def choose(self, pins: list[Pin], head: str, current: str | None) -> Pin | None:
        """The pin this pass runs at: fetched, on the followed branch (an ancestor of its head
        ``head``), the newest of those, and not older than ``current``, the commit already
        loaded. Missing ones are retried with backoff; the others are logged with their
        reason."""
        checked = await asyncio.to_thread(check_pins, self._source, pins, head, current)
        found: list[Pin] = []
        for pin, verdict in checked:
            if verdict == "missing":
                self.retry(pin, "not found after fetching")
            elif verdict == "off-branch":
                log.warning("pushed commit is not on the followed branch; not reconciled",
                            extra={"reconcile_id": pin.reconcile_id, "sha": pin.sha,
                                   "branch": pin.branch, "head": head})
                await self._audit(pin, f"commit {pin.sha[:12]} is not on the followed "
                                        f"branch (head {head[:12]}); not reconciled")
            elif verdict == "older":
                log.info("pushed commit is older than the applied one; not going back",
                         extra={"reconcile_id": pin.reconcile_id, "sha": pin.sha,
                                "applied": current})
            else:
                found.append(pin)
        return found[-1] if found else None  # check_pins orders the usable ones oldest first

    def retry(self, pin: Pin, why: str) -> None:
        """Fetch again later (jittered exponential backoff); after the last attempt, say so."""
        pin.attempts += 1
        if pin.attempts > self._retries:
            message = (f"pushed commit {pin.sha[:12]} {why} after {pin.attempts} attempts; "
                       "not reconciled at it (the next poll follows the branch head)")
            metrics.GIT_FETCH_ERRORS.inc()
            self._report(message)
            log.error("webhook push not reconciled", extra={
                "reconcile_id": pin.reconcile_id, "sha": pin.sha, "attempts": pin.attempts,
                "error": message})
            task = asyncio.get_running_loop().create_task(self._audit(pin, message))
            self._audits.add(task)
            task.add_done_callback(self._audits.discard)
            return
        delay = jittered(exponential(pin.attempts, first=self._backoff, cap=30.0), 0.2,
                         floor=TIMER_FLOOR_S)
        log.warning("pushed commit not available yet; fetching again", extra={
            "reconcile_id": pin.reconcile_id, "sha": pin.sha, "attempt": pin.attempts,
            "retry_in_s": round(delay, 2), "reason": why})

        def again() -> None:
            if not self._stopped:
                self.queued.append(pin)
                self._wake(pin.actor)

        asyncio.get_running_loop().call_later(delay, again)

    def stop(self) -> None:
        """No retry queues its pin any more (the daemon is stopping)."""
        self._stopped = True

    async def drain(self) -> None:
        """Wait for the audit events of given-up pushes still being written."""
        await asyncio.gather(*self._audits, return_exceptions=True)

    async def _audit(self, pin: Pin, message: str) -> None:
        try:
            await self._store.record_audit("sync", actor=pin.actor, outcome="failed",
                                           config_commit=pin.sha, message=message)
        except ReconcilerError as exc:
            log.warning("cannot record audit event", extra={"error": exc.message})
