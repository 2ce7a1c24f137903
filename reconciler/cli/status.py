"""`reconciler status` and `reconciler history`: what the store records about each resource
(desired vs applied revision, health and how fresh it is, optionally observed live first) and
the deployments of one resource."""

from __future__ import annotations

import sys
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
from reconciler.errors import ReconcilerError
from reconciler.spec.model import DesiredState

# -- status / history ---------------------------------------------------------------------------
DEFAULT_STATUS_MAX_AGE = "10m"


def _age(seconds: float) -> str:
    """A short age for people: 4s, 12m, 2h, 3d."""
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{int(seconds // size)}{unit}"
    return f"{int(seconds)}s"


def health_shown(record: Any, now: datetime, max_age_s: float) -> tuple[str, float | None, bool]:
    """(what `status` shows as a resource's health, seconds since it was observed, stale).
    A Service's health is only as good as its last observation: older than ``max_age_s`` (no
    daemon checking, say) it is shown as unknown, not as the database remembers it."""
    observed = record.health_observed_at
    age = (now - observed).total_seconds() if observed is not None else None
    if record.key.kind != "Service" or record.applied_revision is None or record.suspended:
        return record.health_status, age, False
    if age is None:
        return "Unknown: never observed", None, True
    if age > max_age_s:
        return f"Unknown: not observed for {_age(age)}", age, True
    return f"{record.health_status}, {_age(max(age, 0.0))} ago", age, False


async def observe_live(opts: Options, store: Any, records: list[Any]) -> dict[Any, str]:
    """Observe every applied Service through its provider (as the daemon's drift check does)
    and record what was seen; returns why each one that could not be observed was not."""
    from reconciler.rollout.engine import Reconciler
    from reconciler.rollout.releases import resource_from_document

    recorded = {r.key: resource_from_document(r.key, r.applied_spec)
                for r in records if r.applied_spec and not r.deleted}
    desired = DesiredState(recorded)
    engine = Reconciler(store, state_dir=opts.resolved_state_dir())
    healthy: list[Any] = []
    drifted: list[Any] = []
    failed: dict[Any, str] = {}
    try:
        for record in records:
            resource = recorded.get(record.key)
            if (resource is None or record.key.kind != "Service" or record.suspended
                    or record.applied_revision is None):
                continue
            try:
                detail = await engine.drift_of(resource, record, desired)
            except ReconcilerError as exc:
                failed[record.key] = f"cannot observe: {exc.message}"
                continue
            if detail is None:
                healthy.append(record.key)
            else:
                drifted.append(record.key)
                await store.update_status(record.key, sync_status="OutOfSync",
                                          health_status="Degraded",
                                          last_error=f"live state differs: {detail}")
        await store.mark_observed(healthy, "Healthy")
        await store.mark_observed(drifted)
    finally:
        await engine.close()
    return failed


@click.command()
@click.option("--live", is_flag=True,
              help="Observe applied Services through their providers first (and record it).")
@click.option("--max-age", default=DEFAULT_STATUS_MAX_AGE, show_default=True,
              help="A Service's health observed longer ago than this is shown as unknown.")
@click.option("-o", "--output", type=click.Choice(["text", "json"]), default="text")
@click.pass_obj
@handles_errors
def status(opts: Options, live: bool, max_age: str, output: str) -> None:
    """Desired vs applied revision, health (and how fresh it is) and last result of each
    resource. Exit 0 when every resource is synced and observed healthy recently, else 1."""
    from reconciler.spec.durations import parse_duration

    try:
        max_age_s = parse_duration(max_age)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--max-age") from None

    async def main() -> tuple[list[Any], dict[int, str | None], dict[Any, str]]:
        from reconciler.state.shards import shard_owners

        store = await open_store(opts)
        try:
            unobserved: dict[Any, str] = {}
            if live:
                unobserved = await observe_live(opts, store,
                                                list(await store.list_resources()))
            return (list(await store.list_resources(with_specs=False)),
                    await shard_owners(store), unobserved)
        finally:
            await store.close()

    records, owners, unobserved = run(main())
    from reconciler.state.shards import shard_of

    now = datetime.now(UTC)
    replicas = any(owners.values())  # only when daemons run with --ha
    rows = []
    shown_health: dict[str, str] = {}  # text only: JSON stays a function of the records
    for r in records:
        shown, _, stale = health_shown(r, now, max_age_s)
        if r.key in unobserved:
            shown, stale = f"Unknown: {unobserved[r.key]}", True
        shown_health[str(r.key)] = shown
        rows.append({
            "resource": str(r.key), "environment": r.key.environment, "kind": r.key.kind,
            "name": r.key.name, "desiredRevision": r.desired_revision,
            "appliedRevision": r.applied_revision, "configCommit": r.config_commit,
            "sync": r.sync_status, "health": "Unknown" if stale else r.health_status,
            "recordedHealth": r.health_status, "healthStale": stale,
            "healthObservedAt": (r.health_observed_at.isoformat()
                                 if r.health_observed_at else None),
            "lastResult": r.last_result,
            "lastError": r.last_error, "suspended": r.suspended,
            "updatedAt": r.updated_at.isoformat() if r.updated_at else None,
            "owner": owners.get(shard_of(r.key)) if replicas else None,
        })
    ok = all(r["sync"] == "Synced" and r["health"] == "Healthy" for r in rows)
    if output == "json":
        emit_json({"healthy": ok, "resources": rows})
    else:
        print_table(["RESOURCE", "DESIRED", "APPLIED", "SYNC", "HEALTH", "LAST", "NOTE"], [
            [r["resource"], r["desiredRevision"] or "-", r["appliedRevision"] or "-", r["sync"],
             shown_health[r["resource"]], r["lastResult"] or "-",
             ("suspended " if r["suspended"] else "")
             + (f"owner {r['owner']} " if r["owner"] else "") + (r["lastError"] or "")]
            for r in rows], whole=(0, 1, 2, 3, 5), drop=(1, 2, 5))
    sys.exit(0 if ok else 1)



@click.command()
@click.argument("name")
@click.option("-n", "--limit", default=20, show_default=True)
@click.option("-o", "--output", type=click.Choice(["text", "json"]), default="text")
@click.pass_obj
@handles_errors
def history(opts: Options, name: str, limit: int, output: str) -> None:
    """Deployments of a resource, newest first."""

    async def main() -> list[Any]:
        store = await open_store(opts)
        try:
            key = await find_key(store, name)
            return list(await store.list_deployments(key, limit=limit))
        finally:
            await store.close()

    deployments = run(main())
    docs = [{
        "id": d.id, "deployment": d.identifier, "status": d.status, "trigger": d.trigger,
        "strategy": d.strategy, "fromRevision": d.from_revision, "toRevision": d.to_revision,
        "configCommit": d.config_commit, "error": d.error, "exitCode": d.exit_code,
        "createdAt": d.created_at, "startedAt": d.started_at, "finishedAt": d.finished_at,
        "events": [{"status": e.status, "message": e.message, "at": e.at} for e in d.events],
        "steps": [{"action": s.action, "instance": s.instance, "status": s.status,
                   "detail": s.detail, "startedAt": s.started_at, "finishedAt": s.finished_at}
                  for s in d.steps],
    } for d in deployments]
    if output == "json":
        emit_json(docs)
        return
    print_table(["DEPLOYMENT", "STATUS", "TRIGGER", "FROM", "TO", "COMMIT", "WHEN", "ERROR"], [
        [d["deployment"], d["status"], _short(d["trigger"], 56), d["fromRevision"] or "-",
         d["toRevision"],
         (d["configCommit"] or "-")[:12],
         d["createdAt"].strftime("%Y-%m-%d %H:%M:%S") if d["createdAt"] else "-",
         d["error"] or ""] for d in docs], whole=(0, 1, 3, 4, 5, 6), drop=(5, 3, 2, 6, 4))


def _short(text: str, width: int) -> str:
    """``text`` cut to ``width`` characters for a table cell (JSON output keeps it whole):
    triggers name their actor, e.g. ``webhook:github:<delivery id>`` (51 characters; Bitbucket's
    braced ids 56)."""
    return text if len(text) <= width else text[:width - 1] + "…"
