"""Warnings for people: on a terminal, wrapped at its width between words (a path or a commit
id cut in two by the terminal is hard to read and to copy); one line otherwise (logs, CI)."""

from __future__ import annotations

import shutil
import sys
import textwrap

import click


def warn(message: str) -> None:
    text = f"warning: {message}"
    if sys.stderr.isatty():
        width = max(40, shutil.get_terminal_size().columns - 1)
        text = "\n".join(textwrap.wrap(text, width=width, subsequent_indent="  ",
                                       break_long_words=False, break_on_hyphens=False))
    click.echo(text, err=True)
