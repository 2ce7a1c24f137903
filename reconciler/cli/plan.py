"""`reconciler validate` and `reconciler diff`: read the desired state (a folder, or a commit of
the config repository), check it and plan against the recorded state without acting;
`render_plan` prints a plan for people."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import click

from reconciler.cli.common import (
    Options,
    emit_json,
    handles_errors,
    install_policy,
    load_commit,
    make_source,
    open_store,
    policy_option,
    run,
    spec_cache,
    style,
    with_repo,
)
from reconciler.cli.render import add_origins_to_plan_json, check_environments, origins_under


# -- validate ---------------------------------------------------------------------------------
@click.command()
@click.argument("path", default=".", type=click.Path(path_type=Path))
@click.option("-e", "--environment", "environments", multiple=True,
              help="Only report this environment (repeatable; everything is still checked); "
                   "`reconciler render -e ENV` prints it.")
@policy_option
@click.pass_obj
@handles_errors
def validate(opts: Options, path: Path, environments: tuple[str, ...],
             policy_path: Path | None) -> None:
    """Load and schema-check the desired state in PATH (a plain folder or a work tree), and
    check it against the operator policy.

    Safe on untrusted trees (pull requests in CI): a symbolic link is followed only to a file
    inside PATH; one leading out of it is reported, never read. PATH itself must not be a
    symbolic link."""
    from reconciler.spec.loader import files_from_directory, load_desired_state
    from reconciler.spec.tree import DirectoryTree, work_tree_of

    install_policy(policy_path, None, None, path)
    if not path.exists():
        click.echo(f"{path}: no such file or directory", err=True)
        sys.exit(2)
    files = files_from_directory(path)
    if not files:
        click.echo(f"{path}: no *.yaml or *.yml file (hidden files and folders are skipped); "
                   "is PATH the folder of the desired state?", err=True)
        sys.exit(2)
    # source.path is rooted at the repository: checked when PATH is in a work tree
    top = work_tree_of(path)
    state = load_desired_state(files, tree=DirectoryTree(top) if top is not None else None)
    if not state.resources and not state.notifiers:
        click.echo(f"{path}: {len(files)} file(s) but no YAML document in them: nothing to "
                   "validate", err=True)
        sys.exit(2)
    check_environments(state, environments)
    state = state.only(set(environments))
    counts: dict[str, int] = {}
    for key in [*state.resources, *state.notifiers]:
        counts[key.kind] = counts.get(key.kind, 0) + 1
    summary = ", ".join(f"{n} {k}" for k, n in sorted(counts.items())) or "no resources"
    from reconciler.providers.sandbox import sandbox_off_warnings

    for warning in sandbox_off_warnings(state.resources.values()):
        click.echo(f"warning: {warning}; see docs/sandboxing.md", err=True)
    click.echo(f"valid: {len(files)} files, {summary}")


# -- diff -------------------------------------------------------------------------------------
def render_plan(plan: Any, origins: Any = None) -> None:
    from reconciler.plan.planner import SYMBOLS, UNCHANGED

    colours = {"create": "green", "update": "yellow", "delete": "red", "orphan": "red",
               "blocked": "magenta", "suspended": "cyan", "deferred": "blue"}
    counts = plan.counts()
    summary = ", ".join(f"{n} {a}" for a, n in sorted(counts.items()))
    click.echo(f"Plan at commit {(plan.commit or '?')[:12]}: {summary or 'nothing'}")
    for item in plan.items:
        if item.action == UNCHANGED:
            continue
        sym = SYMBOLS.get(item.action, "?")
        head = f"{sym} {item.key}  ({item.action}"
        head += f": {item.reason})" if item.reason else ")"
        click.echo(style(head, fg=colours.get(item.action), bold=True))
        for change in item.changes[:50]:
            if change.op == "~":
                line = f"    ~ {change.path}: {json.dumps(change.old)} -> {json.dumps(change.new)}"
            elif change.op == "+":
                line = f"    + {change.path}: {json.dumps(change.new)}"
            else:
                line = f"    - {change.path}"
            click.echo(style(line, fg={"~": "yellow", "+": "green", "-": "red"}[change.op]))
            for origin in origins_under(origins, item.key, change.path):
                click.echo(f"        {origin}")
        if len(item.changes) > 50:
            click.echo(f"    … {len(item.changes) - 50} more changes")
    if plan.in_sync:
        click.echo("In sync.")


@click.command()
@with_repo
@click.option("--prune", is_flag=True, help="Plan deletion of resources removed from git.")
@click.option("--live", is_flag=True,
              help="Also observe applied Services through their providers and show drift "
                   "(stopped, replaced or changed by hand).")
@click.option("--base", default=None, metavar="REF",
              help="Plan the change from this commit to --ref (a pull request's): no host "
                   "and no database unless --db is given (then against the recorded state, "
                   "read only).")
@click.option("--at", default=None, metavar="TIME",
              help="With --base or -o markdown: evaluate sync windows at this ISO 8601 time "
                   "(default: now).")
@click.option("--max-chars", default=60_000, show_default=True,
              help="-o markdown: cap on the comment's size (what is left out is counted).")
@click.option("-o", "--output", type=click.Choice(["text", "json", "markdown"]),
              default="text")
@click.option("--show-origin", is_flag=True,
              help="Under each changed value, where it came from: the ${NAME} of a shared "
                   "definition and the Environment defining it (docs/environments.md).")
@policy_option
@click.pass_obj
@handles_errors
def diff(opts: Options, repo: str, ref: str | None, path: str, environments: tuple[str, ...],
         prune: bool, live: bool, base: str | None, at: str | None, max_chars: int,
         output: str, show_origin: bool, policy_path: Path | None) -> None:
    """Plan without acting. Exit 0 in sync, 1 changes pending, 2 error.

    With --base REF: the plan of the change between two commits, for a pull request
    (-o markdown renders it as a comment; docs/pull-requests.md)."""
    # A one-shot command that acts on nothing: what it builds (the desired state, the records,
    # the plan and its JSON) lives to its end, so the cyclic collector could only rescan it, a
    # tenth of a warm diff over a large fleet (docs/performance.md).
    import gc

    gc.disable()
    install_policy(policy_path, opts.resolved_state_dir(), opts.db_url(), repo)
    if base is not None or output == "markdown":
        from reconciler.cli.plan_change import diff_change

        diff_change(opts, repo=repo, ref=ref, path=path, base=base, environments=environments,
                    prune=prune, at=at, output=output, max_chars=max_chars)

    async def main() -> Any:
        from reconciler.console.notes import warn_uncommitted
        from reconciler.plan.planner import BLOCKED, UNCHANGED
        from reconciler.rollout.planning import plan_against_store
        from reconciler.source.revisions import Revisions

        source = make_source(opts, repo, ref, path)
        commit = source.sync().commit
        warn_uncommitted(source, commit)
        desired = load_commit(opts, source, commit)
        if show_origin:
            from reconciler.spec.environments import origins

            found.update(origins(source.files(commit)))
        store = await open_store(opts)
        try:
            # Planning only: the rollout engine is imported for --live alone.
            revisions = Revisions(source, opts.resolved_state_dir(), kept=spec_cache(opts))
            plan = await plan_against_store(store, desired, revisions,
                                            environments=set(environments) or None,
                                            prune=prune, plan_rows=True)
            if opts.whole_process:
                from reconciler.console.process_end import leave_to_the_os

                # Freeing them at exit (every resource and record of the fleet, the kept
                # revisions), and the modules, was ~5 % of a warm diff of a large fleet, for
                # memory the OS takes back anyway.
                leave_to_the_os(desired, revisions, plan)
            if live:
                from reconciler.rollout.engine import Reconciler

                engine = Reconciler(store, state_dir=opts.resolved_state_dir(), source=source,
                                    environments=set(environments))
                try:
                    for item in plan.items:
                        if (item.action not in (UNCHANGED, BLOCKED)
                                or item.key.kind != "Service"
                                or item.resource is None or item.record is None):
                            continue
                        # A blocked Service runs its blocked-at (applied) revision: a crash of
                        # it is drift too, shown beside why it is blocked.
                        detail = await engine.drift_of(item.resource, item.record, desired)
                        if detail is not None and item.action == BLOCKED:
                            item.reason = f"{item.reason}; live state differs: {detail}"
                        elif detail is not None:
                            item.action, item.reason = "drift", f"live state differs: {detail}"
                finally:
                    await engine.close()
            return plan
        finally:
            await store.close()
            source.close()  # its git cat-file, stopped and waited for here, not at exit

    found: dict[Any, Any] = {}
    plan = run(main())
    if output == "json" and not found and not sys.stdout.isatty():
        from reconciler.console.pipes import echo_long

        for piece in plan.json_pieces():  # what emit_json writes, item by item
            echo_long(piece)
        echo_long("\n")
    elif output == "json":
        document = plan.to_json()
        add_origins_to_plan_json(document, found)
        emit_json(document)
    else:
        render_plan(plan, found)
    sys.exit(0 if plan.in_sync else 1)
