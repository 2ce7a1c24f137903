"""`reconciler` command line: the top-level click group (global options, logging, the audited
actor) and `main`, the console entry point. Each command lives in the module named for its
job (`plan`: validate and diff, `render`: the desired state resolved, `apply`, `status`: status
and history, `manual`: rollback, suspend and resume, `audit`, `logs`, `daemon`, `db`,
`rollout`: promote, abort and locks) and is added to the group here; what they share is in
`common`. Exit codes are part of the interface (docs/cli.md "Exit codes")."""

from __future__ import annotations

from pathlib import Path

import click

from reconciler import __version__
from reconciler.cli.apply import apply
from reconciler.cli.audit import audit
from reconciler.cli.common import Options
from reconciler.cli.daemon import daemon
from reconciler.cli.db import db
from reconciler.cli.logs import logs
from reconciler.cli.manual import resume, rollback, suspend
from reconciler.cli.plan import diff, validate
from reconciler.cli.render import render
from reconciler.cli.rollout import abort, lock, promote
from reconciler.cli.status import history, status
from reconciler.observe.logging import setup_logging


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
    whole_process = isinstance(ctx.obj, WholeProcess)
    ctx.obj = Options(db, state_dir, log_format, level)
    if ctx.invoked_subcommand != "daemon":  # the daemon names the actor of each pass itself
        from reconciler.state.audit import acting_as, cli_actor

        if whole_process:  # only the daemon serves /metrics: nothing would read them
            from reconciler.observe import metrics

            metrics.discard()

        # every state change this command makes is audited as the user at the keyboard
        ctx.with_resource(acting_as(cli_actor()))


for command in (validate, render, diff, apply, status, history, rollback, suspend, resume, audit,
                logs, daemon, db, promote, abort, lock):
    cli.add_command(command)


class WholeProcess:
    """``ctx.obj`` as ``main`` starts the group: the command is the whole process (not a call
    from a program or a test that goes on afterwards), so process-wide settings may change."""


def main() -> None:
    from reconciler.console.pipes import closed_pipe_ends_quietly

    with closed_pipe_ends_quietly():
        cli(prog_name="reconciler", obj=WholeProcess())


if __name__ == "__main__":
    main()
