"""Client-supplied text made safe to echo: the one helper for terminals, logs and responses.

A branch name, a delivery header, a CLI argument or a payload field may carry C0/C1 controls
(an ANSI escape rewriting the terminal, a NUL, a carriage return overwriting the line) or
Unicode format characters: bidi overrides and isolates (U+202A to U+202E, U+2066 to U+2069), marks
(U+200E/U+200F, U+061C), zero-width characters. They make an echoed value read differently
from what it is (a "Trojan Source" branch name). Each is replaced by ``?``.
"""

from __future__ import annotations


def printable(text: str, limit: int | None = None, *, lines: bool = False) -> str:
    """``text`` with every non-printable character (``str.isprintable``: controls, format
    characters such as bidi controls, separators other than space) replaced by ``?``; newlines
    and tabs kept with ``lines``; at most ``limit`` characters (``…`` when cut)."""
    if text.isprintable():
        clean = text
    else:
        clean = "".join(c if c.isprintable() or (lines and c in "\n\t") else "?" for c in text)
    if limit is None or len(clean) <= limit:
        return clean
    return clean[:limit - 1] + "…"
