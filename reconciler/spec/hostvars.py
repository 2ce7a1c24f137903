"""Per-instance values: ``{host}`` and ``{vars.NAME}`` in a Service's health checks and env.

A Target may give each of its instances values of its own (bare_metal: ``hosts[].vars``), for
hosts behind one address (NAT, port forwarding) that differ by a port or a path. Where the
values live in a Target's spec is the provider's declaration (``ProviderSchemas.instance_vars``);
core reads them only through it. Validation rejects a placeholder some instance does not
define (``file:line:col``); at run time the instance's values (``Instance.vars``) replace them.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping
from typing import Any

VAR_NAME = r"[A-Za-z_][A-Za-z0-9_]*"
_PLACEHOLDER = re.compile(r"\{vars\.(" + VAR_NAME + r")\}")


def placeholders(spec: Mapping[str, Any]) -> Iterator[tuple[tuple[str | int, ...], str]]:
    """(path in ``spec``'s document, variable name) of every ``{vars.NAME}`` where they are
    substituted: any string under ``health``, a plain string value of ``env``."""
    if "health" in spec:
        yield from _walk(spec["health"], ("spec", "health"))
    env = spec.get("env")
    if isinstance(env, dict):
        for key, value in env.items():
            if isinstance(value, str):  # a secret reference is not substituted
                yield from _walk(value, ("spec", "env", key))


def uses_vars(spec: Mapping[str, Any]) -> bool:
    """Whether ``spec`` has a ``{vars.NAME}`` where they are substituted (cheap: a Service's
    health and env are small)."""
    health, env = spec.get("health"), spec.get("env")
    return ((health is not None and "{vars." in str(health))
            or (env is not None and "{vars." in str(env)))


def _walk(node: Any, path: tuple[str | int, ...]) -> Iterator[tuple[tuple[str | int, ...], str]]:
    if isinstance(node, str):
        for match in _PLACEHOLDER.finditer(node):
            yield path, match.group(1)
    elif isinstance(node, dict):
        for key, value in node.items():
            yield from _walk(value, (*path, key))
    elif isinstance(node, list):
        for index, value in enumerate(node):
            yield from _walk(value, (*path, index))


def instance_var_maps(target_spec: Mapping[str, Any],
                      declared: str) -> list[tuple[str, Mapping[str, Any]]] | None:
    """(instance name, its values) per instance of a Target, by the provider's declaration
    ``list[].key`` (``hosts[].vars``); None when the Target lists no instances there."""
    if "[]." not in declared:
        return None
    list_key, _, vars_key = declared.partition("[].")
    items = target_spec.get(list_key)
    if not isinstance(items, list) or not items:
        return None
    found: list[tuple[str, Mapping[str, Any]]] = []
    for position, item in enumerate(items):
        if not isinstance(item, dict):
            continue
        values = item.get(vars_key)
        name = str(item.get("name", position))
        found.append((name, values if isinstance(values, dict) else {}))
    return found


def substitute_vars(text: str, values: Mapping[str, str]) -> str:
    """``text`` with each ``{vars.NAME}`` replaced by the instance's value (validation made
    sure every placeholder is defined; one that is not stays as it is and fails where it is
    used)."""
    if "{vars." not in text:
        return text
    return _PLACEHOLDER.sub(lambda m: values.get(m.group(1), m.group(0)), text)


def substitute(text: str, host: str, values: Mapping[str, str]) -> str:
    """``text`` with ``{host}`` replaced by ``host`` and ``{vars.NAME}`` by the instance's
    value (health checks)."""
    return substitute_vars(text.replace("{host}", host), values)
