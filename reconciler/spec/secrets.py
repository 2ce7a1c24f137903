"""Resolve environment values and secret references at apply time.

A value is a literal (string or number) or a reference: ``{env: NAME}`` (a variable of the
reconciler's own environment), ``{file: /path}`` (a file's content, one trailing newline
dropped), or an encrypted file of the config repo, ``{sops: {file, key}}`` / ``{age: {file}}``
(``spec/encrypted.py``; read through ``repo``, the config repo at the deployed commit). The
shapes are ``spec/refs.py``'s. Errors name the reference (``env:NAME``, ``file:/path``,
``sops:FILE#KEY``), never a value.

References written in the config repo are resolved against the operator policy
(``reconciler.spec.policy``): never one of the reconciler's own credentials, files only when
their real path is an allowed regular file. Only the operator's own flags (``trusted=True``)
skip the policy.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Callable, Mapping
from typing import Any

from reconciler.errors import SecretError
from reconciler.spec import encrypted, policy, refs
from reconciler.spec.model import DEFAULT_ENVIRONMENT

# Reads a file of the config repo at the deployed commit (None: no such file).
RepoReader = Callable[[str], bytes | None]

is_secret_ref = refs.is_secret_ref
describe_ref = refs.describe


def resolve_secret(value: Any, *, environ: Mapping[str, str] | None = None,
                   environment: str = DEFAULT_ENVIRONMENT, trusted: bool = False,
                   repo: RepoReader | None = None) -> str:
    """The string a literal or a secret reference stands for.

    ``environment``: the environment of the resource the reference was written in (its policy
    rules apply). ``trusted``: the reference comes from the operator (a daemon flag), not from
    the config repo.
    """
    if isinstance(value, str):
        return value
    if isinstance(value, int | float) and not isinstance(value, bool):
        return str(value)
    if not is_secret_ref(value):
        raise SecretError(
            f"unsupported value of type {type(value).__name__}: expected a string, a number, "
            "{env: NAME}, {file: /path}, {sops: {file, key}} or {age: {file}}"
        )
    if refs.is_repo_ref(value):
        if not trusted:
            problem = policy.ref_problem(value, environment)
            if problem is not None:
                raise policy.SecretRefused(f"secret reference refused: {problem}")
        return encrypted.resolve(value, repo)
    ((kind, where),) = value.items()
    if not isinstance(where, str) or not where:
        raise SecretError(f"invalid secret reference {kind}:{where!r}")
    if not trusted:
        problem = policy.ref_problem(value, environment)
        if problem is not None:
            raise policy.SecretRefused(f"secret reference refused: {problem}")
    if kind == "env":
        source = os.environ if environ is None else environ
        if where not in source:
            raise SecretError(f"secret reference env:{where} is not set")
        return source[where]
    content = read_secret_file(where, follow=trusted)
    if content.endswith("\r\n"):
        return content[:-2]
    if content.endswith("\n"):
        return content[:-1]
    return content


def read_secret_file(path: str, *, follow: bool = False) -> str:
    """A secret file's text. Config-repo references (``follow=False``) open the real path
    without following a link there (a link swapped in after the policy check is refused), and
    only a regular file of at most 1 MiB is read: a FIFO or device would block or never end.
    Errors name the path and the reason, never the content."""
    real = path if follow else os.path.realpath(path)
    flags = os.O_RDONLY | os.O_CLOEXEC | os.O_NONBLOCK | (0 if follow else os.O_NOFOLLOW)
    try:
        fd = os.open(real, flags)
        try:
            info = os.fstat(fd)
            if not stat.S_ISREG(info.st_mode):
                raise SecretError(
                    f"secret reference file:{path} cannot be read: not a regular file")
            if info.st_size > policy.MAX_SECRET_FILE:
                raise SecretError(f"secret reference file:{path} cannot be read: larger than 1 MiB")
            with os.fdopen(fd, "rb", closefd=False) as handle:
                data = handle.read(policy.MAX_SECRET_FILE + 1)
        finally:
            os.close(fd)
        if len(data) > policy.MAX_SECRET_FILE:
            raise SecretError(f"secret reference file:{path} cannot be read: larger than 1 MiB")
        return data.decode("utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        # the reason (e.g. "No such file or directory") never contains the content
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else type(exc).__name__
        raise SecretError(f"secret reference file:{path} cannot be read: {reason}") from None


def resolve_env(
    env: Mapping[str, Any], *, environ: Mapping[str, str] | None = None,
    environment: str = DEFAULT_ENVIRONMENT, trusted: bool = False,
    repo: RepoReader | None = None,
) -> dict[str, str]:
    """Every variable of a spec's ``env`` with references resolved.

    ``environ`` stands for the reconciler's environment (default: ``os.environ``).
    """
    resolved: dict[str, str] = {}
    for name, value in env.items():
        try:
            resolved[str(name)] = resolve_secret(value, environ=environ,
                                                environment=environment, trusted=trusted,
                                                repo=repo)
        except SecretError as exc:
            raise type(exc)(f"env {name}: {exc.message}") from None  # FR500 or FR501
    return resolved
