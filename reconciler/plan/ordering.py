"""Dependency order: Targets first, then waves of resources whose dependencies come earlier."""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from reconciler.spec.model import ResourceKey


def waves(nodes: Iterable[ResourceKey],
          depends_on: Mapping[ResourceKey, Iterable[ResourceKey]]) -> list[list[ResourceKey]]:
    """Kahn's algorithm in layers. Dependencies outside ``nodes`` are ignored (already applied
    or not part of this plan); cycles were rejected by validation, but any left are put last
    rather than dropped."""
    pending = set(nodes)
    deps = {n: {d for d in depends_on.get(n, ()) if d in pending and d != n} for n in pending}
    # A Service/Job/Schedule implicitly follows the Targets of its environment.
    targets: dict[str, set[ResourceKey]] = {}
    for n in pending:
        if n.kind == "Target":
            targets.setdefault(n.environment, set()).add(n)
    for n in pending:
        if n.kind != "Target":
            deps[n] |= targets.get(n.environment, set())
    out: list[list[ResourceKey]] = []
    # Kahn's algorithm with in-degree counts: O(nodes + edges), not O(nodes² per layer).
    dependents: dict[ResourceKey, list[ResourceKey]] = {n: [] for n in pending}
    remaining = {n: len(d) for n, d in deps.items()}
    for n, d in deps.items():
        for dep in d:
            dependents[dep].append(n)
    layer = sorted(n for n, count in remaining.items() if count == 0)
    while layer:
        out.append(layer)
        pending.difference_update(layer)
        ready: list[ResourceKey] = []
        for n in layer:
            for m in dependents[n]:
                remaining[m] -= 1
                if remaining[m] == 0:
                    ready.append(m)
        layer = sorted(ready)
    if pending:
        out.append(sorted(pending))
    return out
