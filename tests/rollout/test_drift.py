"""The live look of ``reconciler apply`` (``reconciler.rollout.drift.drifted``) through the provider
contract alone: the fake provider of tests/providers/fake.py, the real loader, SQLite store and
Reconciler. How many observations are in flight, per Target and in all."""

from __future__ import annotations

import asyncio
import json
from collections import Counter
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest

from reconciler.providers import registry
from reconciler.rollout.drift import drifted
from reconciler.rollout.engine import Reconciler
from reconciler.spec.loader import files_from_directory, load_desired_state
from reconciler.spec.model import DesiredState, Resource
from reconciler.spec.validate import reload_schemas
from reconciler.state import default_db_url, open_store
from tests.providers.fake import World, fake_info

pytestmark = pytest.mark.timeout(60)

TARGETS = ("east", "west", "north")
SERVICES = 4  # per Target
BATCHING = "north"  # its provider declares host_batching


@pytest.fixture
def world() -> Iterator[World]:
    world = World()
    registry.register(fake_info(world))
    reload_schemas()
    try:
        yield world
    finally:
        registry.unregister("fake")
        reload_schemas()


def doc(kind: str, name: str, spec: dict[str, Any]) -> str:
    return json.dumps({"apiVersion": "fraisier.dev/v1", "kind": kind,
                       "metadata": {"name": name, "environment": "prod"}, "spec": spec})


@pytest.fixture
async def applied(tmp_path: Path, world: World) -> AsyncIterator[tuple[Reconciler, DesiredState]]:
    """Three Targets with four Services each, all applied and running."""
    root, state = tmp_path / "fleet", tmp_path / "state"
    root.mkdir()
    for target in TARGETS:
        (root / f"{target}.yaml").write_text(doc("Target", target, {
            "provider": "fake", **({"hostBatching": True} if target == BATCHING else {})}))
        for i in range(SERVICES):
            (root / f"{target}-{i}.yaml").write_text(doc("Service", f"{target}-{i}", {
                "target": target, "command": ["app"], "fake": {"health": "healthy"}}))
    store = open_store(default_db_url(state))
    await store.migrate()
    engine = Reconciler(store, state_dir=state)
    desired = load_desired_state(files_from_directory(root), commit=f"{1:040x}")
    try:
        result = await engine.reconcile(desired)
        assert result.converged, result.to_json()
        yield engine, desired
    finally:
        await engine.close()
        await store.close()


async def test_the_live_look_follows_the_targets(
        applied: tuple[Reconciler, DesiredState]) -> None:
    """Up to ``concurrency`` observations per Target, every Target at once, and all of a
    Target's Services where its provider batches the looks at a host: a limit over all
    resources, taken in plan order, kept the later Targets waiting for the first one (a fleet
    of 20 one-host Targets was looked at one or two hosts at a time)."""
    engine, desired = applied
    in_flight: Counter[str] = Counter()
    most: Counter[str] = Counter()
    most_in_all = 0

    for target in TARGETS:
        provider: Any = engine.provider_for(desired.resources[
            next(k for k in desired.resources if k.kind == "Target" and k.name == target)])
        observe = provider.observe

        async def slow_observe(resource: Resource, _observe: Any = observe,
                               _target: str = target) -> Any:
            nonlocal most_in_all
            in_flight[_target] += 1
            most[_target] = max(most[_target], in_flight[_target])
            most_in_all = max(most_in_all, sum(in_flight.values()))
            try:
                await asyncio.sleep(0.05)
                return await _observe(resource)
            finally:
                in_flight[_target] -= 1

        provider.observe = slow_observe

    assert await drifted(engine, desired, concurrency=2) == set()
    assert dict(most) == {"east": 2, "west": 2, BATCHING: SERVICES}
    assert most_in_all == 2 + 2 + SERVICES


async def test_the_live_look_finds_what_drifted_on_each_target(
        applied: tuple[Reconciler, DesiredState], world: World) -> None:
    engine, desired = applied
    world.kill("east-1-1")
    world.kill("north-3-1")
    found = await drifted(engine, desired, concurrency=1)
    assert {key.name for key in found} == {"east-1", "north-3"}
