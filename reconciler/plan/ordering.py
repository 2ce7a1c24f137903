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
    # A Service/Job/Schedule implicitly follows its Target.
    for n in pending:
        if n.kind != "Target":
            deps[n] |= {t for t in pending if t.kind == "Target" and t.environment == n.environment}
    out: list[list[ResourceKey]] = []
    done: set[ResourceKey] = set()
    while pending:
        layer = sorted(n for n in pending if deps[n] <= done)
        if not layer:
            out.append(sorted(pending))
            break
        out.append(layer)
        done.update(layer)
        pending.difference_update(layer)
    return out
