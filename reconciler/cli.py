"""`reconciler` command line: exit codes are part of the interface (docs/cli.md "Exit codes")."""

from __future__ import annotations

import contextlib
import json
import logging
import os
import sys
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import wraps
from pathlib import Path
from typing import Any, TypeVar

import click

from reconciler import __version__
from reconciler.errors import NotFound, ReconcilerError, SpecError
from reconciler.observe.logging import setup_logging
from reconciler.observe.printable import printable
from reconciler.spec.model import DesiredState, ResourceKey

T = TypeVar("T")
log = logging.getLogger("reconciler.cli")


@dataclass
class Options:
    db: str | None
    state_dir: Path | None
    log_format: str
    log_level: str

    def resolved_state_dir(self) -> Path:
        from reconciler.state import default_state_dir
        from reconciler.state.private import private_dir

        return private_dir(self.state_dir or default_state_dir())

    def db_url(self) -> str:
        from reconciler.state import default_db_url

        return self.db or default_db_url(self.resolved_state_dir())


def _fail(exc: ReconcilerError) -> None:
    from reconciler.observe.redact import redact

    # Messages quote user input (a NAME, --to, a branch): no controls or bidi characters; and,
    # as a last line of defence, no credential of a URL or DSN they may quote.
    message = printable(redact(exc.message), lines=True)
    click.echo(f"error[{exc.code}]: {message}" if not isinstance(exc, SpecError) else message,
               err=True)
    if exc.hint:
        click.echo(f"hint: {exc.hint}", err=True)
    sys.exit(exc.exit_code)


def handles_errors(fn: Callable[..., T]) -> Callable[..., T]:
    """Known errors → message, hint, exit code; anything else → one line, exit 2 (traceback
    only with RECONCILER_DEBUG=1)."""

    @wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> T:
        try:
            return fn(*args, **kwargs)
        except ReconcilerError as exc:
            _fail(exc)
        except (KeyboardInterrupt, click.exceptions.Exit, click.ClickException, SystemExit):
            raise
        except Exception as exc:
            if os.environ.get("RECONCILER_DEBUG") == "1":
                raise
            from reconciler.observe.redact import redact

            # an unexpected exception's text may quote a URL or DSN with its password
            click.echo(printable(redact(f"internal error: {type(exc).__name__}: {exc}"),
                                 lines=True), err=True)
            click.echo("hint: rerun with RECONCILER_DEBUG=1 for a traceback", err=True)
            sys.exit(2)
        raise AssertionError("unreachable")

    return wrapper


def run(coro: Coroutine[Any, Any, T]) -> T:
    # asyncio is imported by the commands that run something: --help, validate and the other
    # commands that only read files do not need it (~50 ms of their start-up).
    import asyncio

    return asyncio.run(coro)


# -- shared plumbing ---------------------------------------------------------------------
async def open_store(opts: Options, migrate: bool = True) -> Any:
    from reconciler.state import open_store as _open

    store = _open(opts.db_url())
    if migrate:
        await store.migrate()
    return store


def make_source(opts: Options, repo: str, ref: str | None, path: str) -> Any:
    from reconciler.source.git import GitSource

    return GitSource(repo, ref=ref, path=path, state_dir=opts.resolved_state_dir())


def spec_cache(opts: Options) -> Any:
    from reconciler.spec.cache import SpecCache

    return SpecCache(opts.resolved_state_dir() / "cache" / "spec")


def load_commit(opts: Options, source: Any, commit: str) -> DesiredState:
    import gc

    from reconciler.spec.loader import load_desired_state

    desired = load_desired_state(source.files(commit), commit=commit, cache=spec_cache(opts),
                                 tree=source.tree(commit))
    # A one-shot command keeps the desired state to the end: take its (many) objects out of the
    # cyclic GC's reach, or every later collection walks them all again.
    gc.freeze()
    return desired


async def find_key(store: Any, name: str) -> ResourceKey:
    """NAME may be `name`, `Kind/name` or `environment/Kind/name`."""
    records = await store.list_resources()
    parts = name.split("/")
    matches = [
        r.key for r in records
        if (len(parts) == 1 and r.key.name == parts[0])
        or (len(parts) == 2 and (r.key.kind.lower(), r.key.name) == (parts[0].lower(), parts[1]))
        or (len(parts) == 3 and str(r.key) == name)
    ]
    if not matches:
        raise NotFound(f"no resource named {name!r}")
    if len(matches) > 1:
        raise NotFound(f"{name!r} is ambiguous: {', '.join(str(m) for m in matches)}",
                       hint="use Kind/name or environment/Kind/name")
    return matches[0]


def _style(text: str, **kw: Any) -> str:
    return click.style(text, **kw) if sys.stdout.isatty() else text


def emit_json(doc: Any) -> None:
    # Indented for a person at a terminal; compact (C encoder, ~5x faster) for programs.
    indent = 2 if sys.stdout.isatty() else None
    click.echo(json.dumps(doc, indent=indent, default=str))


# -- the group ----------------------------------------------------------------------------
repo_options = [
    click.option("--repo", default=".", show_default=True,
                 help="Config repository: a local path or a clone URL."),
    click.option("--ref", default=None, help="Branch, tag or commit (default: HEAD / default "
                                             "branch)."),
    click.option("--path", "path", default="", help="Folder inside the repo (default: root)."),
    click.option("-e", "--environment", "environments", multiple=True,
                 help="Only this environment (repeatable; default: all)."),
]


def with_repo(fn: Callable[..., Any]) -> Callable[..., Any]:
    for option in reversed(repo_options):
        fn = option(fn)
    return fn


policy_option = click.option(
    "--policy", "policy_path", envvar="RECONCILER_POLICY", default=None, metavar="FILE",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Operator policy (outside the config repo): which secrets, endpoints and traffic "
         "commands the desired state may use, per environment (docs/security.md). Env "
         "RECONCILER_POLICY. Default: built-in (the invariants only).")


def install_policy(path: Path | None, state_dir: Path | None, db_url: str | None,
                   repo: str | Path | None = None) -> Any:
    """Load and install the operator policy (a bad file: FR111, exit 2) and protect the
    command's own state and database from secret references."""
    from reconciler.spec import policy

    if path is not None and repo is not None and Path(repo).exists():
        tree = os.path.realpath(repo)
        if os.path.realpath(path).startswith(tree.rstrip("/") + "/"):
            # a policy the committer can edit would allow whatever they commit
            raise policy.PolicyFileError(f"{path}: the policy file must be outside the config "
                                         f"repository ({repo})")
    loaded = policy.load_policy(str(path) if path is not None else None)
    policy.install(loaded)
    policy.protect_defaults(state_dir)
    if db_url and db_url.startswith("sqlite:///"):
        policy.protect_path(db_url.removeprefix("sqlite://"))
    return loaded


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="reconciler")
@click.option("--db", envvar="RECONCILER_DB", default=None,
              help="Database URL (sqlite:///…, postgresql://…, mysql://…). Env RECONCILER_DB.")
@click.option("--state-dir", envvar="RECONCILER_STATE_DIR", default=None,
              type=click.Path(file_okay=False, path_type=Path),
              help="State directory (clones, caches, default SQLite database).")
@click.option("--log-format", type=click.Choice(["json", "text"]), default="json",
              show_default=True, help="Logs: one JSON object per line, or text for humans.")
@click.option("--log-level", default=None, help="debug, info, warning, error.")
@click.pass_context
def cli(ctx: click.Context, db: str | None, state_dir: Path | None, log_format: str,
        log_level: str | None) -> None:
    """Fraisier: declarative GitOps for fleets that do not live on Kubernetes."""
    level = log_level or ("info" if ctx.invoked_subcommand == "daemon" else "warning")
    setup_logging(log_format, level)
    ctx.obj = Options(db, state_dir, log_format, level)
    if ctx.invoked_subcommand != "daemon":  # the daemon names the actor of each pass itself
        from reconciler.state.audit import acting_as, cli_actor

        # every state change this command makes is audited as the user at the keyboard
        ctx.with_resource(acting_as(cli_actor()))


# -- validate ---------------------------------------------------------------------------------
@cli.command()
@click.argument("path", default=".", type=click.Path(path_type=Path))
@policy_option
@click.pass_obj
@handles_errors
def validate(opts: Options, path: Path, policy_path: Path | None) -> None:
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
    if not state.resources:
        click.echo(f"{path}: {len(files)} file(s) but no YAML document in them: nothing to "
                   "validate", err=True)
        sys.exit(2)
    counts: dict[str, int] = {}
    for key in state.resources:
        counts[key.kind] = counts.get(key.kind, 0) + 1
    summary = ", ".join(f"{n} {k}" for k, n in sorted(counts.items())) or "no resources"
    from reconciler.providers.sandbox import sandbox_off_warnings

    for warning in sandbox_off_warnings(state.resources.values()):
        click.echo(f"warning: {warning}; see docs/sandboxing.md", err=True)
    click.echo(f"valid: {len(files)} files, {summary}")


# -- diff -------------------------------------------------------------------------------------
def render_plan(plan: Any) -> None:
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
        click.echo(_style(head, fg=colours.get(item.action), bold=True))
        for change in item.changes[:50]:
            if change.op == "~":
                line = f"    ~ {change.path}: {json.dumps(change.old)} -> {json.dumps(change.new)}"
            elif change.op == "+":
                line = f"    + {change.path}: {json.dumps(change.new)}"
            else:
                line = f"    - {change.path}"
            click.echo(_style(line, fg={"~": "yellow", "+": "green", "-": "red"}[change.op]))
        if len(item.changes) > 50:
            click.echo(f"    … {len(item.changes) - 50} more changes")
    if plan.in_sync:
        click.echo("In sync.")


@cli.command()
@with_repo
@click.option("--prune", is_flag=True, help="Plan deletion of resources removed from git.")
@click.option("--live", is_flag=True,
              help="Also observe applied Services through their providers and show drift "
                   "(stopped, replaced or changed by hand).")
@click.option("-o", "--output", type=click.Choice(["text", "json"]), default="text")
@policy_option
@click.pass_obj
@handles_errors
def diff(opts: Options, repo: str, ref: str | None, path: str, environments: tuple[str, ...],
         prune: bool, live: bool, output: str, policy_path: Path | None) -> None:
    """Plan without acting. Exit 0 in sync, 1 changes pending, 2 error."""
    install_policy(policy_path, opts.resolved_state_dir(), opts.db_url(), repo)

    async def main() -> Any:
        from reconciler.plan.planner import BLOCKED, UNCHANGED
        from reconciler.rollout.engine import Reconciler

        source = make_source(opts, repo, ref, path)
        commit = source.sync().commit
        desired = load_commit(opts, source, commit)
        store = await open_store(opts)
        engine = Reconciler(store, state_dir=opts.resolved_state_dir(), source=source,
                            environments=set(environments))
        try:
            plan = await engine.plan(desired, prune=prune)
            if live:
                for item in plan.items:
                    if (item.action not in (UNCHANGED, BLOCKED) or item.key.kind != "Service"
                            or item.resource is None or item.record is None):
                        continue
                    # A blocked Service runs its blocked-at (applied) revision: a crash of it
                    # is drift too, shown beside why it is blocked.
                    detail = await engine.drift_of(item.resource, item.record, desired)
                    if detail is not None and item.action == BLOCKED:
                        item.reason = f"{item.reason}; live state differs: {detail}"
                    elif detail is not None:
                        item.action, item.reason = "drift", f"live state differs: {detail}"
            return plan
        finally:
            await engine.close()
            await store.close()

    plan = run(main())
    if output == "json":
        emit_json(plan.to_json())
    else:
        render_plan(plan)
    sys.exit(0 if plan.in_sync else 1)


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


@cli.command()
@with_repo
@click.option("--prune", is_flag=True, help="Delete resources removed from git.")
@click.option("--force", is_flag=True, help="Deploy even revisions that were rolled back.")
@click.option("--live/--no-live", default=True, show_default=True,
              help="Observe applied Services first and redeploy those that drifted.")
@click.option("--ignore-windows", is_flag=True,
              help="Apply now even changes their sync windows defer (operator override).")
@click.option("-o", "--output", type=click.Choice(["text", "json"]), default="text")
@policy_option
@click.pass_obj
@handles_errors
def apply(opts: Options, repo: str, ref: str | None, path: str, environments: tuple[str, ...],
          prune: bool, force: bool, live: bool, ignore_windows: bool, output: str,
          policy_path: Path | None) -> None:
    """One reconcile pass. Exit 0 converged, 1 a resource failed or was rolled back, 2 error.

    Changes outside their sync windows are deferred (listed, not failed) unless
    --ignore-windows."""
    install_policy(policy_path, opts.resolved_state_dir(), opts.db_url(), repo)
    from reconciler.plan.windows import ignoring_windows

    async def main() -> Any:
        from reconciler.rollout.engine import Reconciler

        source = make_source(opts, repo, ref, path)
        commit = source.sync().commit
        desired = load_commit(opts, source, commit)
        store = await open_store(opts)
        progress = Progress(live=sys.stdout.isatty() and output == "text")
        engine = Reconciler(store, state_dir=opts.resolved_state_dir(), source=source,
                            progress=progress if output == "text" else None,
                            environments=set(environments))
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
            click.echo(_style(f"  {out.key}: {out.result} — {code}{out.message}", fg="red"))
            if out.hint:
                click.echo(f"    hint: {out.hint}")
        for out in result.outcomes:
            if out.action == "deferred":
                click.echo(_style(f"  {out.key}: deferred — {out.message}", fg="blue"))
    sys.exit(0 if result.converged else 1)


async def _drifted(engine: Any, desired: DesiredState) -> set[ResourceKey]:
    """Applied Services, unchanged or blocked, whose live state differs from the record."""
    from reconciler.rollout.drift import drifted

    return await drifted(engine, desired)


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
    from reconciler.errors import ReconcilerError
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


@cli.command()
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
            for r in rows])
    sys.exit(0 if ok else 1)


def print_table(header: list[str], rows: list[list[str]]) -> None:
    # cells hold recorded text (errors, actors, triggers): no controls or bidi characters
    rows = [[printable(str(c), lines=True) for c in row] for row in rows]
    if sys.stdout.isatty():
        from rich.console import Console
        from rich.table import Table

        table = Table(*header, header_style="bold")
        for row in rows:
            table.add_row(*[str(c) for c in row])
        Console().print(table)
        return
    widths = [max([len(h)] + [len(str(r[i])) for r in rows]) for i, h in enumerate(header)]
    widths[-1] = 0
    for row in [header, *rows]:
        click.echo("  ".join(str(c).ljust(w) for c, w in zip(row, widths, strict=True)).rstrip())


@cli.command()
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
         d["error"] or ""] for d in docs])


def _short(text: str, width: int) -> str:
    """``text`` cut to ``width`` characters for a table cell (JSON output keeps it whole):
    triggers name their actor, e.g. ``webhook:github:<delivery id>`` (51 characters; Bitbucket's
    braced ids 56)."""
    return text if len(text) <= width else text[:width - 1] + "…"


# -- rollback / suspend / resume ------------------------------------------------------------------
@cli.command()
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
        engine = Reconciler(store, state_dir=opts.resolved_state_dir(), source=source,
                            progress=Progress(live=False))
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


@cli.command()
@click.argument("name")
@click.pass_obj
@handles_errors
def suspend(opts: Options, name: str) -> None:
    """Pause reconciling a resource."""
    _set_suspended(opts, name, True)


@cli.command()
@click.argument("name")
@click.pass_obj
@handles_errors
def resume(opts: Options, name: str) -> None:
    """Resume reconciling a resource."""
    _set_suspended(opts, name, False)


@cli.command()
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
    from datetime import UTC, datetime, timedelta

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


@cli.command()
@click.argument("name")
@click.option("-n", "--lines", default=100, show_default=True)
@click.option("--host", "hosts", multiple=True, help="Only this instance/host (repeatable).")
@click.option("-f", "--follow", is_flag=True, help="Keep printing new lines (Ctrl-C to stop).")
@with_repo
@click.pass_obj
@handles_errors
def logs(opts: Options, name: str, lines: int, hosts: tuple[str, ...], follow: bool,
         **_repo: Any) -> None:
    """The last lines of a resource's output on each instance (journal, container, log file)."""

    async def main() -> None:
        from reconciler.rollout.engine import Reconciler, resource_from_document, variants_of

        store = await open_store(opts)
        engine = Reconciler(store, state_dir=opts.resolved_state_dir())
        try:
            key = await find_key(store, name)
            record = await store.get_resource(key)
            assert record is not None
            resource = resource_from_document(key, record.applied_spec or record.desired_spec
                                              or {})
            target = await engine.target_from_store(resource)
            if target is None:
                raise NotFound(f"{key}: its Target is not recorded")
            provider = engine.provider_for(target)
            # blue-green / weighted canary slots run under their own names: show each
            instances = [(variant, i) for variant in variants_of(resource)
                         for i in await provider.instances(variant)
                         if not hosts or i.id in hosts]
            if hosts and not instances:
                raise NotFound(f"{key}: no instance named {', '.join(hosts)}")
            import asyncio

            seen: dict[tuple[str, str], list[str]] = {}
            while True:
                for variant, instance in instances:
                    text = await provider.logs(variant, instance, lines)
                    slot = variant.labels.get("fraisier.dev/slot")
                    label = f"{instance.id} {slot}" if slot else instance.id
                    for line in _new_lines(seen.get((variant.name, instance.id), []), text):
                        click.echo(f"[{label}] {line}")
                    seen[(variant.name, instance.id)] = text
                if not follow:
                    return
                await asyncio.sleep(1.0)
        finally:
            await engine.close()
            await store.close()

    with contextlib.suppress(KeyboardInterrupt):
        run(main())


def _new_lines(before: list[str], after: list[str]) -> list[str]:
    """Lines of ``after`` not already printed: the longest tail of ``before`` that starts
    ``after`` is skipped (both are tails of one growing log)."""
    if not before:
        return after
    for start in range(len(before)):
        overlap = before[start:]
        if after[:len(overlap)] == overlap:
            return after[len(overlap):]
    return after


# -- daemon ---------------------------------------------------------------------------------------
@cli.command()
@with_repo
@click.option("--listen", default="127.0.0.1:9464", show_default=True,
              help="HOST:PORT for /metrics, /healthz, /readyz and webhooks ([::1]:PORT for "
                   "IPv6; port 1-65535).")
@click.option("--interval", default="30s", show_default=True,
              help="Poll interval for remotes and full resync (Go duration, above zero).")
@click.option("--prune", is_flag=True, help="Delete resources removed from git.")
@click.option("--no-heal", is_flag=True, help="Report drift without redeploying.")
@click.option("--heal-interval", default=None,
              help="How often live state is compared with the record (default: --interval).")
@click.option("--webhook-secret", "webhook_secrets", multiple=True, metavar="PROVIDER=REF",
              help="Enable POST /webhooks/PROVIDER with a secret reference, e.g. "
                   "github=env:GITHUB_WEBHOOK_SECRET or gitlab=file:/etc/reconciler/gitlab.")
@click.option("--webhook-repo", "webhook_repos", multiple=True, metavar="URL",
              help="Repository URL whose pushes trigger (default: --repo when it is a URL).")
@click.option("--webhook-branch", "webhook_branches", multiple=True, metavar="BRANCH",
              help="Branch (glob) whose pushes trigger (default: --ref, else every branch).")
@click.option("--api-token-file", type=click.Path(dir_okay=False, path_type=Path),
              default=None, help="Bearer token for GET /api/v1/* (or env RECONCILER_API_TOKEN);"
                                 " without one the API is not served.")
@click.option("--ha", is_flag=True,
              help="Run as one of several replicas on one PostgreSQL/MySQL database: the "
                   "resources are split between them through shard leases.")
@click.option("--shard-ttl", default="15s", show_default=True,
              help="Shard lease TTL: a dead replica's share is taken over after about this.")
@click.option("--audit-retention", envvar="RECONCILER_AUDIT_RETENTION", default="90d",
              show_default=True, metavar="DAYS|DURATION",
              help="Delete audit events older than this, hourly (90d, 90, 720h; 0 keeps them "
                   "forever). Env RECONCILER_AUDIT_RETENTION.")
@policy_option
@click.pass_obj
@handles_errors
def daemon(opts: Options, repo: str, ref: str | None, path: str,
           environments: tuple[str, ...], listen: str, interval: str,
           prune: bool, no_heal: bool, webhook_secrets: tuple[str, ...],
           webhook_repos: tuple[str, ...], webhook_branches: tuple[str, ...],
           api_token_file: Path | None, ha: bool, shard_ttl: str,
           heal_interval: str | None, audit_retention: str, policy_path: Path | None) -> None:
    """Watch/poll the config repo and keep the fleet converged until signalled."""
    from reconciler.daemon.loop import DaemonConfig, run_daemon
    from reconciler.source.webhooks import check_secret
    from reconciler.spec import policy
    from reconciler.spec.secrets import resolve_env

    # Bad option values are usage errors (exit 2, the option named), checked before anything
    # starts: not "internal error" from deep inside the start-up.
    listen_host, listen_port = _listen(listen)
    poll_interval = _duration(interval, "--interval")
    lease_ttl = _duration(shard_ttl, "--shard-ttl")
    heal_every = _duration(heal_interval, "--heal-interval") if heal_interval else None

    loaded = install_policy(policy_path, opts.resolved_state_dir(), opts.db_url(), repo)
    if loaded.source is None:
        log.warning("no operator policy (--policy / RECONCILER_POLICY): the config repo may "
                    "reference any secret and endpoint except the reconciler's own credentials; "
                    "see docs/security.md")
    secrets: dict[str, bytes] = {}
    for item in webhook_secrets:
        provider, sep, ref_text = item.partition("=")
        kind, sep2, value = ref_text.partition(":")
        if not sep or not sep2 or kind not in ("env", "file"):
            raise click.BadParameter(f"{item!r}: expected PROVIDER=env:NAME or "
                                     "PROVIDER=file:PATH", param_hint="--webhook-secret")
        # the operator's own secret: resolved without the policy, then out of the repo's reach
        secret = resolve_env({"secret": {kind: value}}, trusted=True)["secret"].encode()
        try:  # an empty or short secret would authenticate nothing: refuse to start
            check_secret(provider, secret)
        except ValueError as exc:
            raise click.BadParameter(str(exc), param_hint="--webhook-secret") from None
        secrets[provider.lower()] = secret
        if kind == "env":
            policy.protect_env(value)
        else:
            policy.protect_path(value)
    if api_token_file is not None:
        policy.protect_path(api_token_file)
    branches = list(webhook_branches) or ([ref] if ref else [])
    config = DaemonConfig(repo=repo, ref=ref, path=path, listen_host=listen_host,
                          listen_port=listen_port, interval=poll_interval,
                          prune=prune, state_dir=opts.resolved_state_dir(), db_url=opts.db_url(),
                          heal=not no_heal, webhook_secrets=secrets,
                          webhook_repos=list(webhook_repos), webhook_branches=branches,
                          api_token=_api_token(api_token_file),
                          environments=set(environments), ha=ha,
                          shard_ttl=lease_ttl, heal_interval=heal_every,
                          audit_retention=_retention(audit_retention, "--audit-retention"))
    import asyncio

    sys.exit(asyncio.run(run_daemon(config)))


def _listen(text: str) -> tuple[str, int]:
    """``HOST:PORT`` (``[::1]:PORT`` for IPv6; an empty HOST is 127.0.0.1)."""
    host, sep, port = text.rpartition(":")
    host = host.removeprefix("[").removesuffix("]") if host.startswith("[") else host
    if not sep or not port.isascii() or not port.isdigit() or not 1 <= int(port) <= 65535:
        raise click.BadParameter(
            f"{printable(text)!r} is not HOST:PORT with a port from 1 to 65535 "
            "(e.g. 127.0.0.1:9464, [::1]:9464)", param_hint="--listen")
    if ":" in host and not text.startswith("["):
        raise click.BadParameter(f"{printable(text)!r}: write an IPv6 address in brackets, "
                                 "e.g. [::1]:9464", param_hint="--listen")
    return host or "127.0.0.1", int(port)


def _duration(text: str, param: str) -> float:
    """A positive Go-style duration (30s, 5m, 1h30m)."""
    from reconciler.spec.durations import parse_duration

    try:
        seconds = parse_duration(text)
    except ValueError as exc:
        raise click.BadParameter(printable(str(exc)), param_hint=param) from None
    if seconds <= 0:
        raise click.BadParameter(f"{printable(text)!r} must be longer than zero",
                                 param_hint=param)
    return seconds


def _retention(text: str, param: str) -> Any:
    from reconciler.state.audit import parse_retention

    try:
        return parse_retention(text)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint=param) from None


def _api_token(path: Path | None) -> bytes | None:
    """From a file (never a command-line value: it would show in `ps`) or the environment."""
    from reconciler.errors import ReconcilerError as _Err

    if path is not None:
        try:
            token = path.read_bytes().strip()
        except OSError as exc:
            raise _Err(f"--api-token-file {path}: {exc.strerror}") from exc
    else:
        token = os.environ.get("RECONCILER_API_TOKEN", "").encode().strip()
    if token and len(token) < 16:
        raise _Err("the API token must be at least 16 bytes")
    return token or None


# -- db -------------------------------------------------------------------------------------------
@cli.group()
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
    from datetime import UTC, datetime

    retention = _retention(older_than, "--older-than")
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


# Commands kept in their own modules, registered on `cli` when imported.
from reconciler import cli_rollout  # noqa: E402, F401


def main() -> None:
    cli(prog_name="reconciler")


if __name__ == "__main__":
    main()
