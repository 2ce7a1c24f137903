"""``layered`` (the plan's order: Targets first, then waves of what depends on them) against a
plain reference implementation of its rule, on random graphs: fleets without any dependsOn
(the common case, planned without the general algorithm), with empty or outside or self
dependencies, with dependencies and with cycles."""

from __future__ import annotations

import random
from collections.abc import Iterable, Mapping

import pytest

from reconciler.plan.ordering import layered, waves
from reconciler.spec.model import ResourceKey


def reference(nodes: Iterable[ResourceKey],
              depends_on: Mapping[ResourceKey, Iterable[ResourceKey]]) -> list[list[ResourceKey]]:
    """The rule, layer by layer: a node goes in the first layer after all of its dependencies
    (its explicit ones among the nodes, not itself, and every Target of its environment unless
    it is a Target); what a cycle keeps out goes last, sorted."""
    pending = list(dict.fromkeys(nodes))
    among = set(pending)
    deps = {}
    for n in pending:
        found = {d for d in depends_on.get(n) or () if d in among and d != n}
        if n.kind != "Target":
            found |= {t for t in pending if t.kind == "Target" and t.environment == n.environment}
        deps[n] = found
    out: list[list[ResourceKey]] = []
    placed: set[ResourceKey] = set()
    while True:
        layer = sorted(n for n in pending if n not in placed and deps[n] <= placed)
        if not layer:
            break
        out.append(layer)
        placed.update(layer)
    rest = sorted(n for n in pending if n not in placed)
    return [*out, rest] if rest else out


def random_graph(rng: random.Random) -> tuple[list[ResourceKey],
                                              dict[ResourceKey, list[ResourceKey]]]:
    envs = rng.sample(["default", "prod", "staging", "dev"], rng.randint(1, 4))
    kinds = ["Target", "Service", "Service", "Job", "Schedule"]
    nodes = [ResourceKey(rng.choice(envs), rng.choice(kinds), f"r{rng.randrange(40)}")
             for _ in range(rng.randint(0, 60))]
    nodes += rng.sample(nodes, min(len(nodes), rng.randint(0, 3)))  # asked twice
    rng.shuffle(nodes)
    shape = rng.choice(["none", "empty", "outside", "self", "some", "cycles"])
    depends: dict[ResourceKey, list[ResourceKey]] = {}
    for n in nodes:
        if shape == "empty" and rng.random() < 0.5:
            depends[n] = []
        elif shape == "outside" and rng.random() < 0.3:
            depends[n] = [ResourceKey(n.environment, "Service", "elsewhere")]
        elif shape == "self" and rng.random() < 0.3:
            depends[n] = [n]
        elif shape in ("some", "cycles") and nodes and rng.random() < 0.3:
            earlier = nodes[:nodes.index(n)] if shape == "some" else nodes
            if earlier:
                depends[n] = rng.sample(earlier, min(len(earlier), rng.randint(1, 3)))
    if shape == "outside" and rng.random() < 0.5:  # a key that is no node at all
        depends[ResourceKey("nowhere", "Service", "x")] = [nodes[0]] if nodes else []
    return nodes, depends


@pytest.mark.parametrize("seed", range(400))
def test_layers_follow_the_rule(seed: int) -> None:
    rng = random.Random(seed)
    nodes, depends = random_graph(rng)
    expected = reference(nodes, depends)
    assert layered(nodes, depends) == expected
    assert waves(nodes, depends) == expected
    assert waves(nodes, depends) == expected  # the previous answer, again


def test_a_fleet_without_dependencies_is_two_sorted_layers() -> None:
    services = [ResourceKey("prod", "Service", f"s{n}") for n in range(50, 0, -1)]
    targets = [ResourceKey("prod", "Target", "b"), ResourceKey("prod", "Target", "a")]
    loose = ResourceKey("dev", "Service", "alone")  # no Target in its environment
    nodes = [*services[:10], *targets, loose, *services[10:]]
    assert layered(nodes, {}) == [sorted([*targets, loose]), sorted(services)]
    assert layered([], {}) == []
