"""The daemon: source change → plan → apply, forever — the pass loop and the ``Daemon`` that owns
its collaborators (desired_loader.py, pins.py, schedules.py, heal.py, retention.py, wakeups.py;
http_app.py serves it, startup.py starts and stops it).

Triggers: a new commit seen by ``watchfiles`` on the local repo's refs (≈0.1 s), a poll every
``interval`` with jitter (remotes; also a periodic full resync), retries of failed resources with
jittered exponential backoff, drift found by the self-heal loop, and webhooks. SIGTERM lets the
current provider step finish, starts nothing new, and exits 0.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from reconciler.backoff import TIMER_FLOOR_S, exponential, jittered
from reconciler.daemon import notify
from reconciler.daemon.config import DaemonConfig
from reconciler.daemon.desired_loader import DesiredStateLoader
from reconciler.daemon.heal import SelfHeal
from reconciler.daemon.overrun import PassWatch, default_limit
from reconciler.daemon.pins import Pin, PinTracker
from reconciler.daemon.retention import Retention
from reconciler.daemon.schedules import Scheduler
from reconciler.daemon.wakeups import LocalRefsWatch
from reconciler.errors import ReconcilerError, UnexpectedError
from reconciler.notifications.sink import EventSink
from reconciler.plan.windows import earliest_open
from reconciler.rollout.engine import Reconciler
from reconciler.source.git import GitSource, SyncResult
from reconciler.source.webhooks import WebhookEvent
from reconciler.spec.model import DesiredState, ResourceKey
from reconciler.state.audit import acting_as, actor_for_trigger
from reconciler.state.store import Store

if TYPE_CHECKING:
    from reconciler.state.shards import ShardLeases

log = logging.getLogger("reconciler.daemon")


@dataclass
class Daemon:
    cfg: DaemonConfig
    store: Store
    source: GitSource
    engine: Reconciler
    desired: DesiredState | None = None
    ready: bool = False
    stopping: bool = False
    wake: asyncio.Event = field(default_factory=asyncio.Event)
    reasons: set[str] = field(default_factory=set)
    failures: int = 0
    retry_at: float | None = None
    redeploy: set[ResourceKey] = field(default_factory=set)
    heartbeat: float = field(default_factory=time.monotonic)
    last_error: str | None = None
    failed_resources: list[Any] = field(default_factory=list)  # Outcomes failed last pass
    reconciling: bool = False
    leases: ShardLeases | None = None  # when running as one of several replicas
    passed: asyncio.Event = field(default_factory=asyncio.Event)  # a first pass has run
    window_at: datetime | None = None  # a deferred change's sync window opens: run a pass then
    events: EventSink | None = None  # notifications (reconciler/notifications/)
    # what the daemon owns, one job each
    loader: DesiredStateLoader = field(init=False, repr=False)
    pins: PinTracker = field(init=False, repr=False)  # verified pushes waiting for a pass
    scheduler: Scheduler = field(init=False, repr=False)
    self_heal: SelfHeal = field(init=False, repr=False)
    retention: Retention = field(init=False, repr=False)
    local_watch: LocalRefsWatch = field(init=False, repr=False)  # started for a local repo
    pass_watch: PassWatch = field(init=False, repr=False)  # a pass running past its limit

    def __post_init__(self) -> None:
        self.loader = DesiredStateLoader(self, self.cfg, self.source, self.store)
        self.pins = PinTracker(self.source, self.store, retries=self.cfg.pin_retries,
                               backoff=self.cfg.pin_backoff, wake=self.trigger,
                               report=self.report_error)
        self.scheduler = Scheduler(self.engine, self.store, lambda: self.desired,
                                   lambda: self.stopping)
        self.self_heal = SelfHeal(self, self.cfg, self.engine, self.store)
        self.retention = Retention(self.cfg, self.store, self.passed, lambda: self.stopping)
        self.local_watch = LocalRefsWatch(self.source, self.trigger)
        self.pass_watch = PassWatch(self.cfg.pass_overrun or default_limit(self.cfg.interval),
                                    lambda: self.engine.applying)

    def trigger(self, reason: str) -> None:
        self.reasons.add(reason)
        self.wake.set()

    def queue_redeploy(self, keys: set[ResourceKey]) -> None:
        """Drifted resources: the next pass redeploys them."""
        self.redeploy |= keys
        self.trigger("drift")

    async def on_push(self, event: WebhookEvent) -> str:
        """A verified push: the next pass runs at its commit (pins.py ``queue_push``)."""
        return self.pins.queue_push(event)

    def report_error(self, message: str) -> None:
        """Set what /readyz shows as the last error (``lastError``)."""
        self.last_error = message

    # -- the loop ----------------------------------------------------------------------------
    async def reconcile_once(self) -> None:
        # Take all at once (before any await): a drift found meanwhile waits for the next pass.
        reasons, self.reasons = self.reasons, set()
        redeploy, self.redeploy = self.redeploy, set()
        pins = self.pins.take()
        if redeploy:
            reasons.add("drift")
        pinned: Pin | None = None
        synced: SyncResult | None = None
        if pins:
            # Webhook passes run exactly at the pushed commit, not at whatever the branch
            # points to by now. Other wake-ups of this pass (poll, watch, …) follow the branch
            # head: they get a pass of their own right after this one.
            synced = await self.loader.fetch()
            if synced is None:
                for pin in pins:
                    self.pins.retry(pin, "the config repo cannot be read")
                self.redeploy |= redeploy
                return
            current = self.desired.commit if self.desired is not None else None
            pinned = await self.pins.choose(pins, synced.commit, current)
            others = {r for r in reasons if not r.startswith("webhook:")}
            if pinned is None and not others and not redeploy:
                return  # nothing left to do: older than what is applied, missing, off-branch
            if pinned is not None:
                reasons = {pinned.actor}
                if others:
                    self.reasons |= others
                    self.wake.set()
        if not await self.loader.refresh(pinned.sha if pinned else None, synced) \
                or self.desired is None:
            self.redeploy |= redeploy
            notify.status(f"no usable desired state: {self.last_error}")
            return
        if not self.ready:
            notify.ready(f"loaded {(self.desired.commit or '')[:12]}: "
                         f"{len(self.desired.resources)} resources")
        self.ready = True
        trigger = ",".join(sorted(reasons)) or "poll"
        actor = actor_for_trigger(trigger)
        if actor == "replica":  # a share of the shards moved to this replica
            actor = f"replica:{self.engine.owner}"
        if pinned is not None:
            log.info("webhook pass pinned to the pushed commit",
                     extra={"reconcile_id": pinned.reconcile_id, "sha": pinned.sha,
                            "trigger": trigger})
        share = self.leases.one_pass() if self.leases is not None else contextlib.nullcontext()
        with acting_as(actor), share:  # the actor the audit trail names; the shards it acts on
            result = await self.engine.reconcile(self.desired, trigger=trigger,
                                                 prune=self.cfg.prune, redeploy=redeploy)
        if self.events is not None:
            self.events.pass_finished(result, self.desired, healed=redeploy)
        failed = [o for o in result.failed() if not o.waiting]
        # blocked / orphaned resources wait for an operator: not failures of this pass
        self.failed_resources = [o for o in failed if o.result not in ("blocked", "orphan")]
        retryable = [o for o in failed if o.result in ("failed", "cancelled")]
        if retryable:
            self.failures += 1
            delay = jittered(exponential(self.failures + 1, first=1.0, cap=self.cfg.max_backoff),
                             0.5, floor=TIMER_FLOOR_S)
            self.retry_at = time.monotonic() + delay
            log.warning("resources failed; retrying with backoff",
                        extra={"resources": [str(o.key) for o in retryable],
                               "retry_in_s": round(delay, 1)})
        else:
            self.failures, self.retry_at = 0, None
        deferred = [o.key for o in result.outcomes if o.action == "deferred"]
        self.window_at = earliest_open(self.desired, deferred, datetime.now(UTC))
        if self.window_at is not None:
            log.info("changes deferred by sync windows; pass scheduled when one opens",
                     extra={"resources": len(deferred), "opens_at": self.window_at.isoformat()})
        notify.status(f"{(result.commit or '')[:12]}: "
                      f"{'converged' if result.converged else 'not converged'}, "
                      f"{len(result.failed())} failed, trigger {trigger}, "
                      f"{result.duration_s:.1f}s")
        log.info("reconcile pass done", extra={
            "commit": result.commit, "converged": result.converged,
            "duration_s": round(result.duration_s, 3), "trigger": trigger})

    async def main_loop(self) -> None:
        self.trigger("startup")
        while not self.stopping:
            self.heartbeat = time.monotonic()
            timeout = jittered(self.cfg.interval, floor=TIMER_FLOOR_S)
            if self.retry_at is not None:
                timeout = min(timeout, max(0.0, self.retry_at - time.monotonic()))
            if self.window_at is not None:  # + a margin: wake once the window is open
                opens_in = (self.window_at - datetime.now(UTC)).total_seconds() + 0.05
                timeout = min(timeout, max(0.2, opens_in))
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(timeout):
                    await self.wake.wait()
            self.wake.clear()
            if self.stopping:
                break
            if not self.reasons and self.window_at and datetime.now(UTC) >= self.window_at:
                self.reasons.add("window")
            if not self.reasons:
                self.reasons.add("retry" if self.retry_at and time.monotonic() >= self.retry_at
                                 else "poll")
            self.reconciling = True
            try:
                with self.pass_watch.running():
                    await self.reconcile_once()
            except ReconcilerError as exc:
                log.error("reconcile pass failed", extra=exc.log_fields())
                self.retry_at = time.monotonic() + jittered(10.0)
            except Exception as exc:
                # Nothing in the desired state may end the daemon: the pass failed, the next
                # one retries with backoff (systemd's restart would only hit it again).
                failure = UnexpectedError.of(exc)
                log.error("reconcile pass failed unexpectedly; retrying with backoff",
                          exc_info=exc, extra=failure.log_fields())
                self.last_error = failure.recorded
                self._back_off()
            finally:
                self.reconciling = False
                self.passed.set()

    def _back_off(self) -> None:
        """After a pass that failed unexpectedly: retry after 10 s, 20 s, … up to
        max_backoff (5 min), jittered (never a hot loop on a commit that breaks every pass)."""
        self.failures += 1
        self.retry_at = time.monotonic() + jittered(
            exponential(self.failures, first=10.0, cap=self.cfg.max_backoff), 0.2)

    def reload(self) -> None:
        """SIGHUP (`systemctl reload`): fetch and reconcile now."""
        log.info("reload requested (SIGHUP)")
        notify.status("reload requested (SIGHUP)")
        self.trigger("sighup")

    def stop(self) -> None:
        if not self.stopping:
            log.info("stopping: finishing the current step")
            notify.stopping()
        self.stopping = True
        self.engine.stopping = True
        self.pins.stop()
        self.local_watch.stop()
        self.wake.set()
