"""`reconciler rollback`, `suspend` and `resume`: an operator's manual actions on one resource,
each audited as the user at the keyboard (a refused rollback too)."""

from __future__ import annotations

import contextlib
import sys
from pathlib import Path
from typing import Any

import click

from reconciler.cli.common import (
    Options,
    find_key,
    handles_errors,
    install_policy,
    make_source,
    open_store,
    policy_option,
    run,
    with_repo,
)
from reconciler.errors import ReconcilerError
from reconciler.spec.model import ResourceKey


# -- rollback / suspend / resume ------------------------------------------------------------------
@click.command()
@click.argument("name")
@click.option("--to", "to_revision", default=None, help="Revision (prefix) to go back to.")
@with_repo
@policy_option
@click.pass_obj
@handles_errors
def rollback(opts: Options, name: str, to_revision: str | None, repo: str, ref: str | None,
             path: str, environments: tuple[str, ...], policy_path: Path | None) -> None:
    """Back to the last good (or given) revision, recorded as a manual rollback."""
    # the recorded spec is resolved again: the policy in force now applies to it (FR501)
    install_policy(policy_path, opts.resolved_state_dir(), opts.db_url(), repo)

    async def main() -> Any:
        from reconciler.rollout.engine import Reconciler
        from reconciler.source.git import GitSource

        store = await open_store(opts)
        source: GitSource | None
        try:
            source = make_source(opts, repo, ref, path)
        except ReconcilerError:
            source = None  # releases already on the hosts need no export
        from reconciler.console.progress import Progress

        engine = Reconciler(store, state_dir=opts.resolved_state_dir(), source=source,
                            progress=Progress(live=False, echo=click.echo))
        try:
            key = await find_key(store, name)
            try:
                return await engine.manual_rollback(key, to_revision)
            except ReconcilerError as exc:
                # refused before a deployment existed (nothing to roll back to, lock held):
                # the attempt is audited too; a deployment audits its own outcome
                await _audit_refusal(store, "rollback", key, exc)
                raise
        finally:
            await engine.close()
            await store.close()

    outcome = run(main())
    click.echo(f"{outcome.key}: {outcome.result} — {outcome.message} ({outcome.revision})")
    sys.exit(0 if outcome.result == "succeeded" else 1)


async def _audit_refusal(store: Any, action: str, key: ResourceKey,
                         exc: ReconcilerError) -> None:
    from reconciler.state.audit import cli_actor, current_actor

    with contextlib.suppress(ReconcilerError):  # the refusal is what the user must see
        await store.record_audit(action, actor=current_actor() or cli_actor(), outcome="failed",
                                 resource=key, message=exc.message)


def _set_suspended(opts: Options, name: str, value: bool) -> None:
    async def main() -> ResourceKey:
        from reconciler.state.audit import cli_actor, current_actor

        store = await open_store(opts)
        try:
            key = await find_key(store, name)
            await store.set_suspended(key, value)
            record = await store.get_resource(key)
            await store.record_audit(
                "suspend" if value else "resume", actor=current_actor() or cli_actor(),
                outcome="succeeded", resource=key,
                config_commit=record.config_commit if record else None,
                revision=record.applied_revision if record else None)
            return key
        finally:
            await store.close()

    key = run(main())
    click.echo(f"{key}: {'suspended' if value else 'resumed'}")


@click.command()
@click.argument("name")
@click.pass_obj
@handles_errors
def suspend(opts: Options, name: str) -> None:
    """Pause reconciling a resource."""
    _set_suspended(opts, name, True)


@click.command()
@click.argument("name")
@click.pass_obj
@handles_errors
def resume(opts: Options, name: str) -> None:
    """Resume reconciling a resource."""
    _set_suspended(opts, name, False)
