"""The shape of a secret reference: the one place that says what counts as one.

A value in ``env`` (and Coolify ``envs``, a Target's ``token``) is a literal or a mapping with
exactly one of these keys:

* ``{env: NAME}``: a variable of the reconciler's own environment;
* ``{file: /path}``: a file on the reconciler host;
* ``{sops: {file: secrets/prod.yaml, key: db.password}}``: one value of a SOPS file in the
  config repo (YAML, JSON or dotenv), decrypted in process (``spec/sops.py``);
* ``{age: {file: secrets/token.age}}``: a whole age-encrypted file in the config repo
  (``spec/age_files.py``).

Both the resolver (``spec/secrets.py``) and the policy (``spec/policy.py``) ask this module.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any

HOST_KINDS = ("env", "file")  # read from the reconciler host
REPO_KINDS = ("sops", "age")  # encrypted files in the config repo
KINDS = HOST_KINDS + REPO_KINDS


_KIND_SET = frozenset(KINDS)


def ref_kind(value: Any) -> str | None:
    """The kind of reference ``value`` is (one of :data:`KINDS`), None for anything else."""
    # asked of every env value of every resource at each load: dict first (no ABC check)
    if (isinstance(value, dict) or isinstance(value, Mapping)) and len(value) == 1:
        (kind,) = value
        return kind if kind in _KIND_SET else None
    return None


def is_secret_ref(value: Any) -> bool:
    return ref_kind(value) is not None


def is_repo_ref(value: Any) -> bool:
    """A reference into an encrypted file of the config repo (``sops`` or ``age``)."""
    return ref_kind(value) in REPO_KINDS


def repo_file(value: Mapping[str, Any]) -> str | None:
    """The config-repo path a ``sops``/``age`` reference names (None when malformed)."""
    ((_, body),) = value.items()
    if isinstance(body, Mapping) and isinstance(body.get("file"), str) and body["file"]:
        return str(body["file"])
    return None


def sops_key(value: Mapping[str, Any]) -> str | None:
    body = value.get("sops")
    if isinstance(body, Mapping) and isinstance(body.get("key"), str) and body["key"]:
        return str(body["key"])
    return None


def describe(value: Any) -> str:
    """``env:NAME``, ``file:/path``, ``sops:FILE#KEY``, ``age:FILE``: safe to log (it names
    where the secret is, never the secret)."""
    kind = ref_kind(value)
    if kind is None:
        return "<literal>"
    if kind in HOST_KINDS:
        return f"{kind}:{value[kind]}"
    if kind == "sops":
        return f"sops:{repo_file(value)}#{sops_key(value)}"
    return f"age:{repo_file(value)}"


Path = tuple[str | int, ...]


def env_refs(value: Any, path: Path) -> Iterator[tuple[Path, Mapping[str, Any]]]:
    """Every secret reference under an ``env``-like mapping (``{value: ref}`` forms included),
    with its path below ``path``."""
    if not isinstance(value, Mapping):
        return
    for key, item in value.items():
        if isinstance(item, Mapping):
            if is_secret_ref(item):
                yield (*path, key), item
            elif is_secret_ref(item.get("value")):
                yield (*path, key, "value"), item["value"]


def spec_refs(spec: Mapping[str, Any]) -> Iterator[tuple[Path, Mapping[str, Any]]]:
    """The references of a resource's ``env`` and Coolify ``envs`` (paths from ``spec``)."""
    yield from env_refs(spec.get("env"), ("env",))
    coolify = spec.get("coolify")
    if isinstance(coolify, Mapping):
        yield from env_refs(coolify.get("envs"), ("coolify", "envs"))
