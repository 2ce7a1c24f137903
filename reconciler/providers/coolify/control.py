"""Stopping (waiting until the container is gone), starting and restarting a Coolify application
(each a deployment that is followed), and removing a Service: stopped, its envs deleted; the
application itself is left in Coolify.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Mapping
from typing import Any

from reconciler.providers import Instance, workload_env
from reconciler.spec.model import Resource

from .config import ServiceSettings
from .envs import EnvSync
from .errors import CoolifyDeployTimeout, CoolifyError
from .follow import DeploymentFollower
from .session import CoolifySession


class Controller:
    """Stops, starts, restarts and removes Coolify applications."""

    def __init__(self, session: CoolifySession, envs: EnvSync, follow: DeploymentFollower) -> None:
        self.session = session
        self.envs = envs
        self.follow = follow

    async def stop(self, resource: Resource, instance: Instance) -> None:
        api = await self.session.api()
        await api.json("POST", f"/applications/{instance.id}/stop")
        # Coolify queues the stop; wait until the container is really gone (bounded).
        deadline = time.monotonic() + min(self.session.settings.deploy_timeout, 300.0)
        interval = self.session.settings.poll_interval
        while True:
            app = await self.session.application(instance.id)
            state = str(app.get("status") or "").partition(":")[0]
            if state not in ("running", "restarting", "starting"):
                self.session.log.info(
                    "coolify application stopped",
                    extra={"application": instance.id, "status": app.get("status")},
                )
                return
            if time.monotonic() >= deadline:
                raise CoolifyDeployTimeout(
                    f"Coolify application {instance.id} still reports {app.get('status')!r} after "
                    "the stop request"
                )
            await asyncio.sleep(interval)
            interval = min(interval * 1.5, self.session.settings.poll_max_interval)


    async def start(self, resource: Resource, instance: Instance) -> None:
        """POST /applications/{uuid}/start (a deployment of the pinned revision) and follow it."""
        api = await self.session.api()
        body = await api.json("POST", f"/applications/{instance.id}/start")
        await self._follow_action(resource, instance, body, "start")


    async def restart(self, resource: Resource, instance: Instance) -> None:
        """POST /applications/{uuid}/restart (a restart-only deployment) and follow it."""
        api = await self.session.api()
        body = await api.json("POST", f"/applications/{instance.id}/restart")
        await self._follow_action(resource, instance, body, "restart")


    async def remove(self, resource: Resource, instance: Instance) -> None:
        """Stop the application and delete the envs this Service put there.

        The application itself is not deleted: it was created in Coolify (with its domains,
        volumes and backups) and Fraisier only drives it.
        """
        await self.stop(resource, instance)
        self.session.record_path(instance.id).unlink(missing_ok=True)
        svc = ServiceSettings.from_resource(resource)
        keys = (
            {e.key for e in svc.envs}
            | set((resource.spec.get("env") or {}).keys())
            | set(workload_env(resource, ""))
        )
        api = await self.session.api()
        current = await api.json("GET", f"/applications/{instance.id}/envs")
        for env in current if isinstance(current, list) else []:
            if isinstance(env, Mapping) and env.get("key") in keys and not env.get("is_preview"):
                await self.envs.delete_env(instance.id, str(env["uuid"]))
        self.session.written_env_path(instance.id).unlink(missing_ok=True)
        self.session.log.info(
            "coolify envs removed", extra={"application": instance.id, "keys": sorted(keys)}
        )


    async def _follow_action(
        self, resource: Resource, instance: Instance, body: Any, action: str
    ) -> None:
        deployment_uuid = body.get("deployment_uuid") if isinstance(body, Mapping) else None
        if not deployment_uuid:
            raise CoolifyError(
                f"POST /applications/{instance.id}/{action} returned no deployment uuid"
            )
        svc = ServiceSettings.from_resource(resource)
        timeout = svc.deploy_timeout or self.session.settings.deploy_timeout
        app = await self.session.application(instance.id)
        image_mode = self.session.image_mode(svc, app)
        pin = self.session.pinned(app, image_mode) or "HEAD"
        await self.follow.wait_for_deployment(
            instance.id, str(deployment_uuid), pin, image_mode, timeout
        )
