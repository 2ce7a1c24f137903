"""`apply`'s summary: the result, then under each failed resource where it failed, its last
output and what to do; on a terminal, wrapped at its width between words."""

from __future__ import annotations

import shutil
import sys
import textwrap

import click

from reconciler.console.progress import Progress
from reconciler.rollout.outcome import Outcome, ReconcileResult


def failure_lines(outcome: Outcome, progress: Progress | None) -> list[str]:
    lines: list[str] = []
    if progress is not None:
        phase = progress.failed_phase(outcome.key)
        if phase is not None:
            path = " → ".join(progress.phases(outcome.key))
            lines.append(f"failed in: {phase} ({path})")
    if outcome.last_output:
        lines.append("last output:")
        lines += [f"  | {line}" for line in outcome.last_output]
    if outcome.hint:
        lines.append(f"hint: {outcome.hint}")
    return lines


def print_summary(result: ReconcileResult, progress: Progress | None) -> None:
    tty = sys.stdout.isatty()
    width = shutil.get_terminal_size().columns - 1 if tty else 0

    def echo(text: str, indent: str, colour: str | None = None) -> None:
        if width > 20 and not text.lstrip().startswith("|"):  # output lines stay as they were
            text = "\n".join(textwrap.wrap(text, width=width, initial_indent=indent,
                                           subsequent_indent=indent + "    ",
                                           break_long_words=False, break_on_hyphens=False))
        else:
            text = indent + text
        click.echo(click.style(text, fg=colour) if tty and colour else text)

    failed = result.failed()
    state = "converged" if result.converged else f"{len(failed)} resource(s) not converged"
    echo(f"{state} at {(result.commit or '?')[:12]} in {result.duration_s:.1f}s", "")
    for out in failed:
        code = f"[{out.code}] " if out.code else ""
        echo(f"{out.key}: {out.result} — {code}{out.message}", "  ", "red")
        for line in failure_lines(out, progress):
            echo(line, "    ")
    for out in result.outcomes:
        if out.action == "deferred":
            echo(f"{out.key}: deferred — {out.message}", "  ", "blue")
