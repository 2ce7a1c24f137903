"""Start-up and shutdown of the daemon: the store, the source, the engine and the commit statuses
built from its config; signals, the HTTP listener, the background tasks and notifications around
the pass loop; and everything closed, in order, once it stops."""

from __future__ import annotations

import asyncio
import errno
import logging
import signal
import socket

from aiohttp import web

from reconciler.daemon import notify
from reconciler.daemon.config import DaemonConfig
from reconciler.daemon.http_app import http_app
from reconciler.daemon.http_guard import (
    AcceptErrorFilter,
    ConnectionGuard,
    open_fd_count,
    raise_nofile_limit,
)
from reconciler.daemon.loop import Daemon
from reconciler.daemon.wakeups import ShardKeeper
from reconciler.errors import ReconcilerError, os_error_reason
from reconciler.netaddr import host_port
from reconciler.notifications.wiring import start_notifications
from reconciler.observe import metrics
from reconciler.observe.tracing import setup_tracing, shutdown_tracing
from reconciler.rollout.engine import Reconciler
from reconciler.source.git import GitSource
from reconciler.state import open_store

log = logging.getLogger("reconciler.daemon")


async def run_daemon(cfg: DaemonConfig) -> int:
    setup_tracing("fraisier")
    try:
        return await _build_and_serve(cfg)
    finally:
        shutdown_tracing()


async def serve(daemon: Daemon) -> int:
    """Run ``daemon`` until signalled (SIGTERM, SIGINT; SIGHUP reloads), then shut it down."""
    cfg = daemon.cfg
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGTERM, daemon.stop)
    loop.add_signal_handler(signal.SIGINT, daemon.stop)
    loop.add_signal_handler(signal.SIGHUP, daemon.reload)
    # Descriptors first: clients must never take the ones git, SQLite and pidfile reads need.
    soft, hard = raise_nofile_limit()
    guard = ConnectionGuard(cfg.http, soft_limit=soft, open_fds=open_fd_count())
    accept_errors = AcceptErrorFilter(guard.refusals)
    logging.getLogger("asyncio").addFilter(accept_errors)
    runner = web.AppRunner(http_app(daemon, guard), access_log=None)
    await runner.setup()
    assert runner.server is not None
    # Not a TCPSite: every accepted connection goes through the guard's protocol factory.
    try:
        http = await loop.create_server(guard.factory(runner.server), cfg.listen_host,
                                        cfg.listen_port, reuse_address=True,
                                        backlog=cfg.http.backlog)
    except OSError as exc:
        await runner.cleanup()
        logging.getLogger("asyncio").removeFilter(accept_errors)
        raise _listen_error(cfg.listen_host, cfg.listen_port, exc) from None
    log.info("daemon listening", extra={"listen": f"{cfg.listen_host}:{cfg.listen_port}",
                                        "repo": daemon.source.display_url,
                                        "path": daemon.source.path,
                                        "open_files_limit": [soft, hard],
                                        "max_connections": guard.max_connections,
                                        "fd_ceiling": guard.fd_ceiling})

    def stopping() -> bool:
        return daemon.stopping

    metrics.RECONCILE_AGE.set_function(daemon.pass_watch.age)
    metrics.PASS_OVERRUN_LIMIT.set(daemon.pass_watch.limit)  # what FraisierPassOverrun compares

    background = [asyncio.create_task(daemon.scheduler.run()),
                  asyncio.create_task(daemon.self_heal.run()),
                  asyncio.create_task(notify.feed_watchdog(stopping)),
                  asyncio.create_task(daemon.retention.run())]
    keeper = ShardKeeper(daemon.leases, daemon.trigger) if daemon.leases is not None else None
    if keeper is not None:
        await keeper.start()  # a share taken before the first pass
    if not daemon.source.remote:
        background.append(asyncio.create_task(daemon.local_watch.run()))
    notifications = start_notifications(daemon, cfg.notify, cfg.state_dir)
    try:
        await daemon.main_loop()
    finally:
        await notifications.close()
        for task in background:
            task.cancel()
        await daemon.scheduler.finish_runs(30)
        await asyncio.gather(*background, daemon.pins.drain(), return_exceptions=True)
        http.close()
        await runner.cleanup()
        guard.refusals.close()
        logging.getLogger("asyncio").removeFilter(accept_errors)
        if keeper is not None:
            await keeper.stop()  # leases released: the other replicas take over at once
        await daemon.engine.close()
        await daemon.store.close()
    log.info("daemon stopped")
    return 0


def _listen_error(host: str, port: int, exc: OSError) -> ReconcilerError:
    """Why the HTTP listener could not bind, and what to do: checked before the first pass, so
    a daemon that cannot serve /metrics and webhooks never starts deploying."""
    where = host_port(host, port)
    reason = os_error_reason(exc).lower()
    if exc.errno == errno.EADDRINUSE:
        hint = (f"another process has port {port} (`ss -ltnp 'sport = :{port}'` shows which): "
                "stop it, or give this daemon another --listen HOST:PORT")
    elif exc.errno == errno.EADDRNOTAVAIL:
        hint = f"{host} is not an address of this machine: --listen takes a local address"
    elif exc.errno == errno.EACCES:
        hint = "ports below 1024 need CAP_NET_BIND_SERVICE: use a port from 1024 up"
    elif isinstance(exc, socket.gaierror):
        hint = f"{host} does not resolve here: --listen takes a local address or name"
    else:
        hint = "check --listen HOST:PORT"
    return ReconcilerError(f"cannot listen on {where}: {reason}", hint=hint)


def _followed_branch(source: GitSource) -> list[str]:
    """The branch the daemon follows (its --ref, else what HEAD names), for webhook matching:
    pushes to other branches must not trigger. Empty when it cannot be told (detached HEAD)."""
    if source.ref:
        return [source.ref.removeprefix("refs/heads/")]
    try:
        source.sync()
        return [str(source.repo.head.reference.name)]
    except (ReconcilerError, TypeError, ValueError):
        return []


async def _build_and_serve(cfg: DaemonConfig) -> int:
    store = open_store(cfg.db_url)
    await store.migrate()
    source = GitSource(cfg.repo, ref=cfg.ref, path=cfg.path, state_dir=cfg.state_dir)
    if cfg.webhook_secrets and not cfg.webhook_branches:
        cfg.webhook_branches = await asyncio.to_thread(_followed_branch, source)
    if cfg.webhook_secrets and not (cfg.webhook_repos or source.remote):
        log.warning("webhooks enabled but no repository URL to match pushes against: every "
                    "push will be ignored; pass --webhook-repo URL")
    leases = None
    if cfg.ha:
        from reconciler.rollout.engine import process_identity
        from reconciler.state.shards import ShardLeases

        # a store of its own: its heartbeats never wait for a connection a pass holds
        leases = ShardLeases(open_store(cfg.db_url), process_identity(), ttl=cfg.shard_ttl)
    statuses = None
    if cfg.commit_status:
        from reconciler.source.commit_status import CommitStatusReporter

        statuses = CommitStatusReporter(cfg.commit_status)
    engine = Reconciler(store, state_dir=cfg.state_dir, source=source,
                        environments=cfg.environments,
                        owns=leases.owns if leases is not None else None, status_sink=statuses)
    try:
        return await serve(Daemon(cfg, store, source, engine, leases=leases))
    finally:
        if statuses is not None:  # what is queued gets a few seconds, then shutdown goes on
            await statuses.aclose(grace=5.0)
