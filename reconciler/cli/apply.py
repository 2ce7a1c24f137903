"""`reconciler apply`: one reconcile pass from the command line, with live per-resource progress
(`Progress`, also used by `rollback`) and a first look for drifted Services to redeploy."""

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
    style,
    with_repo,
)
from reconciler.errors import ReconcilerError
from reconciler.spec.model import DesiredState, ResourceKey

log = logging.getLogger("reconciler.cli")


# -- apply ------------------------------------------------------------------------------------
class Progress:
    """Live per-resource progress on a TTY (rich); plain lines otherwise."""

    def __init__(self, live: bool) -> None:
        self.live = live
        self.rows: dict[str, tuple[str, str]] = {}
        self._live: Any = None

    def __enter__(self) -> Progress:
        if self.live:
            from rich.live import Live

            self._live = Live(self._table(), refresh_per_second=8, transient=False)
            self._live.__enter__()
        return self

    def __exit__(self, *exc: Any) -> None:
        if self._live is not None:
            self._live.update(self._table())
            self._live.__exit__(*exc)

    def _table(self) -> Any:
        from rich.table import Table

        table = Table(show_header=True, header_style="bold")
        table.add_column("resource")
        table.add_column("phase")
        table.add_column("detail", overflow="fold")
        colour = {"succeeded": "green", "failed": "red", "rolled back": "yellow",
                  "rollback failed": "red", "synced": "green"}
        for key, (phase, detail) in self.rows.items():
            table.add_row(key, f"[{colour.get(phase, 'cyan')}]{phase}[/]", detail)
        return table

    def __call__(self, key: ResourceKey, phase: str, message: str) -> None:
        self.rows[str(key)] = (phase, message)
        if self._live is not None:
            self._live.update(self._table())
        else:
            click.echo(f"{key}: {phase}" + (f" — {message}" if message and message != phase
                                           else ""))


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
@policy_option
@click.pass_obj
@handles_errors
def apply(opts: Options, repo: str, ref: str | None, path: str, environments: tuple[str, ...],
          prune: bool, force: bool, live: bool, ignore_windows: bool, output: str,
          commit_status: tuple[str, ...], policy_path: Path | None) -> None:
    """One reconcile pass. Exit 0 converged, 1 a resource failed or was rolled back, 2 error.

    Changes outside their sync windows are deferred (listed, not failed) unless
    --ignore-windows."""
    install_policy(policy_path, opts.resolved_state_dir(), opts.db_url(), repo)
    from reconciler.plan.windows import ignoring_windows

    status_targets = commit_status_targets(commit_status)

    async def main() -> Any:
        from reconciler.rollout.engine import Reconciler
        from reconciler.source.commit_status import CommitStatusReporter

        statuses = CommitStatusReporter(status_targets) if status_targets else None

        source = make_source(opts, repo, ref, path)
        commit = source.sync().commit
        desired = load_commit(opts, source, commit)
        store = await open_store(opts)
        progress = Progress(live=sys.stdout.isatty() and output == "text")
        engine = Reconciler(store, state_dir=opts.resolved_state_dir(), source=source,
                            progress=progress if output == "text" else None,
                            environments=set(environments), status_sink=statuses)
        try:
            drifted = await _drifted(engine, desired) if live else set()
            with progress:
                result = await engine.reconcile(desired, trigger="apply", prune=prune,
                                                force=force, redeploy=drifted)
                # A canary paused until promoted: apply waits for `promote` / `abort`.
                return await engine.settle(result)
        finally:
            await engine.close()
            await store.close()
            if statuses is not None:  # a one-shot run waits, bounded, for its statuses
                await statuses.aclose(grace=10.0)

    with ignoring_windows(ignore_windows):
        result = run(main())
    if output == "json":
        emit_json(result.to_json())
    else:
        failed = result.failed()
        state = "converged" if result.converged else f"{len(failed)} resource(s) not converged"
        click.echo(f"{state} at {(result.commit or '?')[:12]} in {result.duration_s:.1f}s")
        for out in failed:
            code = f"[{out.code}] " if out.code else ""
            click.echo(style(f"  {out.key}: {out.result} — {code}{out.message}", fg="red"))
            if out.hint:
                click.echo(f"    hint: {out.hint}")
        for out in result.outcomes:
            if out.action == "deferred":
                click.echo(style(f"  {out.key}: deferred — {out.message}", fg="blue"))
    sys.exit(0 if result.converged else 1)


async def _drifted(engine: Any, desired: DesiredState) -> set[ResourceKey]:
    """Applied Services, unchanged or blocked, whose live state differs from the record."""
    from reconciler.plan.planner import BLOCKED, UNCHANGED

    out: set[ResourceKey] = set()
    for item in (await engine.plan(desired)).items:
        if (item.action in (UNCHANGED, BLOCKED) and item.key.kind == "Service"
                and item.resource is not None and item.record is not None):
            try:
                if await engine.drift_of(item.resource, item.record, desired) is not None:
                    out.add(item.key)
            except ReconcilerError as exc:
                log.warning("observe failed", extra={"resource": str(item.key),
                                                     "error": exc.message})
    return out
