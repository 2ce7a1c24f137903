"""`reconciler diff --base REF` and `diff -o markdown`: the plan of a change, for a pull request.

Called by the ``diff`` command (``reconciler.cli.plan``). Without ``--db`` nothing but the config
repository is read: the base commit stands in for the recorded state
(``reconciler.plan.compare``). With ``--db`` the head is planned against the recorded state,
read only (``SELECT`` on the view ``v_resource``: docs/pull-requests.md).
"""

from __future__ import annotations

import sys
from datetime import UTC, datetime
from typing import Any

import click

from reconciler.cli.common import Options, emit_json, load_commit, make_source, run
from reconciler.console.notes import warn
from reconciler.console.pipes import echo_long
from reconciler.errors import ReconcilerError
from reconciler.plan.report import PlanReport, render_markdown, render_text
from reconciler.source.worktree import uncommitted_warning


def parse_at(text: str | None) -> datetime | None:
    """``--at``: an ISO 8601 time (no zone: UTC) at which sync windows are evaluated."""
    if text is None:
        return None
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        raise click.BadParameter(f"{text!r} is not an ISO 8601 time (2026-12-04T15:00:00Z)",
                                 param_hint="--at") from None
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)


def plan_report(opts: Options, *, repo: str, ref: str | None, path: str, base: str | None,
                environments: tuple[str, ...], prune: bool, at: datetime | None) -> PlanReport:
    """Plan the head (``ref``) against the base commit, or against the recorded state when a
    database was named (``--db`` / ``RECONCILER_DB``)."""
    from reconciler.plan.compare import plan_against, records_of
    from reconciler.source.revisions import Revisions

    source = make_source(opts, repo, ref, path)
    head_commit = source.sync().commit
    base_commit = source.resolve(base) if base is not None else None
    warnings = []
    dirty = uncommitted_warning(source, head_commit)
    if dirty is not None:
        warnings.append(dirty)
    head = load_commit(opts, source, head_commit)
    revisions = Revisions(source, opts.resolved_state_dir())
    unresolved: dict[Any, Exception] = {}
    head_revisions = revisions.resolve(head, unresolved)
    base_state = None
    if opts.db is not None:
        records = run(_recorded(opts))
        against = "database"
    elif base_commit is not None:
        base_state = load_commit(opts, source, base_commit)
        records = records_of(base_state, revisions.resolve(base_state, unresolved))
        against = "base"
    else:
        raise click.UsageError("-o markdown plans a change: give --base REF (the commit it "
                               "starts from) or --db URL (the recorded state)")
    for key, exc in unresolved.items():
        message = exc.message if isinstance(exc, ReconcilerError) else type(exc).__name__
        warnings.append(f"{key}: revision unknown ({message})")
    plan = plan_against(head, records, head_revisions, prune=prune, now=at,
                        environments=environments)
    return PlanReport(plan, head, base_state, base_commit, against, warnings)


async def _recorded(opts: Options) -> list[Any]:
    from reconciler.state import open_store

    store = open_store(opts.db_url())  # not migrated: planning only reads
    try:
        return list(await store.list_resources(with_specs=True))
    finally:
        await store.close()


def diff_change(opts: Options, *, repo: str, ref: str | None, path: str, base: str | None,
                environments: tuple[str, ...], prune: bool, at: str | None, output: str,
                max_chars: int) -> None:
    """Render the plan; exit 0 no change, 1 changes (deferred ones too), 2 error."""
    report = plan_report(opts, repo=repo, ref=ref, path=path, base=base,
                         environments=environments, prune=prune, at=parse_at(at))
    for warning in report.warnings:
        warn(warning)
    if output == "json":
        emit_json(report.to_json())
    elif output == "markdown":
        echo_long(render_markdown(report, max_chars=max_chars))
    else:
        for line in render_text(report):
            click.echo(line)
    sys.exit(0 if report.plan.in_sync else 1)
