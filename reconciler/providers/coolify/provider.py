"""The Coolify provider: one Coolify application per Service, driven through the v4 REST API.

Deploy = pin the revision on the application (PATCH git_commit_sha, or docker_registry_image_tag
for image apps), sync its envs (the spec's, plus FRAISIER_REVISION, FRAISIER_SERVICE and
FRAISIER_ENVIRONMENT from ``workload_env``), POST /deploy, then follow the deployment until
Coolify reports a terminal status, and check that the application now carries the pinned
revision. Going back to a commit whose image Coolify still keeps (GET
/applications/{uuid}/rollback-images) goes through Coolify's own rollback (POST
/applications/{uuid}/rollback), which reuses that image instead of building the commit again.
The FRAISIER_ envs are runtime-only (is_buildtime false): a build-time variable is part of
Coolify's build configuration, so a new FRAISIER_REVISION would rebuild every time. Coolify's own
application status (``running:healthy``...) is reported in InstanceState.facts so the health
gate can combine it with its own checks.

``CoolifyProvider`` is the contract's face only: what its parts share (API clients, records,
application lookup) is ``session.CoolifySession``; deploying is ``deploy`` (with ``envs``,
``follow`` and ``rollback``), observing and logs ``status``, stop/start/restart/remove
``control``.
"""

from __future__ import annotations

from typing import Any

from reconciler.providers import (
    Capabilities,
    Instance,
    InstanceState,
    ProviderContext,
    Release,
    RunResult,
)
from reconciler.spec.model import Resource

from .client import CoolifyClient
from .config import ServiceSettings
from .control import Controller
from .deploy import Deployer
from .envs import EnvSync
from .errors import CoolifyUnsupported
from .follow import DeploymentFollower
from .rollback import KeptImageRollback
from .session import HISTORY_PAGE, CoolifySession
from .status import StatusReader


class CoolifyProvider:
    """Provider for `provider: coolify` Targets."""

    # one application per Service, read whole; exec probes (if any) run on this machine
    capabilities = Capabilities()

    def __init__(self, target: Resource, ctx: ProviderContext) -> None:
        self.session = CoolifySession(target, ctx)
        self.target = target
        self.settings = self.session.settings
        self.ctx = ctx
        self.log = ctx.logger
        self.envs = EnvSync(self.session)
        self.follow = DeploymentFollower(self.session)
        self.rollback = KeptImageRollback(self.session, self.follow)
        self.deployer = Deployer(self.session, self.envs, self.follow, self.rollback)
        self.status = StatusReader(self.session)
        self.control = Controller(self.session, self.envs, self.follow)

    # ---------------------------------------------------------------- plumbing

    async def api(self) -> CoolifyClient:
        """The API client, built on first use so that a missing token only fails real work."""
        return await self.session.api()

    async def status_api(self) -> CoolifyClient:
        return await self.session.status_api()

    async def close(self) -> None:
        await self.session.close()

    async def application_uuid(self, svc: ServiceSettings) -> str:
        return await self.session.application_uuid(svc)

    async def application(self, uuid: str) -> dict[str, Any]:
        return await self.session.application(uuid)

    async def deployments(self, uuid: str, take: int = HISTORY_PAGE) -> list[dict[str, Any]]:
        return await self.session.deployments(uuid, take)

    async def sync_envs(self, uuid: str, release: Release, svc: ServiceSettings) -> bool:
        return await self.envs.sync_envs(uuid, release, svc)

    async def wait_for_deployment(
        self, uuid: str, deployment_uuid: str, pin: str, image_mode: bool, limit_s: float
    ) -> dict[str, Any]:
        return await self.follow.wait_for_deployment(uuid, deployment_uuid, pin, image_mode,
                                                     limit_s)

    # ---------------------------------------------------------------- Provider protocol

    async def instances(self, resource: Resource) -> list[Instance]:
        return await self.session.instances(resource)

    async def observe(self, resource: Resource) -> list[InstanceState]:
        return await self.status.observe(resource)

    async def deploy(self, release: Release, instance: Instance) -> None:
        await self.deployer.deploy(release, instance)

    async def stop(self, resource: Resource, instance: Instance) -> None:
        await self.control.stop(resource, instance)

    async def start(self, resource: Resource, instance: Instance) -> None:
        """POST /applications/{uuid}/start (a deployment of the pinned revision) and follow it."""
        await self.control.start(resource, instance)

    async def restart(self, resource: Resource, instance: Instance) -> None:
        """POST /applications/{uuid}/restart (a restart-only deployment) and follow it."""
        await self.control.restart(resource, instance)

    async def remove(self, resource: Resource, instance: Instance) -> None:
        """Stop the application and delete the envs this Service put there (not the
        application itself)."""
        await self.control.remove(resource, instance)

    async def run(self, release: Release, instance: Instance) -> RunResult:
        raise CoolifyUnsupported(
            f"{release.resource.kind} {release.resource.name}: the Coolify API has no "
            "run-to-completion containers; Jobs and Schedules cannot target a Coolify instance"
        )


    async def logs(self, resource: Resource, instance: Instance, tail: int = 100) -> list[str]:
        """The latest deployment's log (build + start output). Container logs are not included."""
        return await self.status.logs(resource, instance, tail)
