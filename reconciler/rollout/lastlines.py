"""The last output lines of what failed (an instance that exited, a Job that returned non-zero):
recorded with the failure and shown by ``apply``, so the reason is on screen, not only in
``reconciler logs``."""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from reconciler.observe.redact import redact

LAST_LINES = 5  # output lines recorded with an exit


def tail(lines: Iterable[str], count: int = LAST_LINES) -> tuple[str, ...]:
    """The last ``count`` non-blank lines, trailing spaces removed, credentials redacted."""
    kept = [line.rstrip() for line in lines if line.strip()]
    return tuple(redact(line) for line in kept[-count:])


def with_output(why: str, lines: Sequence[str]) -> str:
    """``why``, then the lines on one line (a status column, a log field)."""
    return redact(f"{why}; last output: " + " | ".join(lines)) if lines else why
