"""Provider schema fragments as the spec stage receives them.

The core schemas (``schemas/``) say nothing about any provider: a Target's ``spec.provider`` is
any name, and Services, Jobs and Schedules have no provider block. Which providers exist, and
what their fields are, is handed to this module by the caller (``reconciler/__init__.py`` hands
the provider registry's fragments) — ``spec/`` imports no provider.

Validation mounts each provider's fragments beside the core files, at
``providers/<name>-target.json`` and ``providers/<name>-workload.json``, so a fragment refers to
core definitions as ``../common.json#/$defs/<name>``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any


def _open_object() -> dict[str, Any]:
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "type": "object",
        "description": "Target spec of a provider that describes no fields (any are accepted).",
    }


@dataclass(frozen=True)
class ProviderSchemas:
    """One provider's fragments: ``target`` validates a Target's ``spec`` (it lists ``provider``
    among its own properties); ``workload`` validates the ``<workload_key>:`` block of a
    Service, Job or Schedule (None: the provider has no such block). ``source`` says where the
    fragments live, for docs.

    ``connection_fields``: the Target fields that only say how the reconciler reaches the
    platform (timeouts, keys, concurrency) and never reach a host, as paths in the Target's
    ``spec`` (``ssh``, ``hosts[].identityFile``: ``[]`` is every element of a list). Changing
    one re-records the Target but gives no resource on it a new revision.

    ``instance_vars``: where a Target lists each instance's own values, ``list[].key``
    (bare_metal: ``hosts[].vars``), for ``{vars.NAME}`` (``spec/hostvars.py``); empty when
    the provider has none."""

    target: dict[str, Any] = field(default_factory=_open_object)
    workload_key: str | None = None
    workload: dict[str, Any] | None = None
    source: str = ""
    connection_fields: tuple[str, ...] = ()
    instance_vars: str = ""


Source = Callable[[], Mapping[str, ProviderSchemas]]
_source: Source | None = None


def use_provider_schemas(source: Source) -> None:
    """Validate with the fragments ``source()`` returns (asked on first validation)."""
    global _source
    _source = source


def current_source() -> Source | None:
    return _source


def provider_schemas() -> Mapping[str, ProviderSchemas]:
    """The fragments handed in; none (every Target rejected) when nothing was handed in."""
    return _source() if _source is not None else {}


def without_fields(spec: dict[str, Any], paths: tuple[str, ...]) -> dict[str, Any]:
    """``spec`` without the fields at ``paths`` (``a.b``, ``a[].b``: see ``connection_fields``);
    ``spec`` itself is not changed."""
    out = dict(spec)
    for path in paths:
        _drop(out, path.replace("[]", ".[]").split("."))
    return out


def _drop(node: Any, parts: list[str]) -> Any:
    """Remove ``parts`` from ``node`` (copying what it changes); returns the new node."""
    head, rest = parts[0], parts[1:]
    if head == "[]":
        if not isinstance(node, list):
            return node
        return [_drop(dict(item) if isinstance(item, dict) else item, rest) if rest else item
                for item in node]
    if not isinstance(node, dict) or head not in node:
        return node
    if not rest:
        del node[head]
        return node
    node[head] = _drop(dict(node[head]) if isinstance(node[head], dict) else node[head], rest)
    return node
