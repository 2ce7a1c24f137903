"""The daemon's HTTP application: ``/metrics``, ``/healthz``, ``/readyz``, the read-only API and,
when secrets are configured, the webhook routes."""

from __future__ import annotations

import time
from typing import Any, Protocol

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from reconciler.daemon.config import DaemonConfig
from reconciler.daemon.http_guard import ConnectionGuard
from reconciler.daemon.overrun import PassWatch
from reconciler.observe import metrics
from reconciler.source.git import GitSource
from reconciler.source.webhooks import WebhookEvent
from reconciler.spec.model import DesiredState
from reconciler.state.store import Store


class ServedDaemon(Protocol):
    """What the HTTP application reads of the daemon (loop.py ``Daemon``) and calls."""

    @property
    def cfg(self) -> DaemonConfig: ...

    @property
    def source(self) -> GitSource: ...

    @property
    def store(self) -> Store: ...

    @property
    def ready(self) -> bool: ...

    @property
    def desired(self) -> DesiredState | None: ...

    @property
    def last_error(self) -> str | None: ...

    @property
    def failed_resources(self) -> list[Any]: ...

    @property
    def reconciling(self) -> bool: ...

    @property
    def heartbeat(self) -> float: ...

    @property
    def pass_watch(self) -> PassWatch: ...

    async def on_push(self, event: WebhookEvent) -> str: ...


def http_app(daemon: ServedDaemon, guard: ConnectionGuard | None = None) -> web.Application:
    cfg = daemon.cfg
    app = web.Application(client_max_size=1 << 20,
                          middlewares=[guard.middleware()] if guard else [])

    async def metrics_view(_: web.Request) -> web.Response:
        body = generate_latest(metrics.REGISTRY)
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})

    async def healthz(_: web.Request) -> web.Response:
        # Alive while the loop turns; a wedged loop stops updating the heartbeat.
        stale = (not daemon.reconciling
                 and time.monotonic() - daemon.heartbeat > max(120.0, 4 * cfg.interval))
        return web.json_response({"status": "stale" if stale else "ok"},
                                 status=503 if stale else 200)

    async def readyz(_: web.Request) -> web.Response:
        # Resources that failed in the last pass do not make the daemon unready (it still
        # serves webhooks and retries them); they are listed so a probe or an operator
        # sees them. A pass running past --pass-overrun does (overrun.py).
        failed = [{"resource": str(o.key), "result": o.result, "code": o.code or None,
                   "error": o.message[:500]} for o in daemon.failed_resources[:50]]
        desired = daemon.desired
        overrun = daemon.pass_watch.overrun()
        ready = daemon.ready and overrun is None
        reason = (overrun.reason() if overrun is not None
                  else None if daemon.ready else "no desired state loaded yet")
        body = {"ready": ready, "reason": reason,
                "commit": desired.commit if desired else None,
                "lastError": daemon.last_error, "failed": failed,
                "failedCount": len(daemon.failed_resources),
                "overrun": overrun.as_json() if overrun is not None else None}
        return web.json_response(body, status=200 if ready else 503)

    if cfg.webhook_secrets:
        from reconciler.daemon.webhook_routes import WebhookConfig, webhook_routes

        repos = cfg.webhook_repos or ([cfg.repo] if daemon.source.remote else [])
        config = WebhookConfig(secrets=cfg.webhook_secrets, repo_urls=repos,
                               branches=cfg.webhook_branches,
                               body_timeout=cfg.http.body_timeout)
        app.add_routes(webhook_routes(config, daemon.on_push, daemon.store.record_delivery,
                                      refusals=guard.refusals if guard else None))
    from reconciler.daemon.api_routes import api_routes

    app.add_routes(api_routes(daemon.store, cfg.api_token))
    app.router.add_get("/metrics", metrics_view)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    return app
