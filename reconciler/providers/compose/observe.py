"""Observing what runs for a resource on the Docker host (the drift check and the health gate
read this): each expected instance's container, in either layout, compared by its labels and
compose's config hash with what was deployed (a container changed by hand reports an
``unmanaged:`` revision), unexpected containers, an exited container's last output and the
sandbox setting that likely stopped it; and a resource's log lines.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import replace
from typing import Any

from reconciler.errors import ProviderError
from reconciler.providers import Health, Identity, Instance, InstanceState, Phase
from reconciler.providers.compose.containers import (
    DOCKER_HEALTH,
    EXIT_LINES,
    ConfigHashes,
    health_of,
    health_output,
    is_running,
    labels_of,
    slot_of,
    up_for,
)
from reconciler.providers.compose.engine import ContainerExec
from reconciler.providers.compose.host import ComposeHost
from reconciler.providers.compose.jobs import JobRunner
from reconciler.providers.compose.render import (
    LABEL_COMPOSE_REVISION,
    LABEL_IMAGE,
    LABEL_RESOURCE,
    LABEL_REVISION,
    LAYOUT_PER_REPLICA,
    LAYOUT_SCALED,
    NUMBER_LABEL,
    ONEOFF_LABEL,
    PROJECT_LABEL,
    SERVICE_LABEL,
    compose_section,
    layout,
    project_name,
    replica_of_project,
    replica_project,
    sandbox_hint,
    sandbox_profile,
)
from reconciler.spec.model import Resource

# Observed revision of a container changed by hand (no release revision starts with it).
UNMANAGED_PREFIX = "unmanaged:"


# A running container Docker's restart policy started again this recently is diagnosed as an
# exited one (its output read): a crash a gate or `status` may be asked about right now.
RESTARTED_RECENTLY_S = 60.0


class Observer:
    """Reads the state and output of a resource's containers."""

    def __init__(self, host: ComposeHost, jobs: JobRunner) -> None:
        self.host = host
        self.jobs = jobs

    async def observe(self, resource: Resource) -> list[InstanceState]:
        if resource.kind != "Service":
            return await self.jobs.observe_runs(resource)
        states = await (
            self._observe_replicas(resource)
            if layout(resource) == LAYOUT_PER_REPLICA
            else self._observe_scaled(resource)
        )
        await asyncio.gather(*(self._diagnose(resource, state) for state in states))
        return states

    async def observe_instance(self, resource: Resource, instance: Instance) -> InstanceState:
        """One instance's state, as ``observe`` reports it. A replica of the per-replica layout is
        read from its own project (and the scaled project, for a replica not moved yet) instead
        of inspecting every container of the resource: the health gate of each replica of a
        rolling update asks for it, and 20 replicas made that 400 inspects per rollout."""
        if resource.kind == "Service" and layout(resource) == LAYOUT_PER_REPLICA:
            try:
                slot = self.host.slot(resource, instance)
            except ProviderError:
                slot = None
            if slot is not None and "project" in instance.labels:
                base = project_name(resource)
                project = replica_project(base, slot[1])
                now = await self.host.engine.clock()  # before the reads: ages not overstated
                own, scaled, hashes = await asyncio.gather(
                    self.host.engine.containers(
                        {PROJECT_LABEL: project, LABEL_RESOURCE: str(resource.key)}
                    ),
                    self.host.project_containers(base),
                    self.host.config_hashes(self.host.replica_file(base, slot[1])),
                )
                return await self.replica_state(resource, instance, slot, own, scaled, hashes,
                                                now)
        for state in await self.observe(resource):
            if state.instance.id == instance.id:
                return state
        return InstanceState(
            instance, None, False, "not found", {"present": False}, phase=Phase.MISSING
        )

    async def recheck(self, resource: Resource, instance: Instance,
                      seen: InstanceState) -> InstanceState | None:
        """``seen`` with its age as of now, from one inspect of the container it saw (no
        listing): when that container still runs, started when it was seen started, and has
        no healthcheck (whose status is the platform's own signal, which an observation
        reports). None otherwise, or when the engine cannot say: core then observes."""
        container_id, started_at = seen.identity.container_id, seen.identity.started_at
        if container_id is None or started_at is None:
            return None
        try:
            now = await self.host.engine.clock()  # before the read: the age not overstated
            container = await self.host.engine.container(container_id)
        except ProviderError:
            return None
        if (container is None or not is_running(container)
                or (container.get("State") or {}).get("StartedAt") != started_at
                or health_of(container) != "none"):
            return None
        age = up_for(container, now)
        return None if age is None else replace(seen, up_for=age, observed_at=time.monotonic())

    async def replica_state(
        self,
        resource: Resource,
        instance: Instance,
        slot: tuple[str, int],
        own: list[dict[str, Any]],
        scaled: list[dict[str, Any]],
        hashes: ConfigHashes | None,
        now: float | None,
    ) -> InstanceState:
        """The state of replica ``slot`` (per-replica layout) from containers already read: of
        its own project (``own``) and of the scaled one (``scaled``), with ``now`` the Docker
        host's time read before them. What ``observe_instance`` reports, and what a deploy
        returns from its last look."""
        base = project_name(resource)
        found = [
            c
            for c in own
            if labels_of(c).get(ONEOFF_LABEL) != "True"
            and labels_of(c).get(LABEL_RESOURCE) == str(resource.key)
            and slot_of(c, base) == slot
        ]
        stale = [c for c in scaled if slot_of(c, base) == slot]
        state = self._replica_state(instance, slot, found, stale, hashes, now)[0]
        await self._diagnose(resource, state)
        return state

    def probe_runner(self, instance: Instance, state: InstanceState) -> ContainerExec:
        """``health.exec`` runs in the instance's container (``docker exec``)."""
        # no container (missing): the engine's "no such container" fails the probe
        return ContainerExec(self.host.engine, state.identity.container_id or instance.id)

    async def logs(self, resource: Resource, instance: Instance, tail: int = 100) -> list[str]:
        project = project_name(resource)
        if resource.kind != "Service":
            active = [
                c for c in await self.host.project_containers(project, oneoff=True) if is_running(c)
            ]
            if active:
                return await self.host.engine.logs(str(active[-1]["Id"]), tail)
            data = await self.host.transport.read_file(self.host.run_log_file(project))
            return data.decode(errors="replace").splitlines()[-tail:] if data else []
        service = instance.labels.get("service")
        replica = instance.labels.get("replica")
        if layout(resource) == LAYOUT_PER_REPLICA:
            slot = self.host.slot(resource, instance, strict=False)
            number = replica_project(project, slot[1])
            found = [
                c
                for c in [
                    *await self.host.project_containers(number),
                    *await self.host.project_containers(project),
                ]
                if slot_of(c, project) == slot
            ]
            return await self.host.engine.logs(str(found[0]["Id"]), tail) if found else []
        for container in await self.host.project_containers(project):
            labels = labels_of(container)
            if labels.get(SERVICE_LABEL) == service and labels.get(NUMBER_LABEL) == replica:
                return await self.host.engine.logs(str(container["Id"]), tail)
        return []

    async def _observe_replicas(self, resource: Resource) -> list[InstanceState]:
        """Each replica's own container; a replica not yet moved from the scaled layout (a
        strategy change) is reported from its old container, which its deploy replaces."""
        base = project_name(resource)
        expected = await self.host.instances(resource)
        now = await self.host.engine.clock()
        scaled, tagged = await asyncio.gather(
            self.host.project_containers(base), self.host.resource_containers(resource)
        )
        current: dict[tuple[str, int], list[dict[str, Any]]] = {}
        older: dict[tuple[str, int], list[dict[str, Any]]] = {}
        extras: list[dict[str, Any]] = []
        seen: set[str] = set()
        for container in [*scaled, *tagged]:
            if container.get("Id") in seen:
                continue
            seen.add(str(container.get("Id")))
            labels = labels_of(container)
            project = labels.get(PROJECT_LABEL, "")
            if project == base:
                older.setdefault(slot_of(container, base), []).append(container)
            elif replica_of_project(base, project) is not None:
                current.setdefault(slot_of(container, base), []).append(container)
            else:
                extras.append(container)
        states: list[InstanceState] = []
        slots = [(i.labels["service"], int(i.labels["replica"])) for i in expected]
        all_hashes = await asyncio.gather(
            *(self.host.config_hashes(self.host.replica_file(base, slot[1])) for slot in slots)
        )
        for instance, slot, hashes in zip(expected, slots, all_hashes, strict=True):
            state, left = self._replica_state(
                instance, slot, current.pop(slot, []), older.pop(slot, []), hashes, now
            )
            states.append(state)
            extras += left
        for leftovers in (*current.values(), *older.values()):
            extras += leftovers
        for extra in extras:
            states.append(
                self._extra_state(extra, labels_of(extra).get(PROJECT_LABEL, base), now)
            )
        return states

    def _replica_state(
        self,
        instance: Instance,
        slot: tuple[str, int],
        found: list[dict[str, Any]],
        stale: list[dict[str, Any]],
        hashes: ConfigHashes | None,
        now: float | None,
    ) -> tuple[InstanceState, list[dict[str, Any]]]:
        """The state of one replica from its own project's containers (``found``) and the
        scaled layout's of its slot (``stale``); returns it with the containers left over."""
        adopted = not found and bool(stale)
        if adopted:
            found, stale = stale, []
        found = sorted(
            found, key=lambda c: (is_running(c), str((c.get("State") or {}).get("StartedAt")))
        )
        extras = found[:-1] + stale
        if not found:
            missing = InstanceState(
                instance,
                None,
                False,
                "container missing",
                phase=Phase.MISSING,
                facts={
                    "present": False,
                    "service": slot[0],
                    "project": instance.labels["project"],
                    "replica": slot[1],
                    "layout": LAYOUT_PER_REPLICA,
                },
            )
            return missing, extras
        state = self._container_state(instance, found[-1], None if adopted else hashes, now)
        state.facts["replica"] = slot[1]
        state.facts["layout"] = LAYOUT_SCALED if adopted else LAYOUT_PER_REPLICA
        if adopted:
            state.detail = ("in the scaled layout until deployed; " + state.detail).rstrip("; ")
        return state, extras

    async def _diagnose(self, resource: Resource, state: InstanceState) -> None:
        """An exited container of ours, or one Docker's restart policy started again within
        ``RESTARTED_RECENTLY_S``: its last output lines (the exited run's end), and in its
        detail the sandbox setting that likely stopped it (the gate's and ``status``'s message
        of it: a gate that looks after Docker's restart reports a restart, with this)."""
        container = state.identity.container_id
        if container is None or "unexpected" in state.instance.labels:
            return
        restarts = int(state.facts.get("restart_count") or 0)
        if state.running:
            # a look at an old restart fetches no logs: an idle daemon looks at every Service
            if not restarts or state.up_for is None or state.up_for > RESTARTED_RECENTLY_S:
                return
            state.detail = "; ".join(
                part for part in (state.detail, f"restarted by Docker {restarts} time(s) after "
                                  "exiting") if part)
        try:
            profile = sandbox_profile(
                compose_section(resource), self.host.target.spec.get("sandbox")
            )
            lines = await self.host.engine.logs(container, EXIT_LINES)
        except ProviderError:  # output is a courtesy: the state stands without it
            return
        state.last_output = tuple(line.rstrip() for line in lines if line.strip())
        hint = sandbox_hint(profile, "\n".join(state.last_output))
        if hint:
            state.detail = f"{state.detail}; {hint}" if state.detail else hint
            state.facts["sandbox_hint"] = hint

    async def _observe_scaled(self, resource: Resource) -> list[InstanceState]:
        project = project_name(resource)
        expected = await self.host.instances(resource)
        by_slot: dict[tuple[str, int], list[dict[str, Any]]] = {}
        now = await self.host.engine.clock()
        containers, hashes = await asyncio.gather(
            self.host.project_containers(project),
            self.host.config_hashes(self.host.compose_file(project)),
        )
        for container in containers:
            labels = labels_of(container)
            try:
                number = int(labels.get(NUMBER_LABEL, "0"))
            except ValueError:
                number = 0
            by_slot.setdefault((labels.get(SERVICE_LABEL, ""), number), []).append(container)
        states: list[InstanceState] = []
        for instance in expected:
            slot = (instance.labels["service"], int(instance.labels["replica"]))
            found = by_slot.pop(slot, [])
            # A running container wins over stopped leftovers with the same slot.
            found.sort(key=lambda c: (is_running(c), str((c.get("State") or {}).get("StartedAt"))))
            if not found:
                states.append(
                    InstanceState(
                        instance,
                        None,
                        False,
                        "container missing",
                        {"present": False, "service": slot[0], "project": project},
                        phase=Phase.MISSING,
                    )
                )
                continue
            states.append(self._container_state(instance, found[-1], hashes, now))
            for extra in found[:-1]:
                states.append(self._extra_state(extra, project, now))
        for containers in by_slot.values():
            for extra in containers:
                states.append(self._extra_state(extra, project, now))
        return states

    def _extra_state(
        self, container: dict[str, Any], project: str, now: float | None
    ) -> InstanceState:
        labels = labels_of(container)
        name = str(container.get("Name", "")).lstrip("/")
        instance = Instance(
            name or str(container.get("Id", ""))[:12],
            self.host.transport.address,
            {
                "service": labels.get(SERVICE_LABEL, ""),
                "replica": labels.get(NUMBER_LABEL, ""),
                "project": project,
                "unexpected": "true",
            },
        )
        state = self._container_state(instance, container, None, now)
        state.detail = ("unexpected container; " + state.detail).rstrip("; ")
        return state

    def _container_state(
        self,
        instance: Instance,
        container: dict[str, Any],
        hashes: ConfigHashes | None,
        now: float | None,
    ) -> InstanceState:
        """``now``: the Docker host's time, read before ``container`` was (its age)."""
        labels = labels_of(container)
        state = container.get("State") or {}
        image = str((container.get("Config") or {}).get("Image", ""))
        health = health_of(container)
        running = is_running(container)
        revision = labels.get(LABEL_REVISION)
        deployed_image = labels.get(LABEL_IMAGE)
        details: list[str] = []
        # A container fraisier did not create as it stands reports a revision of its own that
        # can never equal a deployed one, so the core sees drift (None would mean "unknown").
        if revision is None:
            details.append("container was not deployed by fraisier")
            revision = f"{UNMANAGED_PREFIX}{image}"
        elif deployed_image is not None and image != deployed_image:
            details.append(
                f"container runs {image}, its revision was rendered with {deployed_image}"
            )
            revision = f"{UNMANAGED_PREFIX}{image}"
        elif hashes is not None and hashes.edited(container):
            details.append(
                "container's configuration differs from the rendered document (compose config "
                "hash): changed outside fraisier"
            )
            revision = f"{UNMANAGED_PREFIX}edited"
        if not running:
            details.append(f"{state.get('Status', 'unknown')} (exit code {state.get('ExitCode')})")
        if health == "unhealthy":
            details.append(f"unhealthy ({health_output(container)})")
        facts: dict[str, Any] = {
            "present": True,
            "container": str(container.get("Name", "")).lstrip("/"),
            "container_id": str(container.get("Id", ""))[:12],
            "service": labels.get(SERVICE_LABEL),
            "project": labels.get(PROJECT_LABEL),
            "image": image,
            "image_id": container.get("Image"),
            "status": state.get("Status"),
            "health": health,
            "restart_count": container.get("RestartCount", 0),
            "exit_code": state.get("ExitCode"),
            "oom_killed": bool(state.get("OOMKilled")),
            "started_at": state.get("StartedAt"),
            "finished_at": state.get("FinishedAt"),
            "compose_revision": labels.get(LABEL_COMPOSE_REVISION),
        }
        if health != "none":
            health_state = state.get("Health") or {}
            facts["health_failing_streak"] = health_state.get("FailingStreak", 0)
            facts["health_last_output"] = health_output(container)
        exit_code = state.get("ExitCode")
        return InstanceState(
            instance,
            revision,
            running,
            "; ".join(details),
            facts,
            # Docker's own check is the instance's health whether or not deploy waited for it
            health=DOCKER_HEALTH.get(health, Health.UNKNOWN),
            exit_code=None if running or exit_code is None else int(exit_code),
            identity=Identity(
                pid=int(state["Pid"]) if running and state.get("Pid") else None,
                started_at=state.get("StartedAt"),
                container_id=str(container.get("Id") or "") or None,
            ),
            up_for=up_for(container, now),
        )
