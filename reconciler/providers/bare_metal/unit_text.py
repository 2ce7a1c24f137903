"""Values in a systemd unit file, escaped for systemd's own parser: an ``ExecStart`` argv
(quotes, ``%`` specifiers, ``$`` expansion), a single value, ``Environment=`` lines and the
``EnvironmentFile`` (every value double-quoted, read by systemd and by ``sh``)."""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence

from reconciler.errors import ProviderError

_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*\Z")
_BARE_PROGRAM = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.+-]*\Z")


def _escape_word(value: str) -> str:
    """One argument, double-quoted for systemd's ExecStart parser: C escapes for quotes,
    backslashes and control characters, ``%%`` for specifiers and ``$$`` against expansion."""
    if "\0" in value:
        raise ProviderError("an argument contains a NUL character")
    out = []
    for ch in value:
        if ch == "\\":
            out.append("\\\\")
        elif ch == '"':
            out.append('\\"')
        elif ch == "%":
            out.append("%%")
        elif ch == "$":
            out.append("$$")
        elif ch == "\n":
            out.append("\\n")
        elif ch == "\t":
            out.append("\\t")
        elif ord(ch) < 0x20 or ord(ch) == 0x7F:
            out.append(f"\\x{ord(ch):02x}")
        else:
            out.append(ch)
    return '"' + "".join(out) + '"'


def exec_argv(argv: Sequence[str]) -> str:
    """``ExecStart=`` value that systemd splits back into exactly ``argv``.

    ``argv[0]`` must be absolute or a bare program name: systemd reads a leading ``-@:+!`` of the
    (unquoted) first word as flags, so nothing else is allowed there."""
    if not argv:
        raise ProviderError("empty command")
    program = argv[0]
    if not (program.startswith("/") or _BARE_PROGRAM.match(program)):
        raise ProviderError(
            f"command {program!r} must be an absolute path, a program name, or a path relative "
            "to the release"
        )
    return " ".join(_escape_word(a) for a in argv)


def unit_value(value: str, what: str) -> str:
    """A single-line unit setting (paths, descriptions): no newlines; ``%`` escaped."""
    if any(ord(c) < 0x20 for c in value):
        raise ProviderError(f"{what} {value!r} contains a control character")
    return value.replace("%", "%%")


def environment_lines(env: Mapping[str, str]) -> list[str]:
    """``Environment=`` lines for variables that are not secret (the unit is world-readable):
    each assignment double-quoted, ``\\`` and ``"`` escaped, ``%`` doubled (a specifier)."""
    lines = []
    for name, value in sorted(env.items()):
        if not _ENV_NAME.match(name):
            raise ProviderError(f"invalid environment variable name {name!r}")
        if any(ord(c) < 0x20 or ord(c) == 0x7F for c in value):
            raise ProviderError(f"environment variable {name} contains a control character")
        escaped = value.replace("\\", "\\\\").replace('"', '\\"').replace("%", "%%")
        lines.append(f'Environment="{name}={escaped}"')
    return lines


def env_file(env: Mapping[str, str]) -> bytes:
    """An ``EnvironmentFile=``: every value double-quoted, ``"\\`$`` escaped (systemd's own
    rules), newlines kept inside the quotes."""
    lines = ["# written by fraisier; values are secrets: mode 0600"]
    for name, value in sorted(env.items()):
        if not _ENV_NAME.match(name):
            raise ProviderError(f"invalid environment variable name {name!r}")
        if "\0" in value:
            raise ProviderError(f"environment variable {name} contains a NUL character")
        escaped = re.sub(r'(["\\`$])', r"\\\1", value)
        lines.append(f'{name}="{escaped}"')
    return ("\n".join(lines) + "\n").encode()
