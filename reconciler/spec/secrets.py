"""Resolve environment values and secret references at apply time.

A value is a literal (string or number) or a reference: ``{env: NAME}`` (a variable of the
reconciler's own environment) or ``{file: /path}`` (a file's content, one trailing newline
dropped). Errors name the reference (``env:NAME``, ``file:/path``), never a value.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

from reconciler.errors import SecretError


def is_secret_ref(value: Any) -> bool:
    return isinstance(value, Mapping) and len(value) == 1 and ("env" in value or "file" in value)


def describe_ref(value: Any) -> str:
    """``env:NAME`` / ``file:/path`` for a reference; safe to log (it is not the value)."""
    if is_secret_ref(value):
        ((kind, where),) = value.items()
        return f"{kind}:{where}"
    return "<literal>"


def resolve_secret(value: Any, *, environ: Mapping[str, str] | None = None) -> str:
    """The string a literal or a secret reference stands for."""
    if isinstance(value, str):
        return value
    if isinstance(value, int | float) and not isinstance(value, bool):
        return str(value)
    if not is_secret_ref(value):
        raise SecretError(
            f"unsupported value of type {type(value).__name__}: expected a string, a number, "
            "{env: NAME} or {file: /path}"
        )
    ((kind, where),) = value.items()
    if not isinstance(where, str) or not where:
        raise SecretError(f"invalid secret reference {kind}:{where!r}")
    if kind == "env":
        source = os.environ if environ is None else environ
        if where not in source:
            raise SecretError(f"secret reference env:{where} is not set")
        return source[where]
    try:
        with open(where, encoding="utf-8") as handle:
            content = handle.read()
    except (OSError, UnicodeDecodeError) as exc:
        # the reason (e.g. "No such file or directory") never contains the content
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else type(exc).__name__
        raise SecretError(f"secret reference file:{where} cannot be read: {reason}") from None
    if content.endswith("\r\n"):
        return content[:-2]
    if content.endswith("\n"):
        return content[:-1]
    return content


def resolve_env(
    env: Mapping[str, Any], *, environ: Mapping[str, str] | None = None
) -> dict[str, str]:
    """Every variable of a spec's ``env`` with references resolved.

    ``environ`` stands for the reconciler's environment (default: ``os.environ``).
    """
    resolved: dict[str, str] = {}
    for name, value in env.items():
        try:
            resolved[str(name)] = resolve_secret(value, environ=environ)
        except SecretError as exc:
            raise SecretError(f"env {name}: {exc.message}") from None
    return resolved
