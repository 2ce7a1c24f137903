"""`reconciler apply`: one reconcile pass from the command line, with live per-resource progress
(`reconciler.console.progress`, also used by `rollback`) and a first look for drifted Services
to redeploy."""

from __future__ import annotations

import logging
import sys
from pathlib import Path
from typing import Any

import click

from reconciler.cli.common import (
    Options,
    commit_status_option,
    commit_status_targets,
    emit_json,
    handles_errors,
    install_policy,
    load_commit,
    make_source,
    open_store,
    policy_option,
    run,
    with_repo,
)
from reconciler.notifications.cli_options import apply_notify_options
from reconciler.notifications.settings import NotifySettings
from reconciler.spec.model import DesiredState, ResourceKey

log = logging.getLogger("reconciler.cli")


# -- apply ------------------------------------------------------------------------------------
@click.command()
@with_repo
@click.option("--prune", is_flag=True, help="Delete resources removed from git.")
@click.option("--force", is_flag=True, help="Deploy even revisions that were rolled back.")
@click.option("--live/--no-live", default=True, show_default=True,
              help="Observe applied Services first and redeploy those that drifted.")
@click.option("--ignore-windows", is_flag=True,
              help="Apply now even changes their sync windows defer (operator override).")
@click.option("-o", "--output", type=click.Choice(["text", "json"]), default="text")
@commit_status_option
@apply_notify_options
@policy_option
@click.pass_obj
@handles_errors
def apply(opts: Options, repo: str, ref: str | None, path: str, environments: tuple[str, ...],
          prune: bool, force: bool, live: bool, ignore_windows: bool, output: str,
          commit_status: tuple[str, ...], notify: NotifySettings,
          policy_path: Path | None) -> None:
    """One reconcile pass. Exit 0 converged, 1 a resource failed or was rolled back, 2 error.

    Changes outside their sync windows are deferred (listed, not failed) unless
    --ignore-windows."""
    install_policy(policy_path, opts.resolved_state_dir(), opts.db_url(), repo)
    from reconciler.console.notes import warn_uncommitted
    from reconciler.console.progress import Progress
    from reconciler.console.summary import print_summary
    from reconciler.plan.windows import ignoring_windows

    status_targets = commit_status_targets(commit_status)

    async def main() -> Any:
        from reconciler.notifications.wiring import start_apply_notifications
        from reconciler.rollout.engine import Reconciler

        statuses = None
        if status_targets:  # its module loads httpx (~0.1 s): only when statuses are asked for
            from reconciler.source.commit_status import CommitStatusReporter

            statuses = CommitStatusReporter(status_targets)

        source = make_source(opts, repo, ref, path)
        commit = source.sync().commit
        warn_uncommitted(source, commit)
        desired = load_commit(opts, source, commit)
        store = await open_store(opts)
        progress = Progress(live=sys.stdout.isatty() and output == "text", echo=click.echo)
        progress_of["progress"] = progress
        engine = Reconciler(store, state_dir=opts.resolved_state_dir(), source=source,
                            progress=progress if output == "text" else None,
                            environments=set(environments), status_sink=statuses)
        notifications = None
        try:
            notifications = start_apply_notifications(notify, desired, source, engine, store)
            drifted = await _drifted(engine, desired) if live else set()
            with progress:
                result = await engine.reconcile(desired, trigger="apply", prune=prune,
                                                force=force, redeploy=drifted)
                # A canary paused until promoted: apply waits for `promote` / `abort`.
                result = await engine.settle(result)
            if notifications is not None:
                notifications.pass_finished(result, desired, healed=drifted)
            return result
        finally:
            await engine.close()
            if notifications is not None:  # waits, bounded, for delivery (the store is used)
                await notifications.close(drain_s=10.0)
            await store.close()
            if statuses is not None:  # a one-shot run waits, bounded, for its statuses
                await statuses.aclose(grace=10.0)

    progress_of: dict[str, Progress] = {}
    with ignoring_windows(ignore_windows):
        result = run(main())
    if output == "json":
        emit_json(result.to_json())
    else:
        print_summary(result, progress_of.get("progress"))
    sys.exit(0 if result.converged else 1)


async def _drifted(engine: Any, desired: DesiredState) -> set[ResourceKey]:
    """Applied Services, unchanged or blocked, whose live state differs from the record."""
    from reconciler.rollout.drift import drifted

    return await drifted(engine, desired)
