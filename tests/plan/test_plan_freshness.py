"""A plan over a warm spec cache and a Reconciler that already planned never misses a change:
an edited file, a deleted file, a changed Target, a dependency, a sync window, or a row changed
in the state database by another process. Real loader, spec cache, SQLite store and engine."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from reconciler.plan.planner import (
    CREATE,
    DEFERRED,
    DELETE,
    ORPHAN,
    SUSPENDED,
    UNCHANGED,
    UPDATE,
    Plan,
)
from reconciler.rollout.engine import Reconciler
from reconciler.source import revisions as revisions_module
from reconciler.spec.cache import SpecCache
from reconciler.spec.loader import files_from_directory, load_desired_state
from reconciler.spec.model import DesiredState, ResourceKey
from reconciler.state import default_db_url, open_store
from reconciler.state.store import Store

pytestmark = pytest.mark.timeout(120)

TARGET = """apiVersion: fraisier.dev/v1
kind: Target
metadata: {{name: fleet, environment: prod}}
spec: {{provider: bare_metal, transport: local{extra}}}
"""

SERVICE = """apiVersion: fraisier.dev/v1
kind: Service
metadata: {{name: {name}, environment: prod}}
spec:
  target: fleet
  command: [/bin/sleep, "{arg}"]
{extra}"""


def key(name: str) -> ResourceKey:
    return ResourceKey("prod", "Service", name)


@dataclass
class Fleet:
    root: Path
    state: Path
    store: Store
    engine: Reconciler
    cache: SpecCache

    def write(self, name: str, arg: str = "1", extra: str = "") -> None:
        (self.root / f"{name}.yaml").write_text(SERVICE.format(name=name, arg=arg, extra=extra))

    def load(self) -> DesiredState:
        return load_desired_state(files_from_directory(self.root), commit="c" * 40,
                                  cache=self.cache)

    async def plan(self, **kw: bool) -> Plan:
        return await self.engine.plan(self.load(), **kw)

    async def record_all_applied(self) -> None:
        desired = self.load()
        for resource in desired.resources.values():
            revision = self.engine.revision_of(resource, desired)
            for record in (self.store.record_desired, self.store.record_applied):
                await record(resource.key, revision=revision, spec_hash=resource.hash,
                             spec=resource.document(), config_commit=desired.commit)


def actions(plan: Plan) -> dict[str, str]:
    return {i.key.name: i.action for i in plan.items}


@pytest.fixture
async def fleet(tmp_path: Path) -> AsyncIterator[Fleet]:
    root, state = tmp_path / "fleet", tmp_path / "state"
    root.mkdir()
    (root / "target.yaml").write_text(TARGET.format(extra=""))
    store = open_store(default_db_url(state))
    await store.migrate()
    engine = Reconciler(store, state_dir=state)
    f = Fleet(root, state, store, engine, SpecCache(state / "cache" / "spec"))
    for name in ("api", "web", "worker"):
        f.write(name)
    await f.record_all_applied()
    first = await f.plan()
    assert set(actions(first).values()) == {UNCHANGED}  # and every cache is warm now
    assert f.cache.hits > 0
    try:
        yield f
    finally:
        await engine.close()
        await store.close()


async def test_an_edited_file_is_planned_as_an_update_and_only_it(fleet: Fleet) -> None:
    fleet.write("web", arg="2")
    plan = await fleet.plan()
    assert actions(plan) == {"fleet": UNCHANGED, "api": UNCHANGED, "web": UPDATE,
                             "worker": UNCHANGED}
    web = plan.by_key()[key("web")]
    assert [(c.op, c.path, c.new) for c in web.changes] == [("~", "spec.command[1]", "2")]
    fleet.write("web", arg="1")  # back as it was applied: in sync again
    assert set(actions(await fleet.plan()).values()) == {UNCHANGED}


async def test_a_changed_target_makes_every_resource_on_it_a_new_revision(fleet: Fleet) -> None:
    before = {i.key: i.revision for i in (await fleet.plan()).items}
    (fleet.root / "target.yaml").write_text(TARGET.format(extra=", keepReleases: 7"))
    plan = await fleet.plan()
    assert actions(plan) == {"fleet": UPDATE, "api": UPDATE, "web": UPDATE, "worker": UPDATE}
    assert all(i.revision != before[i.key] for i in plan.items)
    # What a fresh engine computes: no revision remembered from the earlier Target.
    desired = fleet.load()
    fresh = Reconciler(fleet.store, state_dir=fleet.state)
    assert {i.key: i.revision for i in plan.items} == {
        k: fresh.revision_of(r, desired) for k, r in desired.resources.items()}


async def test_a_deleted_file_is_an_orphan_or_a_delete(fleet: Fleet) -> None:
    (fleet.root / "worker.yaml").unlink()
    assert actions(await fleet.plan())["worker"] == ORPHAN
    pruned = await fleet.plan(prune=True)
    assert actions(pruned)["worker"] == DELETE
    assert pruned.items[-1].key == key("worker")


async def test_a_new_file_is_a_create(fleet: Fleet) -> None:
    fleet.write("cron-like")
    assert actions(await fleet.plan())["cron-like"] == CREATE


async def test_a_new_dependency_changes_the_order(fleet: Fleet) -> None:
    before = await fleet.plan()
    assert before.order == [[ResourceKey("prod", "Target", "fleet")],
                            [key("api"), key("web"), key("worker")]]
    fleet.write("api", extra="  dependsOn: [worker]\n")
    plan = await fleet.plan()
    assert actions(plan)["api"] == UPDATE
    assert plan.order == [[ResourceKey("prod", "Target", "fleet")],
                          [key("web"), key("worker")], [key("api")]]


async def test_a_closed_sync_window_defers_a_change_without_a_new_revision(fleet: Fleet) -> None:
    # Windows are not part of a revision: adding one changes no revision ...
    closed = ", syncWindows: [{kind: deny, schedule: '* * * * *', duration: 1h}]"
    (fleet.root / "target.yaml").write_text(TARGET.format(extra=closed))
    plan = await fleet.plan()
    assert set(actions(plan).values()) == {UNCHANGED}
    # ... but a change outside them waits for them.
    fleet.write("web", arg="3")
    plan = await fleet.plan()
    assert actions(plan)["web"] == DEFERRED
    assert actions(plan)["api"] == UNCHANGED


def _other_process(state: Path, code: str) -> None:
    """Run ``code`` against the state database in another Python process."""
    script = textwrap.dedent("""
        import asyncio, sys
        from reconciler.spec.model import ResourceKey
        from reconciler.state import default_db_url, open_store

        async def main(store):
            await store.migrate()
        {code}
            await store.close()

        asyncio.run(main(open_store(default_db_url(__import__("pathlib").Path(sys.argv[1])))))
    """).replace("{code}", textwrap.indent(textwrap.dedent(code), "    ").rstrip() + "\n")
    subprocess.run([sys.executable, "-c", script, str(state)], check=True, timeout=60,
                   env={**os.environ}, capture_output=True)


async def test_rows_changed_by_another_process_show_in_the_next_plan(fleet: Fleet) -> None:
    # Drift recorded by another reconciler (or `reconciler suspend`) in the same database.
    _other_process(fleet.state, """
        web = ResourceKey("prod", "Service", "web")
        await store.record_applied(web, revision="elsewhere", spec_hash="x",
                                   spec={"kind": "Service"}, config_commit=None)
        await store.set_suspended(ResourceKey("prod", "Service", "worker"), True)
    """)
    plan = await fleet.plan()
    assert actions(plan) == {"fleet": UNCHANGED, "api": UNCHANGED, "web": UPDATE,
                             "worker": SUSPENDED}
    assert plan.by_key()[key("web")].record.applied_revision == "elsewhere"  # type: ignore[union-attr]
    _other_process(fleet.state, """
        await store.mark_deleted(ResourceKey("prod", "Service", "api"))
    """)
    assert actions(await fleet.plan())["api"] == CREATE


async def test_a_no_op_pass_converges_everything_and_leaves_the_collector_on(
        fleet: Fleet) -> None:
    import gc

    result = await fleet.engine.reconcile(fleet.load(), trigger="test")
    assert result.converged
    assert {o.key.name: o.action for o in result.outcomes} == {
        "fleet": UNCHANGED, "api": UNCHANGED, "web": UNCHANGED, "worker": UNCHANGED}
    assert gc.isenabled()


async def test_a_target_with_windows_still_changes_revisions_when_what_runs_changes(
        fleet: Fleet) -> None:
    windows = ", syncWindows: [{kind: allow, schedule: '* * * * *', duration: 1h}]"
    (fleet.root / "target.yaml").write_text(TARGET.format(extra=windows))
    same = await fleet.plan()
    assert set(actions(same).values()) == {UNCHANGED}
    (fleet.root / "target.yaml").write_text(TARGET.format(extra=windows + ", keepReleases: 3"))
    plan = await fleet.plan()
    assert set(actions(plan).values()) == {UPDATE}
    desired = fleet.load()
    revisions_module._WINDOWLESS.clear()  # computed afresh, not remembered
    fresh = Reconciler(fleet.store, state_dir=fleet.state)
    expected = {k: fresh.revision_of(r, desired) for k, r in desired.resources.items()}
    assert {i.key: i.revision for i in plan.items} == expected
    assert {i.key: i.revision for i in same.items} != expected
