"""A reader that goes away (``reconciler diff | head -1``) ends the command quietly.

As a program killed by SIGPIPE would: no message, no traceback, exit status 141 (128 + 13,
what a shell shows for ``git log | head -1`` under ``set -o pipefail``).
"""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Iterator
from typing import NoReturn

EXIT_CLOSED_PIPE = 141  # 128 + SIGPIPE


def end_quietly() -> NoReturn:
    """Stdout's reader is gone: point stdout at /dev/null (the interpreter's last flush would
    fail again and print "Exception ignored") and exit 141."""
    with contextlib.suppress(OSError, ValueError):
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    sys.exit(EXIT_CLOSED_PIPE)


@contextlib.contextmanager
def closed_pipe_ends_quietly() -> Iterator[None]:
    """Around a whole command: a BrokenPipeError from writing its output (during the command
    or when its last buffered lines are flushed) ends it as ``end_quietly`` does."""
    try:
        yield
    except BrokenPipeError:
        end_quietly()
    finally:  # also when the command exits with its own status: its output is not out yet
        try:
            sys.stdout.flush()
        except BrokenPipeError:
            end_quietly()


CHUNK = 16384


def echo_long(text: str) -> None:
    """Write a long output (a JSON document, a Markdown comment) in pieces: one large write
    into a pipe whose reader left is cut short without an error (the buffered writer returns
    the part it wrote), so the exit status would not say the output was lost; the next piece
    raises BrokenPipeError and the command ends as ``end_quietly`` does."""
    out = sys.stdout
    for start in range(0, len(text), CHUNK):
        out.write(text[start:start + CHUNK])
        out.flush()
