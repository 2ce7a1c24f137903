"""The compose provider: Services, Jobs and Schedules as Docker Compose projects on one Docker host.

Every resource is one compose project (``render.project_name``: stable across revisions), whose
rendered document is kept on the Docker host at ``<stateDir>/<project>/compose.yaml`` — except a
Service with strategy rolling or canary, which runs one compose project per replica
(``<project>_r<n>``, document at ``<stateDir>/<project>/replicas/<n>/compose.yaml``; see
``render.layout``) so that each replica is deployed, stopped and removed on its own. Writes go
through the compose CLI (``up``, ``run``, ``stop``, ``down``) run through a ``Transport``; reads
(observe, logs, waits) go to the engine (``engine.DockerEngine``). Containers carry the core's
revision and the compose revision as labels, so a fresh provider — after a daemon restart — reads
what runs from Docker alone, and a container removed or replaced by hand shows up as drift.

``ComposeProvider`` is the contract's face only: the Docker host and what its parts share is
``host.ComposeHost``; deploying Services is ``deploy``, observing and logs ``observe``, stopping
and removing ``teardown``, Jobs and Schedules ``jobs``; what Docker reports about a container is
read in ``containers``.
"""

from __future__ import annotations

from collections.abc import Mapping

from reconciler.providers import (
    Capabilities,
    Instance,
    InstanceState,
    Listening,
    ProbeSite,
    ProviderContext,
    Release,
    RunResult,
)
from reconciler.providers.compose.cli import ComposeCLI
from reconciler.providers.compose.deploy import Deployer
from reconciler.providers.compose.engine import ContainerExec, DockerEngine
from reconciler.providers.compose.host import ComposeHost
from reconciler.providers.compose.jobs import JobRunner
from reconciler.providers.compose.listening import container_listening
from reconciler.providers.compose.observe import Observer
from reconciler.providers.compose.teardown import Teardown
from reconciler.spec.model import Resource
from reconciler.transport import Transport


class ComposeProvider:
    """Drives one Docker host (a Target with ``provider: compose``)."""

    # one replica is read from its own project; exec probes run inside the container; the
    # container a look saw is inspected again by its id (one engine request, no listing); what
    # it listens on is read inside it
    capabilities = Capabilities(observe_one=True, exec_probes=ProbeSite.INSTANCE,
                                rechecks=True, reports_listening=True)

    def __init__(
        self,
        target: Resource,
        ctx: ProviderContext,
        transport: Transport,
        engine: DockerEngine,
        *,
        state_root: str,
        base_env: Mapping[str, str],
    ) -> None:
        self.host = ComposeHost(target, ctx, transport, engine, state_root=state_root,
                                base_env=base_env)
        self.target = target
        self.ctx = ctx
        self.transport = transport
        self.engine = engine
        self.state_root = state_root
        self.base_env = self.host.base_env
        self.jobs = JobRunner(self.host)
        self.observer = Observer(self.host, self.jobs)
        self.deployer = Deployer(self.host, self.jobs, self.observer)
        self.teardown = Teardown(self.host)

    @property
    def host_id(self) -> str:
        return self.host.host_id

    async def cli(self) -> ComposeCLI:
        """The compose CLI of the Docker host (detected once)."""
        return await self.host.cli()

    async def instances(self, resource: Resource) -> list[Instance]:
        return await self.host.instances(resource)

    async def observe(self, resource: Resource) -> list[InstanceState]:
        return await self.observer.observe(resource)

    async def observe_instance(self, resource: Resource, instance: Instance) -> InstanceState:
        return await self.observer.observe_instance(resource, instance)

    async def recheck(self, resource: Resource, instance: Instance,
                      seen: InstanceState) -> InstanceState | None:
        return await self.observer.recheck(resource, instance, seen)

    def probe_runner(self, instance: Instance, state: InstanceState) -> ContainerExec:
        return self.observer.probe_runner(instance, state)

    async def listening(self, resource: Resource, instance: Instance,
                        seen: InstanceState) -> Listening | None:
        container = seen.identity.container_id
        return None if container is None else await container_listening(self.engine, container)

    async def deploy(self, release: Release, instance: Instance) -> InstanceState | None:
        return await self.deployer.deploy(release, instance)

    async def stop(self, resource: Resource, instance: Instance) -> None:
        await self.teardown.stop(resource, instance)

    async def remove(self, resource: Resource, instance: Instance) -> None:
        await self.teardown.remove(resource, instance)

    async def run(self, release: Release, instance: Instance) -> RunResult:
        return await self.jobs.run(release, instance)

    async def logs(self, resource: Resource, instance: Instance, tail: int = 100) -> list[str]:
        return await self.observer.logs(resource, instance, tail)

    async def close(self) -> None:
        await self.engine.close()
        await self.transport.close()
