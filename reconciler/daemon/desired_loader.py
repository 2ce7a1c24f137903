"""The daemon's desired state: fetch the config repo, load a commit, and keep the last good desired
state whenever a commit cannot be used — refusing a bad commit as a whole (invalid, against the
operator policy, or referencing an encrypted file it cannot use)."""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Protocol

from reconciler.daemon.config import DaemonConfig
from reconciler.errors import ReconcilerError, SpecError, UnexpectedError
from reconciler.notifications.sink import EventSink
from reconciler.observe import metrics
from reconciler.source.git import GitSource, SyncResult
from reconciler.spec.cache import SpecCache
from reconciler.spec.encrypted import SecretFileRefused
from reconciler.spec.loader import load_desired_state
from reconciler.spec.model import DesiredState
from reconciler.spec.policy import PolicyError
from reconciler.state.store import Store

log = logging.getLogger("reconciler.daemon")


class LoadingDaemon(Protocol):
    """What the loader keeps up to date on the daemon (loop.py ``Daemon``)."""

    desired: DesiredState | None
    last_error: str | None

    @property
    def events(self) -> EventSink | None: ...


class DesiredStateLoader:
    """Sets ``daemon.desired`` to the desired state of the commit a pass runs at, and
    ``daemon.last_error`` to why it could not (the last good desired state stays)."""

    def __init__(self, daemon: LoadingDaemon, cfg: DaemonConfig, source: GitSource,
                 store: Store) -> None:
        self.refused: str | None = None  # the last commit refused as a whole (audited once)
        self._daemon = daemon
        self._cfg = cfg
        self._source = source
        self._store = store

    async def fetch(self) -> SyncResult | None:
        """Fetch (remotes) and resolve the followed ref; None when the repo cannot be read."""
        started = time.monotonic()
        try:
            sync = await asyncio.to_thread(self._source.sync)
        except ReconcilerError as exc:
            metrics.GIT_FETCH_ERRORS.inc()
            self._daemon.last_error = exc.message
            log.error("cannot read config repo; keeping last good desired state",
                      extra=exc.log_fields())
            return None
        metrics.GIT_FETCH_DURATION.observe(time.monotonic() - started)
        if sync.error:
            metrics.GIT_FETCH_ERRORS.inc()
            self._daemon.last_error = f"fetch failed: {sync.error}"
        return sync

    async def refresh(self, pinned: str | None = None, synced: SyncResult | None = None) -> bool:
        """Fetch and load desired state (at ``pinned``, else at the followed ref's head); keep
        the last good one on any failure."""
        daemon = self._daemon
        sync = synced or await self.fetch()
        if sync is None:
            return False
        if pinned is not None:
            sync = SyncResult(pinned, pinned != (daemon.desired.commit if daemon.desired else None),
                              sync.error, sync.duration_s)
        if daemon.desired is not None and daemon.desired.commit == sync.commit:
            if sync.error is None:  # the remote answers again: its error is no longer current
                daemon.last_error = None
            return True
        cache = SpecCache(self._cfg.state_dir / "cache" / "spec")
        try:
            files = await asyncio.to_thread(self._source.files, sync.commit)
            desired = await asyncio.to_thread(load_desired_state, files, commit=sync.commit,
                                              cache=cache, tree=self._source.tree(sync.commit))
        except SecretFileRefused as exc:
            await self._refuse(sync.commit, "secrets", "references an encrypted file that "
                               "cannot be used", exc)
            return daemon.desired is not None
        except PolicyError as exc:
            await self._refuse(sync.commit, "policy", "breaks the operator policy", exc)
            return daemon.desired is not None
        except SpecError as exc:
            metrics.DESIRED_STATE_ERRORS.inc()
            await self._refuse(sync.commit, "invalid", "is invalid", exc)
            return daemon.desired is not None
        except ReconcilerError as exc:
            daemon.last_error = exc.message
            log.error("cannot load desired state", extra=exc.log_fields())
            return daemon.desired is not None
        except Exception as exc:  # a commit must never stop the daemon: keep the last good one
            metrics.DESIRED_STATE_ERRORS.inc()
            failure = UnexpectedError.of(exc)
            daemon.last_error = f"commit {sync.commit[:12]} cannot be loaded: {failure.recorded}"
            log.error("cannot load desired state; keeping last good desired state",
                      exc_info=exc, extra={"commit": sync.commit, **failure.log_fields()})
            return daemon.desired is not None
        desired = desired.only(self._cfg.environments)
        log.info("desired state loaded", extra={"commit": sync.commit,
                                                "resources": len(desired.resources)})
        daemon.desired = desired
        daemon.last_error = None
        return True

    async def _refuse(self, commit: str, reason: str, what: str, exc: SpecError) -> None:
        """A commit refused as a whole: the last good desired state stays, /readyz says why,
        the metric counts it once (the next polls see the same commit again). A policy
        refusal is an act of the operator's policy against a committer: the audit trail
        records it; an invalid commit writes nothing to the store."""
        message = (f"commit {commit[:12]} {what}; nothing applied "
                   f"({len(exc.problems)} problem(s), first: {exc.problems[0]})")
        first_time = self.refused != commit
        self.refused = commit
        self._daemon.last_error = message
        log.error(f"desired state refused ({reason}); keeping last good desired state",
                  extra={"commit": commit, "code": exc.code, "reason": reason,
                         "problems": [str(p) for p in exc.problems]})
        if first_time:
            metrics.DESIRED_STATE_REFUSED.labels(reason).inc()
            events = self._daemon.events
            if events is not None:
                events.desired_refused(commit, reason, message)
        if first_time and isinstance(exc, PolicyError):
            try:
                await self._store.record_audit("refuse", actor=reason, outcome="failed",
                                               config_commit=commit, message=message)
            except ReconcilerError as err:
                log.warning("cannot record audit event", extra={"error": err.message})
