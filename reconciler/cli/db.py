"""`reconciler db …`: the state database: migrations (migrate, status), a health check, audit
retention (prune-audit) and copying to another database."""

from __future__ import annotations

import sys
from datetime import UTC, datetime
from typing import Any

import click

from reconciler.cli.common import (
    Options,
    emit_json,
    handles_errors,
    open_store,
    retention_option,
    run,
)


# -- db -------------------------------------------------------------------------------------------
@click.group()
def db() -> None:
    """The state database: migrations, health check, copy, audit retention."""


@db.command("migrate")
@click.pass_obj
@handles_errors
def db_migrate(opts: Options) -> None:
    """Apply pending migrations."""

    async def main() -> list[Any]:
        store = await open_store(opts, migrate=False)
        try:
            return list(await store.migrate())
        finally:
            await store.close()

    applied = run(main())
    for m in applied:
        click.echo(f"applied {m.version:03d}_{m.name}")
    click.echo(f"{len(applied)} migration(s) applied" if applied else "up to date")


@db.command("status")
@click.option("-o", "--output", type=click.Choice(["text", "json"]), default="text")
@click.pass_obj
@handles_errors
def db_status(opts: Options, output: str) -> None:
    """Applied and pending migrations. Exit 1 when some are pending."""

    async def main() -> list[Any]:
        store = await open_store(opts, migrate=False)
        try:
            return list(await store.migration_status())
        finally:
            await store.close()

    infos = run(main())
    pending = [m for m in infos if m.applied_at is None]
    if output == "json":
        emit_json({"pending": len(pending), "migrations": [
            {"version": m.version, "name": m.name, "checksum": m.checksum,
             "appliedAt": m.applied_at} for m in infos]})
    else:
        for m in infos:
            when = m.applied_at.isoformat() if m.applied_at else "pending"
            click.echo(f"{m.version:03d}_{m.name}  {when}")
    sys.exit(1 if pending else 0)


@db.command("prune-audit")
@click.option("--older-than", envvar="RECONCILER_AUDIT_RETENTION", default="90d",
              show_default=True, metavar="DAYS|DURATION",
              help="Delete audit events recorded longer ago than this (30d, 30, 720h; 0 deletes "
                   "nothing). Env RECONCILER_AUDIT_RETENTION, the daemon's retention.")
@click.pass_obj
@handles_errors
def db_prune_audit(opts: Options, older_than: str) -> None:
    """Delete old audit events now (the daemon does it hourly, per --audit-retention); the
    pruning itself is audited."""

    retention = retention_option(older_than, "--older-than")
    if retention is None:
        click.echo("retention 0: audit events are kept forever, nothing deleted")
        return
    before = datetime.now(UTC) - retention

    async def main() -> int:
        from reconciler.state.audit import cli_actor, current_actor

        store = await open_store(opts)
        try:
            deleted = int(await store.prune_audit(before))
            await store.record_audit(
                "prune-audit", actor=current_actor() or cli_actor(), outcome="succeeded",
                message=f"deleted {deleted} audit event(s) recorded before "
                        f"{before.isoformat(timespec='seconds')}")
            return deleted
        finally:
            await store.close()

    deleted = run(main())
    click.echo(f"deleted {deleted} audit event(s) recorded before "
               f"{before.isoformat(timespec='seconds')}")


@db.command("check")
@click.option("-o", "--output", type=click.Choice(["text", "json"]), default="text")
@click.pass_obj
@handles_errors
def db_check(opts: Options, output: str) -> None:
    """Store health: reachable, round-trip latency, migrations. Exit 0 ok, 1 pending, 2 error."""
    import time

    async def main() -> dict[str, Any]:
        from reconciler.observe.redact import redact

        store = await open_store(opts, migrate=False)
        try:
            started = time.perf_counter()
            infos = list(await store.migration_status())  # refuses edited applied files
            status_ms = (time.perf_counter() - started) * 1000
            pending = [f"{m.version:03d}_{m.name}" for m in infos if m.applied_at is None]
            count, list_ms = 0, 0.0
            if not pending:  # the tables are only there once migrated
                started = time.perf_counter()
                count = len(await store.list_resources(with_specs=False))
                list_ms = (time.perf_counter() - started) * 1000
            return {"url": redact(opts.db_url()), "reachable": True,
                    "migrationStatusMs": round(status_ms, 2), "resourceListMs": round(list_ms, 2),
                    "resources": count, "pendingMigrations": pending}
        finally:
            await store.close()

    report = run(main())
    if output == "json":
        emit_json(report)
    else:
        click.echo(f"{report['url']}: reachable; migration status {report['migrationStatusMs']} ms,"
                   f" {report['resources']} resources listed in {report['resourceListMs']} ms")
        click.echo("pending migrations: " + (", ".join(report["pendingMigrations"]) or "none"))
    sys.exit(1 if report["pendingMigrations"] else 0)


@db.command("copy")
@click.option("--from", "src_url", required=True, help="Source database URL (e.g. sqlite:///…).")
@click.option("--to", "dst_url", required=True, help="Destination URL (migrated here; must be "
                                                      "empty).")
@handles_errors
def db_copy(src_url: str, dst_url: str) -> None:
    """Copy resources and deployment history to another (empty) database."""

    async def main() -> Any:
        from reconciler.state import open_store as _open
        from reconciler.state.copy import copy_store

        src, dst = _open(src_url), _open(dst_url)
        try:
            await src.migrate()
            await dst.migrate()
            return await copy_store(src, dst)
        finally:
            await src.close()
            await dst.close()

    result = run(main())
    click.echo(f"copied {result.resources} resources, {result.deployments} deployments, "
               f"{result.events} events, {result.steps} steps, {result.audit} audit events")
