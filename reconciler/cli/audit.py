"""`reconciler audit`: the audit trail, newest first, filtered by resource (a pruned one too) and
by time (`--since` an ISO-8601 time or a duration ago)."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import click

from reconciler.cli.common import (
    Options,
    emit_json,
    find_key,
    handles_errors,
    open_store,
    print_table,
    run,
)
from reconciler.errors import NotFound
from reconciler.observe.printable import printable
from reconciler.spec.model import ResourceKey


@click.command()
@click.argument("name", required=False)
@click.option("-n", "--limit", default=50, show_default=True, help="At most this many events "
                                                                   "(0: all).")
@click.option("--since", default=None, metavar="TIME|DURATION",
              help="Only events at or after an ISO-8601 time (2026-11-26T10:00, UTC when no "
                   "zone is given) or this long ago (Go duration: 30m, 24h).")
@click.option("-o", "--output", type=click.Choice(["text", "json"]), default="text")
@click.pass_obj
@handles_errors
def audit(opts: Options, name: str | None, limit: int, since: str | None, output: str) -> None:
    """Audit trail, newest first: who changed what (deploy, rollback, prune, suspend, resume…),
    triggered by what (webhook delivery, poll, watch, heal, schedule, CLI user), at which
    commit and revision, with which outcome."""
    cutoff = _since(since) if since else None

    async def main() -> list[Any]:
        store = await open_store(opts)
        try:
            key = await _audit_key(store, name) if name else None
            return list(await store.list_audit(limit, resource=key, since=cutoff))
        finally:
            await store.close()

    docs = [{
        "id": e.id, "identifier": e.identifier, "at": e.at, "actor": e.actor,
        "action": e.action, "resource": e.resource, "deployment": e.deployment,
        "configCommit": e.config_commit, "revision": e.revision, "outcome": e.outcome,
        "message": e.message,
    } for e in run(main())]
    if output == "json":
        emit_json(docs)
        return
    if not docs:
        click.echo("no audit events")
        return
    print_table(["WHEN", "ACTOR", "ACTION", "RESOURCE", "OUTCOME", "COMMIT", "REVISION",
                  "MESSAGE"], [
        [d["at"].strftime("%Y-%m-%d %H:%M:%S"), d["actor"], d["action"], d["resource"] or "-",
         d["outcome"], (d["configCommit"] or "-")[:12], (d["revision"] or "-")[:12],
         (d["message"] or "").splitlines()[0] if d["message"] else ""] for d in docs])


def _since(text: str) -> Any:
    from datetime import timedelta

    from reconciler.spec.durations import parse_duration
    from reconciler.state.audit import utc_time

    try:
        return datetime.now(UTC) - timedelta(seconds=parse_duration(text))
    except ValueError:
        pass
    except OverflowError:  # longer ago than year 1: every event
        return datetime.min.replace(tzinfo=UTC)
    try:
        return utc_time(text)
    except ValueError:
        raise click.BadParameter(f"{printable(text)!r} is neither an ISO-8601 time (year 1 to "
                                 "9999 in UTC) nor a duration such as 30m or 24h",
                                 param_hint="--since") from None


async def _audit_key(store: Any, name: str) -> ResourceKey:
    """Like find_key, but a deleted (pruned) resource still has its audit trail."""
    try:
        return await find_key(store, name)
    except NotFound:
        if len(name.split("/")) != 3:
            deleted = [r.key for r in await store.list_resources(include_deleted=True)
                       if r.deleted and r.key.name == name.split("/")[-1]]
            if len(deleted) == 1:
                return deleted[0]
            raise
        env, kind, short = name.split("/")
        return ResourceKey(env, kind, short)
