"""The end of a one-shot command's process, without freeing what it built.

At exit the interpreter frees every object the command left (a warm ``diff`` of 10,000
Services: the plan, its resources and records), then every module, only to hand the memory back
to the OS: ~15 ms of CPU, 5 % of that ``diff`` (docs/performance.md, session 10). A command that
is the whole process (``cli.main``) may leave what it built to the OS instead
(``leave_to_the_os``): those objects stay referenced, the exit goes on as usual (the status
set, stdout flushed, the ``atexit`` handlers registered after this one), and its last step
flushes the standard streams and logging (whose handler, registered earlier, would run after
it) and ends the process with ``os._exit`` and the status the command exited with
(``record_status``, from ``cli.main``). Other handlers registered earlier do not run: none is,
in a command's process, but logging's.
"""

from __future__ import annotations

import atexit
import contextlib
import logging
import os
import sys

# What the command left to the OS (kept referenced so the exit does not free it) and the status
# it exited with; the process ends early only when both are known.
_kept: list[object] = []
_status: list[int] = []


def record_status(code: object) -> None:
    """The status the process exits with for ``sys.exit(code)``, as the interpreter turns it
    into one: None is 0, an integer itself, anything else (a message) 1."""
    _status[:] = [0 if code is None else code if isinstance(code, int) else 1]


def leave_to_the_os(*objects: object) -> None:
    """Keep ``objects`` to the end of the process and end it without the interpreter's
    teardown (``os._exit`` in the last ``atexit`` step). Only for a command that is the whole
    process: a program or a test that calls the command and goes on must not be ended."""
    if not _kept:
        atexit.register(_end)
    _kept.extend(objects)


def _end() -> None:
    if not _status:  # the command did not end through cli.main: the usual exit
        return
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):  # a closed pipe: what was lost is lost either way
            stream.flush()
    logging.shutdown()  # registered before this module's handler: it would run after it
    os._exit(_status[0])
