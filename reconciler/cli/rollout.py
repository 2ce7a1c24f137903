"""`reconciler promote|abort NAME` and `reconciler lock status`: talking to rollouts in progress.

Added to the main group by ``reconciler.cli``. Signals go through the database (see
``reconciler.rollout.control``), so they reach a rollout run by the daemon on another host.
"""

from __future__ import annotations

import getpass
import os
import socket
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
from reconciler.rollout import control


def cli_actor() -> str:
    """Who is at the keyboard, as recorded with a signal: ``cli:user@host``."""
    try:
        user = getpass.getuser()
    except (KeyError, OSError):
        user = str(os.getuid())
    return f"cli:{user}@{socket.gethostname()}"


def _signal(opts: Options, name: str, verb: str) -> tuple[bool, str]:
    """Send ``verb`` to the rollout of NAME: (a rollout in progress got it, what happened)."""

    async def main() -> tuple[bool, str]:
        store = await open_store(opts)
        try:
            key = await find_key(store, name)
            await control.send(store, key, verb, cli_actor())
            running = [d for d in await store.unfinished_deployments() if d.key == key]
            if not running:
                await control.consume(store, key, verb)  # nobody would read it: do not leave it
                message = f"{key}: no rollout in progress; nothing to {verb.split('-')[0]}"
                await store.record_audit(verb, actor=cli_actor(), outcome="cancelled",
                                         resource=key, message=message)
                return False, message
            dep = running[0]
            message = f"{key}: {verb} sent to deployment {dep.identifier}"
            await store.record_audit(verb, actor=cli_actor(), outcome="succeeded", resource=key,
                                     deployment=dep.identifier, config_commit=dep.config_commit,
                                     revision=dep.to_revision, message=message)
            return True, message
        finally:
            await store.close()

    return run(main())


@click.command()
@click.argument("name")
@click.option("--full", is_flag=True, help="Skip every remaining step (pauses, analysis) and "
                                           "promote the new revision everywhere.")
@click.pass_obj
@handles_errors
def promote(opts: Options, name: str, full: bool) -> None:
    """Continue a paused rollout (canary pause, blue-green scale-down delay).

    Exit 0 when a rollout in progress got the signal, 1 when there is none."""
    delivered, message = _signal(opts, name, control.PROMOTE_FULL if full else control.PROMOTE)
    click.echo(message)
    raise SystemExit(0 if delivered else 1)


@click.command()
@click.argument("name")
@click.pass_obj
@handles_errors
def abort(opts: Options, name: str) -> None:
    """Abort a rollout in progress: it is rolled back and its revision is not retried until a
    new commit. Exit 0 when a rollout got the signal, 1 when there is none."""
    delivered, message = _signal(opts, name, control.ABORT)
    click.echo(message)
    raise SystemExit(0 if delivered else 1)


@click.group()
def lock() -> None:
    """Resource locks (one rollout per resource at a time, across processes)."""


@lock.command("status")
@click.option("-o", "--output", type=click.Choice(["text", "json"]), default="text")
@click.pass_obj
@handles_errors
def lock_status(opts: Options, output: str) -> None:
    """Every lock and lease: who holds it, since when, until when. Exit 0."""
    from reconciler.rollout.engine import owner_alive

    async def main() -> list[Any]:
        store = await open_store(opts)
        try:
            return list(await store.list_locks())
        finally:
            await store.close()

    now = datetime.now(UTC)
    rows = []
    for info in run(main()):
        expires = info.expires_at if info.expires_at.tzinfo else info.expires_at.replace(
            tzinfo=UTC)
        alive = owner_alive(info.owner)
        state = "expired" if expires <= now else (
            "held" if alive is not False else "stale (owner dead)")
        rows.append({"name": info.name, "owner": info.owner, "state": state,
                     "acquiredAt": info.acquired_at.isoformat(),
                     "expiresAt": expires.isoformat(),
                     "expiresIn": round((expires - now).total_seconds(), 1)})
    if output == "json":
        emit_json(rows)
        return
    if not rows:
        click.echo("no locks held")
        return
    print_table(["LOCK", "OWNER", "STATE", "EXPIRES IN"],
                 [[r["name"], r["owner"], r["state"], f"{r['expiresIn']:g}s"] for r in rows])
