"""The engine driven through the provider contract alone: a fake provider (tests/providers/fake.py)
registered in-process, its schema fragments handed to validation, and the real loader, SQLite
store and Reconciler. No service: these run anywhere (`pytest -m "not integration"`).

Covers what the engine interprets of a provider: the health gate (the platform's own health
signal, a check still starting, exec probes run where the capability says), rollback to the
last good revision, self-heal of an instance that died, and the order of prune.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import pytest

from reconciler.providers import registry
from reconciler.rollout.engine import Reconciler
from reconciler.spec.loader import files_from_directory, load_desired_state
from reconciler.spec.model import DesiredState, ResourceKey
from reconciler.spec.validate import reload_schemas
from reconciler.state import default_db_url, open_store
from reconciler.state.store import Store
from tests.providers.fake import World, fake_info

pytestmark = pytest.mark.timeout(60)


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


@dataclass
class Fleet:
    root: Path
    store: Store
    engine: Reconciler
    world: World
    commits: int = 0

    def write(self, name: str, doc: dict[str, Any]) -> None:
        (self.root / f"{name}.yaml").write_text(json.dumps(doc))

    def service(self, name: str, fake: dict[str, Any] | None = None, **spec: Any) -> None:
        self.write(name, {
            "apiVersion": "fraisier.dev/v1", "kind": "Service",
            "metadata": {"name": name, "environment": "prod"},
            "spec": {"target": "fleet", "command": ["app", name],
                     **({"fake": fake} if fake is not None else {}), **spec},
        })

    def load(self) -> DesiredState:
        self.commits += 1
        return load_desired_state(files_from_directory(self.root),
                                  commit=f"{self.commits:040x}")


@pytest.fixture
async def fleet(tmp_path: Path, world: World) -> AsyncIterator[Fleet]:
    root, state = tmp_path / "fleet", tmp_path / "state"
    root.mkdir()
    store = open_store(default_db_url(state))
    await store.migrate()
    engine = Reconciler(store, state_dir=state)
    f = Fleet(root, store, engine, world)
    f.write("target", {"apiVersion": "fraisier.dev/v1", "kind": "Target",
                       "metadata": {"name": "fleet", "environment": "prod"},
                       "spec": {"provider": "fake", "instances": 2}})
    try:
        yield f
    finally:
        await engine.close()
        await store.close()


API = ResourceKey("prod", "Service", "api")


def result_of(result: Any, key: ResourceKey) -> str:
    [outcome] = [o for o in result.outcomes if o.key == key]
    return str(outcome.result)


async def test_a_provider_field_validates_only_with_the_fragment_handed_in(fleet: Fleet) -> None:
    fleet.service("api", {"health": "healthy"})
    assert "api" in {r.name for r in fleet.load().resources.values()}
    registry.unregister("fake")
    reload_schemas()
    with pytest.raises(Exception, match="fake"):  # the Target's provider is no longer known
        fleet.load()


async def test_gate_reads_the_platform_health_and_rolls_back(fleet: Fleet) -> None:
    fleet.service("api", {"health": "healthy"})
    first = await fleet.engine.reconcile(fleet.load())
    assert result_of(first, API) == "succeeded"
    good = fleet.world.running(str(API))
    assert len(good) == 2

    # the next revision runs, but the platform's own check says unhealthy: no health section
    # in the spec, the gate still fails it and the last good revision comes back
    fleet.service("api", {"health": "unhealthy"}, env={"V": "2"})
    second = await fleet.engine.reconcile(fleet.load())
    assert result_of(second, API) == "rolled_back"
    assert fleet.world.running(str(API)) == good
    record = await fleet.store.get_resource(API)
    assert record is not None and record.last_result == "rolled_back"


async def test_gate_waits_for_a_check_still_starting(fleet: Fleet) -> None:
    fleet.service("api", {"health": "starting"})
    result = await fleet.engine.reconcile(fleet.load())
    assert result_of(result, API) == "succeeded"


async def test_exec_probes_run_where_the_capability_says(fleet: Fleet) -> None:
    health = {"exec": {"command": ["true"]}, "interval": "50ms", "timeout": "1s"}
    fleet.service("api", {"health": "none"}, health=health)
    result = await fleet.engine.reconcile(fleet.load())
    assert result_of(result, API) == "succeeded"
    # in the instance (the fake's runner), with the working dir its state reports
    assert {(i, argv, cwd) for i, argv, cwd in fleet.world.probes} == {
        ("api-1", ("true",), "/fake/api"), ("api-2", ("true",), "/fake/api")}


async def test_the_gate_starts_from_the_state_a_deploy_reports(fleet: Fleet) -> None:
    """A provider whose deploy returns the instance as it started (bare metal's commit observes
    the units it restarted) spares the gate its first look: the first probe runs after no
    observation; otherwise the gate looks once before probing."""
    health = {"exec": {"command": ["true"]}, "interval": "50ms", "timeout": "1s"}
    fleet.service("api", {"health": "none", "reportsStart": True}, health=health)
    fleet.service("web", {"health": "none"}, health=health)
    result = await fleet.engine.reconcile(fleet.load())
    assert result_of(result, API) == "succeeded"
    first: dict[str, int] = {}
    for instance, looks in fleet.world.looks_at_probe:
        first.setdefault(instance, looks)
    assert first == {"api-1": 0, "api-2": 0, "web-1": 1, "web-2": 1}, first


async def test_the_stay_up_rule_counts_the_age_the_platform_reports(
        fleet: Fleet, monkeypatch: pytest.MonkeyPatch) -> None:
    """A probe pass counts once the instance has been up for its interval (1 s here). A
    provider that reports each instance's age (``up_for``, by its host's clock) spares the wait
    for an instance already up that long; an instance just started is waited for all the same,
    and no gate passes before the age its platform reported reached the interval."""
    from reconciler.rollout import gate

    waits: list[float] = []
    sleep_until = gate._sleep_until

    async def recording(when: float) -> None:
        waits.append(when - time.monotonic())
        await sleep_until(when)

    monkeypatch.setattr(gate, "_sleep_until", recording)
    health = {"exec": {"command": ["true"]}, "interval": "2s", "timeout": "1s"}
    fleet.service("api", {"health": "none", "reportsStart": True, "startedAgo": 30},
                  health=health)
    result = await fleet.engine.reconcile(fleet.load())
    assert result_of(result, API) == "succeeded"
    assert waits and max(waits) <= 0, waits  # up for 30 s already: no wait
    assert min(age for _, age in fleet.world.ages) >= 30

    waits.clear()
    fleet.world.ages.clear()
    fleet.service("web", {"health": "none", "reportsStart": True, "startedAgo": 0},
                  health=health)
    result = await fleet.engine.reconcile(fleet.load())
    assert result_of(result, ResourceKey("prod", "Service", "web")) == "succeeded"
    assert waits and min(waits) > 0.5, waits  # just started: waited for the rest of 1 s
    last_age: dict[str, float] = {}
    for instance, age in fleet.world.ages:
        last_age[instance] = age
    assert set(last_age) == {"web-1", "web-2"}
    assert min(last_age.values()) >= 1.0, last_age  # the verdict's look: up for 1 s


async def test_the_stay_up_rule_counts_the_time_since_the_first_look(fleet: Fleet) -> None:
    """The age a provider reported is the instance's at that look: the time between the look
    (the deploy's, at the start) and the gate's start counts too, so a gate whose deploy
    returned late does not wait the whole interval again."""
    health = {"exec": {"command": ["true"]}, "interval": "1s", "timeout": "1s"}
    fleet.service("api", {"health": "none", "reportsStart": True, "startedAgo": 0,
                          "returnsAfter": 1.0}, health=health)
    result = await fleet.engine.reconcile(fleet.load())
    assert result_of(result, API) == "succeeded"
    last_age: dict[str, float] = {}
    for instance, age in fleet.world.ages:
        last_age[instance] = age
    assert set(last_age) == {"api-1", "api-2"}, last_age
    # the verdict's look: up for the interval, not for the deploy's delay and the interval
    assert all(1.0 <= age < 1.8 for age in last_age.values()), last_age


async def rechecked_rollout(fleet: Fleet, fake: dict[str, Any], interval: str) -> Any:
    """``api`` (an exec probe every ``interval``) deployed on a Target whose provider declares
    ``rechecks``, its deploy reporting the instance it started; the pass's result."""
    fleet.write("target", {"apiVersion": "fraisier.dev/v1", "kind": "Target",
                           "metadata": {"name": "fleet", "environment": "prod"},
                           "spec": {"provider": "fake", "instances": 2, "rechecks": True}})
    health = {"exec": {"command": ["true"]}, "interval": interval, "timeout": "1s"}
    fleet.service("api", {"reportsStart": True, "startedAgo": 0, **fake}, health=health)
    return await fleet.engine.reconcile(fleet.load())


async def test_the_gate_rechecks_the_instance_it_saw_where_the_provider_can(
        fleet: Fleet) -> None:
    """A provider declaring ``rechecks`` answers the gate's later looks (its watcher, the
    stay-up look) with ``recheck`` of the instance its deploy reported: no observation at all
    after the deploy, and the verdict still waits for the age the platform reports."""
    result = await rechecked_rollout(fleet, {"health": "none"}, "200ms")
    assert result_of(result, API) == "succeeded"
    assert fleet.world.looks == {"api-1": 0, "api-2": 0}, fleet.world.looks
    assert set(fleet.world.rechecks) == {"api-1", "api-2"}, fleet.world.rechecks
    last_age: dict[str, float] = {}
    for instance, age in fleet.world.ages:
        last_age[instance] = age
    assert min(last_age.values()) >= 0.2, last_age  # the verdict's look: up for the interval


async def test_an_instance_replaced_during_its_gate_fails_it_through_a_recheck(
        fleet: Fleet) -> None:
    """The recheck cannot vouch for a replaced instance (a new pid): the gate observes it
    and fails with what the observation says, as without ``rechecks``."""
    result = await rechecked_rollout(fleet, {"health": "none", "restartsAfter": 0.1}, "1s")
    [outcome] = [o for o in result.outcomes if o.key == API]
    assert str(outcome.result) != "succeeded", outcome
    assert "restarted" in outcome.message, outcome.message
    # what the provider says of the replaced run (compose: the sandbox setting that stopped it)
    assert "restarted by the platform 1 time(s) after exiting: out of memory" in (
        outcome.message), outcome.message
    assert fleet.world.rechecks, fleet.world.rechecks
    assert any(looks > 0 for looks in fleet.world.looks.values()), fleet.world.looks


async def test_no_recheck_of_an_instance_with_a_platform_health_signal(fleet: Fleet) -> None:
    """A recheck reports the health its instance had when seen: an instance whose platform
    has its own health signal is observed again instead (the signal may have changed)."""
    result = await rechecked_rollout(fleet, {"health": "healthy"}, "200ms")
    assert result_of(result, API) == "succeeded"
    assert fleet.world.rechecks == {}, fleet.world.rechecks
    assert all(looks > 0 for looks in fleet.world.looks.values()), fleet.world.looks


ROLLING = {"type": "rolling", "maxParallel": 1}


async def rolled_out_on_three(fleet: Fleet) -> dict[str, str]:
    """api rolled out on 3 instances, one per batch; what runs where (calls forgotten)."""
    fleet.write("target", {"apiVersion": "fraisier.dev/v1", "kind": "Target",
                           "metadata": {"name": "fleet", "environment": "prod"},
                           "spec": {"provider": "fake", "instances": 3}})
    fleet.service("api", {"health": "none"}, strategy=ROLLING)
    assert result_of(await fleet.engine.reconcile(fleet.load()), API) == "succeeded"
    fleet.world.calls.clear()
    fleet.world.staged.clear()
    return fleet.world.running(str(API))


async def test_a_rolling_rollout_stages_its_later_batches_ahead(fleet: Fleet) -> None:
    """With ``stages_ahead``, a rolling rollout of one instance per batch stages the new
    revision on instances 2 and 3 while instance 1 deploys: each staged before its own deploy,
    the first never (it deploys at once), and staging leaves what runs as it was."""
    v1 = await rolled_out_on_three(fleet)
    fleet.service("api", {"health": "none"}, strategy=ROLLING, env={"V": "2"})
    assert result_of(await fleet.engine.reconcile(fleet.load()), API) == "succeeded"
    v2 = fleet.world.running(str(API))
    assert set(v2.values()) != set(v1.values())
    order = [(op, i) for op, r, i in fleet.world.calls if r == str(API)]
    assert sorted(i for op, i in order if op == "stage") == ["api-2", "api-3"], order
    for instance in ("api-2", "api-3"):
        assert order.index(("stage", instance)) < order.index(("deploy", instance)), order
    # what ran on each staged instance then: the old revision; staged: the new one
    assert sorted(fleet.world.staged) == sorted(
        (i, v2[i], v1[i]) for i in ("api-2", "api-3"))


async def test_staged_instances_are_not_deployed_when_the_first_batch_fails(
        fleet: Fleet, monkeypatch: pytest.MonkeyPatch) -> None:
    """A rollout whose first batch fails its gate rolls back; instances staged ahead were
    never deployed (they keep running the old revision). A provider that does not declare
    ``stages_ahead`` is never asked to stage."""
    v1 = await rolled_out_on_three(fleet)
    fleet.service("api", {"health": "crash"}, strategy=ROLLING)
    result = await fleet.engine.reconcile(fleet.load())
    assert result_of(result, API) != "succeeded"
    deployed = [i for op, r, i in fleet.world.calls if op == "deploy" and r == str(API)]
    assert set(deployed) == {"api-1"}, deployed  # the failed one, then its rollback
    assert fleet.world.running(str(API)) == v1

    from tests.providers.fake import FakeProvider

    monkeypatch.setattr(FakeProvider, "capabilities",
                        replace(FakeProvider.capabilities, stages_ahead=False))
    fleet.world.calls.clear()
    fleet.service("api", {"health": "none"}, strategy=ROLLING, env={"V": "3"})
    assert result_of(await fleet.engine.reconcile(fleet.load()), API) == "succeeded"
    assert not [c for c in fleet.world.calls if c[0] == "stage"]


async def test_heal_redeploys_an_instance_that_died(fleet: Fleet) -> None:
    fleet.service("api", {"health": "healthy"})
    desired = fleet.load()
    assert result_of(await fleet.engine.reconcile(desired), API) == "succeeded"
    record = await fleet.store.get_resource(API)
    assert record is not None
    resource = desired.resources[API]
    assert await fleet.engine.drift_of(resource, record, desired) is None

    fleet.world.kill("api-2")
    drift = await fleet.engine.drift_of(resource, record, desired)
    assert drift is not None and "api-2" in drift
    healed = await fleet.engine.reconcile(desired, trigger="drift", redeploy={API})
    assert result_of(healed, API) == "succeeded"
    assert set(fleet.world.running(str(API))) == {"api-1", "api-2"}


async def test_prune_removes_dependents_first(fleet: Fleet) -> None:
    fleet.service("db", {"health": "healthy"})
    fleet.service("api", {"health": "healthy"}, dependsOn=["db"])
    fleet.service("web", {"health": "healthy"}, dependsOn=["api"])
    result = await fleet.engine.reconcile(fleet.load())
    assert {o.key.name: o.result for o in result.outcomes if o.key.kind == "Service"} == {
        "db": "succeeded", "api": "succeeded", "web": "succeeded"}
    deploys = [r for op, r, _ in fleet.world.calls if op == "deploy"]
    assert deploys.index("prod/Service/db") < deploys.index("prod/Service/api") \
        < deploys.index("prod/Service/web")

    for name in ("db", "api", "web"):
        (fleet.root / f"{name}.yaml").unlink()
    fleet.world.calls.clear()
    await fleet.engine.reconcile(fleet.load(), prune=True)
    removed = [r for op, r, _ in fleet.world.calls if op == "remove"]
    order = list(dict.fromkeys(removed))
    assert order == ["prod/Service/web", "prod/Service/api", "prod/Service/db"], removed
    assert fleet.world.slots == {}


async def test_a_plan_made_before_another_reconciler_deployed_does_not_deploy_again(
        fleet: Fleet, monkeypatch: pytest.MonkeyPatch) -> None:
    """Two reconcilers on one database (HA replicas around a shard move, `apply` beside the
    daemon): the second one's plan was read before the first deployed. Holding the resource's
    lease, it reads the record again and does not deploy the same revision a second time."""
    fleet.service("api", {"health": "healthy"})
    desired = fleet.load()
    await fleet.engine.reconcile(desired)
    fleet.service("api", {"health": "healthy"}, env={"V": "2"})
    desired = fleet.load()
    other = Reconciler(fleet.store, state_dir=fleet.root.parent / "other-state")
    try:
        stale = await other.plan(desired)  # read now, acted upon after the first deployed
        assert [i.action for i in stale.items if i.key == API] == ["update"]
        assert result_of(await fleet.engine.reconcile(desired), API) == "succeeded"
        deploys = [c for c in fleet.world.calls if c[0] == "deploy"]

        async def plan_read_earlier(*args: Any, **kwargs: Any) -> Any:
            return stale

        monkeypatch.setattr(other, "plan", plan_read_earlier)
        second = await other.reconcile(desired)
        assert result_of(second, API) == "converged"
        assert [c for c in fleet.world.calls if c[0] == "deploy"] == deploys  # none more
        history = await fleet.store.list_deployments(API, limit=10)
        assert [d.status for d in history] == ["succeeded", "succeeded"]  # two revisions
    finally:
        await other.close()


async def test_a_schedule_run_going_on_beside_a_pass_is_not_taken_for_a_crash(
        fleet: Fleet) -> None:
    """The daemon runs Schedules beside its passes; every pass first closes the deployments a
    crash left open. A run still going on in this process is not one of them: it ends as it
    ends (it was closed `cancelled` under it, and its end then refused)."""
    fleet.write("report", {
        "apiVersion": "fraisier.dev/v1", "kind": "Schedule",
        "metadata": {"name": "report", "environment": "prod"},
        "spec": {"target": "fleet", "schedule": "0 3 * * *", "command": ["report"]}})
    desired = fleet.load()
    await fleet.engine.reconcile(desired)
    report = ResourceKey("prod", "Schedule", "report")
    record = await fleet.store.get_resource(report)
    assert record is not None and record.applied_revision
    fleet.world.run_gate = asyncio.Event()
    run = asyncio.create_task(fleet.engine.run_schedule(
        desired.resources[report], desired.resources[ResourceKey("prod", "Target", "fleet")],
        record))
    await asyncio.wait_for(fleet.world.run_started.wait(), 10)
    await fleet.engine.reconcile(desired)  # a pass meanwhile: its recovery runs first
    fleet.world.run_gate.set()
    finished = await asyncio.wait_for(run, 10)
    assert finished.status == "succeeded", finished
    assert next(d.status for d in await fleet.store.list_deployments(report, limit=5)) == (
        "succeeded")
