"""`reconciler` command line: the top-level click group (global options, logging, the audited
actor) and `main`, the console entry point. Each command lives in the module named for its
job (`plan`: validate and diff, `render`: the desired state resolved, `apply`, `status`: status
and history, `manual`: rollback, suspend and resume, `audit`, `logs`, `daemon`, `db`,
`rollout`: promote, abort and locks) and is added to the group here; what they share is in
`common`. Exit codes are part of the interface (docs/cli.md "Exit codes")."""

from __future__ import annotations

import gc
import importlib
from pathlib import Path

import click

from reconciler import __version__
from reconciler.cli.common import Options
from reconciler.observe.logging import setup_logging

# Each command by the module it lives in: a command's module (and what it imports) is loaded
# when that command runs or is listed, so `diff` does not import `apply`'s notifications or
# the daemon's HTTP stack (docs/performance.md, session 9).
COMMANDS = {
    "validate": "plan", "render": "render", "diff": "plan", "apply": "apply",
    "status": "status", "history": "status", "rollback": "manual", "suspend": "manual",
    "resume": "manual", "audit": "audit", "logs": "logs", "daemon": "daemon", "db": "db",
    "promote": "rollout", "abort": "rollout", "lock": "rollout",
}


class LazyGroup(click.Group):
    """The top-level group: commands imported on first use (``COMMANDS``)."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted({*COMMANDS, *self.commands})

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        if cmd_name not in self.commands and cmd_name in COMMANDS:
            module = importlib.import_module(f"reconciler.cli.{COMMANDS[cmd_name]}")
            command = getattr(module, cmd_name)
            assert isinstance(command, click.Command)
            self.add_command(command, cmd_name)
        return self.commands.get(cmd_name)


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
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
    if whole_process:
        gc.enable()  # off while the process started (main); the command decides from here
    ctx.obj = Options(db, state_dir, log_format, level, whole_process=whole_process)
    if ctx.invoked_subcommand != "daemon":  # the daemon names the actor of each pass itself
        from reconciler.state.audit import acting_as, cli_actor

        if whole_process:  # only the daemon serves /metrics: nothing would read them
            from reconciler.observe import metrics

            metrics.discard()

        # every state change this command makes is audited as the user at the keyboard
        ctx.with_resource(acting_as(cli_actor()))


class WholeProcess:
    """``ctx.obj`` as ``main`` starts the group: the command is the whole process (not a call
    from a program or a test that goes on afterwards), so process-wide settings may change."""


def main() -> None:
    # The collector off until the command runs (``cli``): what start-up builds lives on.
    gc.disable()
    from reconciler.console.pipes import closed_pipe_ends_quietly
    from reconciler.console.process_end import record_status

    try:
        with closed_pipe_ends_quietly():
            cli(prog_name="reconciler", obj=WholeProcess())
    except SystemExit as exc:
        record_status(exc.code)  # for a command that leaves what it built to the OS
        raise


if __name__ == "__main__":
    main()
