"""Warnings for people: on a terminal, wrapped at its width between words (a path or a commit
id cut in two by the terminal is hard to read and to copy); one line otherwise (logs, CI)."""

from __future__ import annotations

import shutil
import sys
import textwrap
from typing import Any

import click


def warn(message: str) -> None:
    text = f"warning: {message}"
    if sys.stderr.isatty():
        width = max(40, shutil.get_terminal_size().columns - 1)
        text = "\n".join(textwrap.wrap(text, width=width, subsequent_indent="  ",
                                       break_long_words=False, break_on_hyphens=False))
    click.echo(text, err=True)


def warn_uncommitted(source: Any, commit: str) -> None:
    """`diff` and `apply` plan the commit, not the work tree: say so when they differ."""
    from reconciler.source.worktree import uncommitted_warning

    message = uncommitted_warning(source, commit)
    if message is not None:
        warn(message)
