"""The cheap paths of planning (layered order, counts, JSON, the paused collector) agree with
the plain definitions they replaced."""

from __future__ import annotations

import asyncio
import gc
import random
from collections.abc import Iterable, Mapping
from datetime import UTC, datetime

import pytest

from reconciler.plan.ordering import waves
from reconciler.plan.planner import (
    DEFERRED,
    ROLLOUT_GC_THRESHOLD,
    SUSPENDED,
    UNCHANGED,
    UPDATE,
    Plan,
    PlanItem,
    gc_paused,
    gc_resumed,
)
from reconciler.spec.model import Resource, ResourceKey
from reconciler.state.store import ResourceRecord

pytestmark = pytest.mark.timeout(60)


def reference_waves(nodes: Iterable[ResourceKey],
                    depends_on: Mapping[ResourceKey, Iterable[ResourceKey]]
                    ) -> list[list[ResourceKey]]:
    """Layered Kahn, written plainly: every node's dependency set, layer by layer."""
    pending = set(nodes)
    deps = {n: {d for d in depends_on.get(n, ()) if d in pending and d != n} for n in pending}
    for n in pending:
        if n.kind != "Target":
            deps[n] |= {t for t in pending if t.kind == "Target"
                        and t.environment == n.environment}
    out: list[list[ResourceKey]] = []
    done: set[ResourceKey] = set()
    while True:
        layer = sorted(n for n in pending - done if deps[n] <= done)
        if not layer:
            break
        out.append(layer)
        done.update(layer)
    if pending - done:
        out.append(sorted(pending - done))
    return out


def test_waves_match_the_plain_layered_definition_on_random_graphs() -> None:
    rng = random.Random(20261126)
    kinds = ["Target", "Service", "Job", "Schedule", "Service"]
    for _ in range(1500):
        envs = ["a", "b", "c"][: rng.randint(1, 3)]
        nodes = [ResourceKey(rng.choice(envs), rng.choice(kinds), f"n{rng.randint(0, 15)}")
                 for _ in range(rng.randint(0, 30))]
        outside = [ResourceKey("a", "Service", "not-planned"), ResourceKey("b", "Target", "gone")]
        deps: dict[ResourceKey, list[ResourceKey]] = {}
        for n in nodes:
            if rng.random() < 0.4:  # cycles, self-references, duplicates, unknown keys
                deps[n] = [rng.choice(nodes + outside) for _ in range(rng.randint(0, 4))]
        if rng.random() < 0.2:
            nodes += nodes[:3]
        assert waves(nodes, deps) == reference_waves(nodes, deps), (nodes, deps)


def test_waves_answer_again_only_the_very_same_question() -> None:
    """waves() keeps its last answer for the next plan of the same fleet: a changed node list,
    a dependency added in place to a list it saw, or its caller editing the answer must not
    bring back a stale order."""
    rng = random.Random(17)
    for _ in range(300):
        nodes = [ResourceKey("a", rng.choice(["Target", "Service", "Job"]), f"n{i}")
                 for i in range(rng.randint(2, 20))]
        deps: dict[ResourceKey, list[ResourceKey]] = {n: [] for n in nodes
                                                      if rng.random() < 0.5}
        first = waves(nodes, deps)
        assert first == reference_waves(nodes, deps)
        first[-1].append(ResourceKey("a", "Service", "added-by-the-caller"))
        again = waves(list(nodes), dict(deps))
        assert again == reference_waves(nodes, deps)
        again[0].clear()
        assert waves(nodes, deps) == reference_waves(nodes, deps)
        if deps:
            dependent = rng.choice(list(deps))
            deps[dependent].append(rng.choice(nodes))  # in place: the same list object
            assert waves(nodes, deps) == reference_waves(nodes, deps)
        fewer = nodes[1:]
        assert waves(fewer, deps) == reference_waves(fewer, deps)


def test_waves_put_a_leftover_cycle_last_and_keep_its_dependents_out_of_earlier_layers() -> None:
    t = ResourceKey("e", "Target", "t")
    a, b, c = (ResourceKey("e", "Service", n) for n in "abc")
    got = waves([a, b, c, t], {a: [b], b: [a], c: [a]})
    assert got == [[t], [a, b, c]]


def _item(name: str, action: str, **kw: object) -> PlanItem:
    key = ResourceKey("prod", "Service", name)
    resource = Resource(key, {}, {"target": "t"}, "f.yaml")
    record = ResourceRecord(key, name, applied_revision="r0")
    return PlanItem(key, action, "r1", resource, record, **kw)  # type: ignore[arg-type]


def test_counts_in_sync_and_json_follow_the_items() -> None:
    opens = datetime(2026, 11, 27, 2, 0, tzinfo=UTC)
    items = [_item("a", UNCHANGED), _item("b", SUSPENDED), _item("c", UNCHANGED)]
    plan = Plan("c" * 40, items, [[i.key for i in items]])
    assert plan.counts() == {UNCHANGED: 2, SUSPENDED: 1}
    assert list(plan.counts()) == [UNCHANGED, SUSPENDED]  # first-seen order
    assert plan.in_sync and Plan(None, [], []).in_sync
    items[2].action = "drift"  # what `diff --live` does to an item
    assert not plan.in_sync
    deferred = _item("d", DEFERRED, reason="outside its sync windows", opens_at=opens)
    plan.items.append(deferred)
    doc = plan.to_json()
    assert doc["summary"] == {UNCHANGED: 1, SUSPENDED: 1, "drift": 1, DEFERRED: 1}
    assert doc["resources"][0] == {
        "resource": "prod/Service/a", "environment": "prod", "kind": "Service", "name": "a",
        "action": UNCHANGED, "revision": "r1", "appliedRevision": "r0", "reason": "",
        "changes": []}
    last = doc["resources"][-1]
    assert last["resource"] == str(deferred.key)
    assert list(last)[-2:] == ["opensAt", "changes"]
    assert last["opensAt"].startswith("2026-11-27T02:00")
    assert "opensAt" not in doc["resources"][0]
    update = _item("e", UPDATE)
    update.record = None
    assert update.to_json()["appliedRevision"] is None


def test_gc_paused_nests_and_restores_the_collector() -> None:
    assert gc.isenabled()
    with gc_paused():
        assert not gc.isenabled()
        with gc_paused():
            assert not gc.isenabled()
        assert not gc.isenabled()  # the inner pause did not own the collector
        default = gc.get_threshold()
        with gc_resumed():  # rollouts: collected, less often than by default
            assert gc.isenabled()
            assert gc.get_threshold()[0] == max(default[0], ROLLOUT_GC_THRESHOLD)
        assert not gc.isenabled() and gc.get_threshold() == default
    assert gc.isenabled()
    with gc_resumed():  # outside a pause: nothing to resume
        assert gc.isenabled()
    assert gc.isenabled()


def test_gc_paused_leaves_a_collector_someone_else_turned_off_alone() -> None:
    gc.disable()
    try:
        with gc_paused():
            with gc_resumed():
                assert not gc.isenabled()  # not this pause's to turn on
        assert not gc.isenabled()
    finally:
        gc.enable()


async def test_gc_resumed_only_inside_a_pause_and_never_after_it() -> None:
    seen: dict[str, bool] = {}
    outside_go = asyncio.Event()
    late_go = asyncio.Event()

    async def outside() -> None:  # created before the pause: not part of it
        await outside_go.wait()
        with gc_resumed():
            seen["outside"] = gc.isenabled()

    async def late() -> None:  # created inside the pause, resumes, outlives it
        with gc_resumed():
            seen["late, resumed"] = gc.isenabled()
            await late_go.wait()

    outside_task = asyncio.create_task(outside())
    await asyncio.sleep(0)
    with gc_paused():
        outside_go.set()
        await outside_task
        late_task = asyncio.create_task(late())
        await asyncio.sleep(0)
        with gc_resumed():
            seen["owner"] = gc.isenabled()
    late_go.set()
    await late_task  # its resumed block ends after the pause: the collector stays on
    assert seen == {"outside": False, "late, resumed": True, "owner": True}
    assert gc.isenabled()
