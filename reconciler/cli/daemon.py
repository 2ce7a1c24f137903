"""`reconciler daemon`: checks its options (listen address, durations, webhook secrets, API
token) as usage errors before anything starts, installs the operator policy and runs the
daemon (reconciler.daemon.startup) until signalled."""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path

import click

from reconciler.cli.common import (
    Options,
    commit_status_option,
    commit_status_targets,
    handles_errors,
    install_policy,
    policy_option,
    retention_option,
    with_repo,
)
from reconciler.notifications.cli_options import notify_options
from reconciler.notifications.settings import NotifySettings
from reconciler.observe.printable import printable

log = logging.getLogger("reconciler.cli")


# -- daemon ---------------------------------------------------------------------------------------
@click.command()
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
@click.option("--pass-overrun", default=None, metavar="DURATION",
              help="A reconcile pass running longer than this makes /readyz answer 503 (naming "
                   "the resources still being applied) until it ends; the pass goes on "
                   "(default: the larger of 30m and 10 x --interval).")
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
@commit_status_option
@policy_option
@notify_options
@click.pass_obj
@handles_errors
def daemon(opts: Options, repo: str, ref: str | None, path: str,
           environments: tuple[str, ...], listen: str, interval: str,
           prune: bool, no_heal: bool, webhook_secrets: tuple[str, ...],
           webhook_repos: tuple[str, ...], webhook_branches: tuple[str, ...],
           api_token_file: Path | None, ha: bool, shard_ttl: str,
           heal_interval: str | None, pass_overrun: str | None, audit_retention: str,
           commit_status: tuple[str, ...],
           policy_path: Path | None, notify: NotifySettings) -> None:
    """Watch/poll the config repo and keep the fleet converged until signalled."""
    from reconciler.daemon.config import DaemonConfig
    from reconciler.daemon.startup import run_daemon
    from reconciler.source.webhooks import check_secret
    from reconciler.spec import policy
    from reconciler.spec.secrets import resolve_env

    # Bad option values are usage errors (exit 2, the option named), checked before anything
    # starts: not "internal error" from deep inside the start-up.
    listen_host, listen_port = _listen(listen)
    poll_interval = _duration(interval, "--interval")
    lease_ttl = _duration(shard_ttl, "--shard-ttl")
    heal_every = _duration(heal_interval, "--heal-interval") if heal_interval else None
    overrun_after = _duration(pass_overrun, "--pass-overrun") if pass_overrun else None

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
    status_targets = commit_status_targets(commit_status)
    branches = list(webhook_branches) or ([ref] if ref else [])
    config = DaemonConfig(repo=repo, ref=ref, path=path, listen_host=listen_host,
                          listen_port=listen_port, interval=poll_interval,
                          prune=prune, state_dir=opts.resolved_state_dir(), db_url=opts.db_url(),
                          heal=not no_heal, webhook_secrets=secrets,
                          webhook_repos=list(webhook_repos), webhook_branches=branches,
                          api_token=_api_token(api_token_file),
                          environments=set(environments), ha=ha,
                          shard_ttl=lease_ttl, heal_interval=heal_every,
                          pass_overrun=overrun_after,
                          audit_retention=retention_option(audit_retention, "--audit-retention"),
                          commit_status=status_targets, notify=notify)
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
