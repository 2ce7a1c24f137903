"""A provider written against the contract alone (reconciler/providers/contract.py), for engine
unit tests with no service behind them.

Its "platform" is a ``World`` in memory: each (resource, instance) slot holds what runs there.
What a deploy produces is read from the Service's own ``fake:`` block (validated by this
provider's workload fragment), so a test scripts a bad revision by committing it, as a user
would: ``health: unhealthy`` (the platform's check fails), ``starting`` (undecided for a few
looks, then healthy), ``crash`` (exits at once), ``failDeploy``.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from reconciler.errors import ProviderError
from reconciler.providers import (
    Capabilities,
    Health,
    Identity,
    Instance,
    InstanceState,
    Phase,
    ProbeSite,
    ProviderContext,
    Release,
    RunResult,
    placement_of,
)
from reconciler.providers.registry import ProviderInfo
from reconciler.spec.model import Resource
from reconciler.spec.provider_schemas import ProviderSchemas
from reconciler.transport import CommandResult

TARGET_SCHEMA: dict[str, Any] = {
    "$schema": "https://json-schema.org/draft/2020-12/schema",
    "description": "Target spec of the fake provider: how many instances each Service gets.",
    "type": "object",
    "properties": {
        "provider": {"const": "fake", "description": "The fake provider."},
        "instances": {"type": "integer", "minimum": 1, "description": "Instances per Service."},
        "hostBatching": {"type": "boolean",
                         "description": "Declare ``host_batching``: the provider bounds and "
                                        "batches its actions per host itself."},
        "rechecks": {"type": "boolean",
                     "description": "Declare ``rechecks``: a cheap look again at an instance "
                                    "already seen (``recheck``)."},
        "syncWindows": {"$ref": "../common.json#/$defs/syncWindows",
                        "description": "As every Target."},
    },
    "required": ["provider"],
    "additionalProperties": False,
}
WORKLOAD_SCHEMA: dict[str, Any] = {
    "$schema": "https://json-schema.org/draft/2020-12/schema",
    "description": "What the fake platform does with this revision.",
    "type": "object",
    "properties": {
        "health": {"enum": ["healthy", "unhealthy", "starting", "none", "crash"],
                   "description": "The platform's own health signal after a deploy."},
        "failDeploy": {"type": "boolean", "description": "deploy raises ProviderError."},
        "reportsStart": {"type": "boolean",
                         "description": "deploy returns the instance as it started."},
        "restartsAfter": {"type": "number", "minimum": 0,
                          "description": "The platform restarts the instance (a new pid) this "
                                         "many seconds after its deploy."},
        "returnsAfter": {"type": "number", "minimum": 0,
                         "description": "With reportsStart: deploy returns the state it "
                                        "observed at the start this many seconds later."},
        "startedAgo": {"type": "number", "minimum": 0,
                       "description": "The platform reports each instance's age (up_for): "
                                      "this many seconds at its deploy, plus the time since."},
    },
    "additionalProperties": False,
}


@dataclass
class Slot:
    resource: str
    revision: str
    phase: Phase
    health: Health
    pid: int
    starting_looks: int = 0  # looks left while "starting"
    started: float | None = None  # time.monotonic() of the start, when the age is reported
    restart_at: float | None = None  # time.monotonic() at which the platform restarts it
    restarts: int = 0  # restarts done by the platform (``restartsAfter``)


OOM = "out of memory"  # why the fake platform's restarted instances exited


@dataclass
class World:
    """The fake platform: what runs where, and every call the engine made, in order."""

    slots: dict[str, Slot] = field(default_factory=dict)  # by instance id (unique per fleet)
    calls: list[tuple[str, str, str]] = field(default_factory=list)  # (op, resource, instance)
    probes: list[tuple[str, tuple[str, ...], str | None]] = field(default_factory=list)
    next_pid: int = 1000
    # Observations of each instance since its last deploy, and their number when each exec
    # probe ran (what the health gate looked at before probing).
    looks: dict[str, int] = field(default_factory=dict)
    looks_at_probe: list[tuple[str, int]] = field(default_factory=list)
    # (instance, revision staged, revision running then) of every stage call
    staged: list[tuple[str, str, str | None]] = field(default_factory=list)
    # (instance, age reported) of every look that reported one
    ages: list[tuple[str, float]] = field(default_factory=list)
    rechecks: dict[str, int] = field(default_factory=dict)  # recheck calls per instance
    # When set, a run waits for it (``run_started`` is set once a run is going on).
    run_gate: asyncio.Event | None = None
    run_started: asyncio.Event = field(default_factory=asyncio.Event)

    def kill(self, instance: str) -> None:
        self.slots[instance].phase = Phase.EXITED

    def running(self, resource: str) -> dict[str, str]:
        """Instance -> revision of what runs for ``resource`` (a key like prod/Service/api)."""
        return {i: s.revision for i, s in self.slots.items()
                if s.resource == resource and s.phase is Phase.RUNNING}


class InstanceShell:
    """Where this provider's exec probes run (its declared ``ProbeSite.INSTANCE``): a command
    "inside" the instance passes when the instance runs and the command is ``true``."""

    def __init__(self, world: World, instance: str) -> None:
        self.world = world
        self.instance = instance

    async def run(self, argv: Sequence[str], *, timeout: float = 60.0,
                  cwd: str | None = None) -> CommandResult:
        self.world.probes.append((self.instance, tuple(argv), cwd))
        self.world.looks_at_probe.append((self.instance, self.world.looks.get(self.instance, 0)))
        slot = self.world.slots.get(self.instance)
        ok = slot is not None and slot.phase is Phase.RUNNING and list(argv) == ["true"]
        return CommandResult(0 if ok else 1, b"", b"" if ok else b"probe failed")


class FakeProvider:
    capabilities = Capabilities(observe_one=True, exec_probes=ProbeSite.INSTANCE,
                                stages_ahead=True)

    def __init__(self, world: World, target: Resource) -> None:
        self.world = world
        self.count = int(target.spec.get("instances", 1))
        if target.spec.get("rechecks"):
            self.capabilities = replace(self.capabilities, rechecks=True)
        if target.spec.get("hostBatching"):
            self.capabilities = replace(self.capabilities, host_batching=True)

    def _slot(self, instance: Instance) -> Slot | None:
        """The instance's slot as of now (a restart scheduled by ``restartsAfter`` done)."""
        slot = self.world.slots.get(instance.id)
        if slot is not None and slot.restart_at is not None and time.monotonic() >= slot.restart_at:
            self.world.next_pid += 1
            slot.pid, slot.restart_at = self.world.next_pid, None
            slot.restarts += 1
        return slot

    async def instances(self, resource: Resource) -> list[Instance]:
        placement = placement_of(resource)
        return [Instance(f"{resource.name}-{n}", labels={
            "replica": str(n), "independent": str(placement.independent_instances)})
            for n in range(1, self.count + 1)]

    async def observe(self, resource: Resource) -> list[InstanceState]:
        return [await self.observe_instance(resource, i) for i in await self.instances(resource)]

    async def observe_instance(self, resource: Resource, instance: Instance) -> InstanceState:
        self.world.looks[instance.id] = self.world.looks.get(instance.id, 0) + 1
        slot = self._slot(instance)
        if slot is None:
            return InstanceState(instance, None, False, "nothing deployed", phase=Phase.MISSING)
        health = slot.health
        if health is Health.STARTING:
            slot.starting_looks -= 1
            if slot.starting_looks <= 0:
                slot.health = Health.HEALTHY
        up_for = None
        if slot.started is not None and slot.phase is Phase.RUNNING:
            up_for = time.monotonic() - slot.started
            self.world.ages.append((instance.id, up_for))
        detail = "unhealthy" if health is Health.UNHEALTHY else ""
        if slot.restarts and slot.phase is Phase.RUNNING:  # what a platform says of a restart
            detail = f"restarted by the platform {slot.restarts} time(s) after exiting: {OOM}"
        return InstanceState(
            instance, slot.revision, slot.phase is Phase.RUNNING, detail, up_for=up_for,
            phase=slot.phase, health=health,
            exit_code=None if slot.phase is Phase.RUNNING else 1,
            identity=Identity(pid=slot.pid), working_dir=f"/fake/{resource.name}",
        )

    async def recheck(self, resource: Resource, instance: Instance,
                      seen: InstanceState) -> InstanceState | None:
        self.world.rechecks[instance.id] = self.world.rechecks.get(instance.id, 0) + 1
        slot = self._slot(instance)
        if slot is None or slot.phase is not Phase.RUNNING or slot.pid != seen.identity.pid:
            return None
        up_for = None
        if slot.started is not None:
            up_for = time.monotonic() - slot.started
            self.world.ages.append((instance.id, up_for))
        return replace(seen, up_for=up_for, observed_at=time.monotonic())

    def probe_runner(self, instance: Instance, state: InstanceState) -> InstanceShell:
        return InstanceShell(self.world, instance.id)

    async def stage(self, release: Release, instance: Instance) -> None:
        """Staging changes nothing that runs: it is only recorded, with what ran then."""
        slot = self.world.slots.get(instance.id)
        self.world.calls.append(("stage", str(release.resource.key), instance.id))
        self.world.staged.append((instance.id, release.revision,
                                  slot.revision if slot is not None else None))

    async def deploy(self, release: Release, instance: Instance) -> InstanceState | None:
        resource = release.resource
        self.world.calls.append(("deploy", str(resource.key), instance.id))
        behaviour = dict(resource.spec.get("fake") or {})
        if behaviour.get("failDeploy"):
            raise ProviderError(f"fake: deploy of {resource.key} refused")
        health = str(behaviour.get("health", "none"))
        self.world.next_pid += 1
        self.world.slots[instance.id] = Slot(
            resource=str(resource.key),
            revision=release.revision,
            phase=Phase.EXITED if health == "crash" else Phase.RUNNING,
            health={"healthy": Health.HEALTHY, "unhealthy": Health.UNHEALTHY,
                    "starting": Health.STARTING}.get(health, Health.UNKNOWN),
            pid=self.world.next_pid,
            starting_looks=3 if health == "starting" else 0,
            started=(time.monotonic() - float(behaviour["startedAgo"])
                     if "startedAgo" in behaviour else None),
            restart_at=(time.monotonic() + float(behaviour["restartsAfter"])
                        if "restartsAfter" in behaviour else None),
        )
        self.world.looks[instance.id] = 0
        if not behaviour.get("reportsStart"):
            return None
        started = await self.observe_instance(resource, instance)
        self.world.looks[instance.id] = 0  # the provider's own look on the way, not the gate's
        await asyncio.sleep(float(behaviour.get("returnsAfter", 0)))
        return started

    async def stop(self, resource: Resource, instance: Instance) -> None:
        self.world.calls.append(("stop", str(resource.key), instance.id))
        slot = self.world.slots.get(instance.id)
        if slot is not None:
            slot.phase = Phase.EXITED

    async def remove(self, resource: Resource, instance: Instance) -> None:
        self.world.calls.append(("remove", str(resource.key), instance.id))
        self.world.slots.pop(instance.id, None)

    async def run(self, release: Release, instance: Instance) -> RunResult:
        self.world.calls.append(("run", str(release.resource.key), instance.id))
        self.world.run_started.set()
        if self.world.run_gate is not None:
            await self.world.run_gate.wait()
        return RunResult(0, "ran\n")

    async def logs(self, resource: Resource, instance: Instance, tail: int = 100) -> list[str]:
        return []

    async def close(self) -> None:
        return None


def fake_info(world: World) -> ProviderInfo:
    def factory(target: Resource, ctx: ProviderContext) -> FakeProvider:
        return FakeProvider(world, target)

    return ProviderInfo(
        name="fake",
        factory=factory,
        capabilities=FakeProvider.capabilities,
        schemas=ProviderSchemas(target=TARGET_SCHEMA, workload_key="fake",
                                workload=WORKLOAD_SCHEMA, source="tests/providers/fake.py"),
    )
