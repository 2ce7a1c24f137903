"""What every `reconciler` command shares: the global options (`Options`), error handling
and exit codes (`handles_errors`), running a coroutine, opening the store and the config
repository, loading a commit's desired state, finding a resource by NAME, printing JSON and
tables, and the shared `--repo`/`--policy` options. No command lives here; exit codes are part
of the interface (docs/cli.md "Exit codes")."""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from functools import wraps
from pathlib import Path
from typing import Any, TypeVar

import click

from reconciler.errors import NotFound, ReconcilerError, SpecError
from reconciler.observe.printable import printable
from reconciler.spec.model import DesiredState, ResourceKey

T = TypeVar("T")


@dataclass
class Options:
    db: str | None
    state_dir: Path | None
    log_format: str
    log_level: str
    # The command is the whole process (``cli.main``), not a call from a program or a test
    # that goes on afterwards: process-wide settings may change, the exit may be shortened.
    whole_process: bool = False

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
        except BrokenPipeError:
            from reconciler.console.pipes import end_quietly

            end_quietly()  # `reconciler diff | head -1`: no message, exit 141
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


def style(text: str, **kw: Any) -> str:
    return click.style(text, **kw) if sys.stdout.isatty() else text


def emit_json(doc: Any) -> None:
    # Indented for a person at a terminal; compact (C encoder, ~5x faster) for programs.
    from reconciler.console.pipes import echo_long

    indent = 2 if sys.stdout.isatty() else None
    echo_long(json.dumps(doc, indent=indent, default=str) + "\n")


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


commit_status_option = click.option(
    "--commit-status", "commit_status", multiple=True, envvar="RECONCILER_COMMIT_STATUS",
    metavar="HOST:REPO,token=REF[,api=URL][,url=LINK]",
    help="Set a commit status (context fraisier/ENVIRONMENT) on the config commit: pending when "
         "its rollout starts, then success/failure (docs/commit-status.md). HOST: github, "
         "gitlab, gitea (forgejo), bitbucket; token=env:NAME or file:/path. Repeatable; env "
         "RECONCILER_COMMIT_STATUS (space-separated).")


def commit_status_targets(values: tuple[str, ...]) -> list[Any]:
    if not values:
        return []  # the reporter's module loads httpx: only when statuses are asked for
    from reconciler.source.commit_status import TargetError, operator_targets

    try:
        return operator_targets(values)
    except TargetError as exc:
        raise click.BadParameter(str(exc), param_hint="--commit-status") from None


_policy_option = click.option(
    "--policy", "policy_path", envvar="RECONCILER_POLICY", default=None, metavar="FILE",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Operator policy (outside the config repo): which secrets, endpoints and traffic "
         "commands the desired state may use, per environment (docs/security.md). Env "
         "RECONCILER_POLICY. Default: built-in (the invariants only).")
_age_identity_paths: list[str] = []
_age_identity_option = click.option(
    "--age-identity", multiple=True, expose_value=False, metavar="FILE",
    callback=lambda _ctx, _param, value: _age_identity_paths.extend(value),
    help="age identity file (age-keygen) to decrypt the repo's sops/age files with; "
         "repeatable. Also RECONCILER_AGE_IDENTITY, SOPS_AGE_KEY_FILE, SOPS_AGE_KEY "
         "(docs/sops.md).")


def policy_option(fn: Callable[..., Any]) -> Callable[..., Any]:
    """--policy and --age-identity: what the repo may reach, and the keys to its secrets."""
    return _policy_option(_age_identity_option(fn))


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
    from reconciler.spec.encrypted import install_keys

    ctx = click.get_current_context(silent=True)  # -e: the environments this command deploys
    install_keys(_age_identity_paths, state_dir, repo,
                 (ctx.params.get("environments") or ()) if ctx is not None else ())
    if db_url and db_url.startswith("sqlite:///"):
        policy.protect_path(db_url.removeprefix("sqlite://"))
    return loaded

def print_table(header: list[str], rows: list[list[str]], *, whole: tuple[int, ...] = (0,),
                drop: tuple[int, ...] = ()) -> None:
    """On a terminal: identifying (``whole``) columns never cut, the others wrapped, and
    ``drop`` (first first) left out when the terminal is too narrow (console/tables.py)."""
    # cells hold recorded text (errors, actors, triggers): no controls or bidi characters
    rows = [[printable(str(c), lines=True) for c in row] for row in rows]
    if sys.stdout.isatty():
        import shutil

        from reconciler.console.tables import render

        width = shutil.get_terminal_size().columns
        click.echo(render(header, rows, width, whole=whole, drop=drop), nl=False)
        return
    widths = [max([len(h)] + [len(str(r[i])) for r in rows]) for i, h in enumerate(header)]
    widths[-1] = 0
    for row in [header, *rows]:
        click.echo("  ".join(str(c).ljust(w) for c, w in zip(row, widths, strict=True)).rstrip())



def retention_option(text: str, param: str) -> Any:
    from reconciler.state.audit import parse_retention

    try:
        return parse_retention(text)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint=param) from None
