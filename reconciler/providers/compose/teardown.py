"""Stopping and removing a resource on the Docker host: ``compose stop``/``down`` of its project
(or of one replica's project in the per-replica layout, the last one taking the resource's
folder and, with ``compose.removeVolumes``, its volumes), and through the engine whatever the
document does not name (runs, a lost state folder, leftovers of a strategy change).
"""

from __future__ import annotations

import asyncio
import math

from reconciler.errors import ProviderError
from reconciler.providers import Instance
from reconciler.providers.compose.containers import is_running, slot_of, tail
from reconciler.providers.compose.host import COMMAND_TIMEOUT_S, ComposeHost
from reconciler.providers.compose.render import (
    LAYOUT_PER_REPLICA,
    PROJECT_LABEL,
    compose_section,
    layout,
    project_name,
    replica_project,
    seconds,
    service_names,
)
from reconciler.spec.model import Resource


class Teardown:
    """Stops and removes resources on one Docker host."""

    def __init__(self, host: ComposeHost) -> None:
        self.host = host
        self._removing: dict[str, int] = {}  # base project -> replica removals in progress

    async def stop(self, resource: Resource, instance: Instance) -> None:
        if resource.kind == "Service" and layout(resource) == LAYOUT_PER_REPLICA:
            await self._stop_replica(resource, instance)
            return
        project = project_name(resource)
        grace = math.ceil(seconds(resource.spec.get("stopTimeout"), 10.0))
        async with self.host.lock(project):
            if await self.host.transport.read_file(self.host.compose_file(project)) is not None:
                cli = await self.host.cli()
                argv = cli.argv(
                    project,
                    self.host.compose_file(project),
                    self.host.project_dir(project),
                    "stop",
                    "-t",
                    str(grace),
                    *service_names(resource),
                )
                result = await self.host.transport.run(
                    argv, timeout=COMMAND_TIMEOUT_S, env=self.host.base_env
                )
                if not result.ok:
                    raise ProviderError(
                        f"{self.host.host_id}: compose stop of {project} failed: "
                        f"{tail(result.text())}"
                    )
            # Containers without a document here (state dir lost), a Job's or Schedule's runs
            # in progress, replicas of a per-replica layout left by a strategy change: stopped
            # through the engine.
            containers = await self.host.engine.containers({PROJECT_LABEL: project})
            if resource.kind == "Service":
                containers += await self.host.resource_containers(resource)
            for container in containers:
                if is_running(container):
                    await self.host.engine.stop_container(str(container["Id"]), grace)

    async def remove(self, resource: Resource, instance: Instance) -> None:
        """``down`` the project. Volumes go only with ``compose.removeVolumes: true``."""
        if resource.kind == "Service" and layout(resource) == LAYOUT_PER_REPLICA:
            await self._remove_replica(resource, instance)
            return
        project = project_name(resource)
        section = compose_section(resource)
        remove_volumes = bool(section.get("removeVolumes", False))
        grace = math.ceil(seconds(resource.spec.get("stopTimeout"), 10.0))
        if resource.kind == "Service":  # replicas of a per-replica layout (strategy change)
            await self.host.remove_replica_projects(resource, await self.host.cli(), grace=grace)
        async with self.host.lock(project):
            if await self.host.transport.read_file(self.host.compose_file(project)) is not None:
                cli = await self.host.cli()
                args = ["down", "--remove-orphans", "-t", str(grace)]
                if remove_volumes:
                    args.append("--volumes")
                argv = cli.argv(
                    project, self.host.compose_file(project), self.host.project_dir(project), *args
                )
                result = await self.host.transport.run(
                    argv, timeout=COMMAND_TIMEOUT_S, env=self.host.base_env
                )
                if not result.ok:
                    raise ProviderError(
                        f"{self.host.host_id}: compose down of {project} failed: "
                        f"{tail(result.text())}"
                    )
            # Whatever the document did not name (one-off runs, a lost state dir) goes too.
            for container in await self.host.engine.containers({PROJECT_LABEL: project}):
                await self.host.engine.remove_container(str(container["Id"]))
            if remove_volumes:
                for volume in await self.host.engine.volumes({PROJECT_LABEL: project}):
                    await self.host.engine.remove_volume(volume)
            await self.host.transport.run(
                ["rm", "-rf", "--", self.host.project_dir(project)], timeout=60, check=True
            )
            self.host.made_dirs.clear()

    async def _stop_replica(self, resource: Resource, instance: Instance) -> None:
        service, number = self.host.slot(resource, instance, strict=False)
        base = project_name(resource)
        project = replica_project(base, number)
        grace = math.ceil(seconds(resource.spec.get("stopTimeout"), 10.0))
        async with self.host.lock(project):
            mine, scaled = await asyncio.gather(
                self.host.project_containers(project), self.host.project_containers(base)
            )
            targets = [
                c
                for c in [*mine, *scaled]
                if slot_of(c, base) == (service, number) and is_running(c)
            ]
            await asyncio.gather(
                *(self.host.engine.stop_container(str(c["Id"]), grace) for c in targets)
            )

    async def _remove_replica(self, resource: Resource, instance: Instance) -> None:
        """Delete replica ``n`` (its container; its project once empty). The last replica to go
        takes the resource's files, and its volumes with ``compose.removeVolumes``."""
        service, number = self.host.slot(resource, instance, strict=False)
        base = project_name(resource)
        grace = math.ceil(seconds(resource.spec.get("stopTimeout"), 10.0))
        self._removing[base] = self._removing.get(base, 0) + 1
        try:
            await self._remove_one_replica(resource, service, number, grace)
        finally:
            self._removing[base] -= 1
        async with self.host.lock(base):
            # The last removal of a batch cleans up (the others are done: none in progress).
            if self._removing.get(base):
                return
            self._removing.pop(base, None)
            left = [
                *await self.host.resource_containers(resource),
                *await self.host.project_containers(base),
            ]
            if left:
                return
            if await self.host.transport.read_file(self.host.compose_file(base)) is not None:
                await self.host.down(
                    await self.host.cli(),
                    base,
                    self.host.compose_file(base),
                    self.host.project_dir(base),
                    0,
                )
            if compose_section(resource).get("removeVolumes", False):
                for volume in await self.host.engine.volumes({PROJECT_LABEL: base}):
                    await self.host.engine.remove_volume(volume)
            await self.host.transport.run(
                ["rm", "-rf", "--", self.host.project_dir(base)], timeout=60, check=True
            )
            self.host.made_dirs.clear()

    async def _remove_one_replica(
        self, resource: Resource, service: str, number: int, grace: int
    ) -> None:
        base = project_name(resource)
        project = replica_project(base, number)
        async with self.host.lock(project):
            mine, scaled = await asyncio.gather(
                self.host.project_containers(project), self.host.project_containers(base)
            )
            for container in [*mine, *scaled]:
                if slot_of(container, base) == (service, number):
                    await self.host.engine.stop_container(str(container["Id"]), grace)
                    await self.host.engine.remove_container(str(container["Id"]))
            rest = [c for c in mine if slot_of(c, base) != (service, number)]
            if not rest:
                file = self.host.replica_file(base, number)
                if await self.host.transport.read_file(file) is not None:
                    await self.host.down(
                        await self.host.cli(), project, file, self.host.project_dir(base), 0
                    )
                await self.host.transport.run(
                    ["rm", "-rf", "--", self.host.replica_dir(base, number)], timeout=60, check=True
                )
                self.host.made_dirs.discard(self.host.replica_dir(base, number))
