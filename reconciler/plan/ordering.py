"""Dependency order: Targets first, then waves of resources whose dependencies come earlier."""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from reconciler.spec.model import ResourceKey

# The last answer of ``waves`` and the exact arguments it answers: a daemon plans the same
# loaded desired state at every poll, so its no-op passes ask the same question again.
_last: tuple[tuple[ResourceKey, ...], dict[ResourceKey, tuple[ResourceKey, ...]],
             list[list[ResourceKey]]] | None = None


def waves(nodes: Iterable[ResourceKey],
          depends_on: Mapping[ResourceKey, Iterable[ResourceKey]]) -> list[list[ResourceKey]]:
    """``layered`` of these nodes and dependencies; the previous answer again (copied) when
    both are the same as in the previous call (compared by value, not identity)."""
    global _last
    node_tuple = tuple(nodes)
    depends = {k: tuple(v) for k, v in depends_on.items()}
    last = _last
    if last is not None and last[0] == node_tuple and last[1] == depends:
        return [list(layer) for layer in last[2]]
    out = layered(node_tuple, depends)
    _last = (node_tuple, depends, [list(layer) for layer in out])
    return out


def layered(nodes: Iterable[ResourceKey],
            depends_on: Mapping[ResourceKey, Iterable[ResourceKey]]) -> list[list[ResourceKey]]:
    """Kahn's algorithm in layers. Dependencies outside ``nodes`` are ignored (already applied
    or not part of this plan); cycles were rejected by validation, but any left are put last
    rather than dropped. A Service/Job/Schedule implicitly follows the Targets of its
    environment.

    O(nodes + edges) with no per-node set: a fleet is mostly resources whose only dependencies
    are their environment's Targets, and at 10,000 resources a set and a list per node were
    most of the time of a no-op plan (and fed the cyclic GC)."""
    pending = dict.fromkeys(nodes)
    if not any(depends_on.get(n) for n in depends_on if n in pending):
        return _two_layers(pending)
    return _kahn(pending, depends_on)


def _two_layers(pending: dict[ResourceKey, None]) -> list[list[ResourceKey]]:
    """``_kahn`` when no node has an explicit dependency (most fleets): the Targets and what
    has no Target in its environment first, then everything else, each layer sorted."""
    with_targets = {n[0] for n in pending if n[1] == "Target"}
    first: list[ResourceKey] = []
    second: list[ResourceKey] = []
    for n in pending:
        if n[1] != "Target" and n[0] in with_targets:
            second.append(n)
        else:
            first.append(n)
    first.sort()
    second.sort()
    return [layer for layer in (first, second) if layer]


def _kahn(pending: dict[ResourceKey, None],
          depends_on: Mapping[ResourceKey, Iterable[ResourceKey]]) -> list[list[ResourceKey]]:
    targets: dict[str, list[ResourceKey]] = {}
    for n in pending:
        if n[1] == "Target":
            targets.setdefault(n[0], []).append(n)
    dependents: dict[ResourceKey, list[ResourceKey]] = {}
    remaining: dict[ResourceKey, int] = {}
    layer: list[ResourceKey] = []
    no_targets: list[ResourceKey] = []
    for n in pending:
        explicit = depends_on.get(n)
        env_targets = no_targets if n[1] == "Target" else targets.get(n[0], no_targets)
        deps: Iterable[ResourceKey]
        if explicit:
            deps = {d for d in explicit if d in pending and d != n}
            deps.update(env_targets)
        else:
            deps = env_targets  # distinct already, and never n itself
        count = 0
        for d in deps:
            count += 1
            found = dependents.get(d)
            if found is None:
                dependents[d] = [n]
            else:
                found.append(n)
        if count:
            remaining[n] = count
        else:
            layer.append(n)
    layer.sort()
    out: list[list[ResourceKey]] = []
    placed = 0
    while layer:
        out.append(layer)
        placed += len(layer)
        ready: list[ResourceKey] = []
        for n in layer:
            for m in dependents.get(n, ()):
                left = remaining[m] - 1
                remaining[m] = left
                if left == 0:
                    ready.append(m)
        ready.sort()
        layer = ready
    if placed < len(pending):
        out.append(sorted(n for n, left in remaining.items() if left > 0))
    return out
