"""Three Targets of the fake provider (tests/providers/fake.py) with four Services each, applied
through the real loader, SQLite store and Reconciler; and a recorder of how many observations are
in flight per Target (the live look of ``apply`` and the daemon's self-heal check)."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections import Counter
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from reconciler.providers import registry
from reconciler.rollout.engine import Reconciler
from reconciler.spec.loader import files_from_directory, load_desired_state
from reconciler.spec.model import DesiredState, Resource
from reconciler.spec.validate import reload_schemas
from reconciler.state import default_db_url, open_store
from reconciler.state.store import Store
from tests.providers.fake import World, fake_info

TARGETS = ("east", "west", "north")
SERVICES = 4  # per Target
BATCHING = "north"  # its provider declares host_batching


@dataclass
class Applied:
    engine: Reconciler
    store: Store
    desired: DesiredState
    world: World


@dataclass
class InFlight:
    """Observations in flight per Target, and the most seen (per Target and in all)."""

    now: Counter[str] = field(default_factory=Counter)
    most: Counter[str] = field(default_factory=Counter)
    most_in_all: int = 0
    most_tasks: int = 0  # asyncio tasks alive at once, while looks are in flight

    def slow_down(self, applied: Applied, seconds: float = 0.05) -> None:
        """Every Target's provider takes ``seconds`` per observation, counted here."""
        for target in TARGETS:
            key = next(k for k in applied.desired.resources
                       if k.kind == "Target" and k.name == target)
            provider: Any = applied.engine.provider_for(applied.desired.resources[key])
            observe = provider.observe

            async def slow_observe(resource: Resource, _observe: Any = observe,
                                   _target: str = target) -> Any:
                self.now[_target] += 1
                self.most[_target] = max(self.most[_target], self.now[_target])
                self.most_in_all = max(self.most_in_all, sum(self.now.values()))
                self.most_tasks = max(self.most_tasks, len(asyncio.all_tasks()))
                try:
                    await asyncio.sleep(seconds)
                    return await _observe(resource)
                finally:
                    self.now[_target] -= 1

            provider.observe = slow_observe


def doc(kind: str, name: str, spec: dict[str, Any]) -> str:
    return json.dumps({"apiVersion": "fraisier.dev/v1", "kind": kind,
                       "metadata": {"name": name, "environment": "prod"}, "spec": spec})


@contextlib.asynccontextmanager
async def applied_fleet(tmp_path: Path) -> AsyncIterator[Applied]:
    """Three Targets with four Services each, all applied and running (the fake provider
    registered meanwhile)."""
    world = World()
    registry.register(fake_info(world))
    reload_schemas()
    root, state = tmp_path / "fleet", tmp_path / "state"
    root.mkdir()
    for target in TARGETS:
        (root / f"{target}.yaml").write_text(doc("Target", target, {
            "provider": "fake", **({"hostBatching": True} if target == BATCHING else {})}))
        for i in range(SERVICES):
            (root / f"{target}-{i}.yaml").write_text(doc("Service", f"{target}-{i}", {
                "target": target, "command": ["app"], "fake": {"health": "healthy"}}))
    store = open_store(default_db_url(state))
    engine = Reconciler(store, state_dir=state)
    try:
        await store.migrate()
        desired = load_desired_state(files_from_directory(root), commit=f"{1:040x}")
        result = await engine.reconcile(desired)
        assert result.converged, result.to_json()
        yield Applied(engine, store, desired, world)
    finally:
        await engine.close()
        await store.close()
        registry.unregister("fake")
        reload_schemas()
