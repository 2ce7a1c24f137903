"""Deploying a Service to its Coolify application: choose the pin (commit SHA, HEAD or image tag),
sync the envs, go back through a kept image when possible, else patch the pin, skip when the
application already runs it, follow a deployment already in flight or queue a new one, and
record which core revision wrote the pin.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from reconciler.providers import Instance, Release

from .config import FULL_SHA, ServiceSettings
from .envs import EnvSync
from .errors import CoolifyConfigError, CoolifyDeployFailed, CoolifyError
from .follow import DeploymentFollower
from .rollback import KeptImageRollback
from .session import ACTIVE_STATUSES, CoolifySession

DUPLICATE_MESSAGE = "already queued for this commit"
DOCKER_TAG = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}$")


class Deployer:
    """Brings a Coolify application to a release."""

    def __init__(
        self,
        session: CoolifySession,
        envs: EnvSync,
        follow: DeploymentFollower,
        rollback: KeptImageRollback,
    ) -> None:
        self.session = session
        self.envs = envs
        self.follow = follow
        self.rollback = rollback

    async def deploy(self, release: Release, instance: Instance) -> None:
        svc = ServiceSettings.from_resource(release.resource)
        api = await self.session.api()
        uuid = instance.id
        app = await self.session.application(uuid)
        image_mode = self.session.image_mode(svc, app)
        pin = self._pin_for(svc, release, app, image_mode)
        envs_changed = await self.envs.sync_envs(uuid, release, svc)
        if await self.rollback.rollback_to_kept_image(release, svc, uuid, app, pin, image_mode,
                                              envs_changed):
            return

        patch: dict[str, Any] = {}
        if image_mode:
            if svc.image_name and app.get("docker_registry_image_name") != svc.image_name:
                patch["docker_registry_image_name"] = svc.image_name
            if app.get("docker_registry_image_tag") != pin:
                patch["docker_registry_image_tag"] = pin
        elif app.get("git_commit_sha") != pin:
            patch["git_commit_sha"] = pin
        raw_settings = app.get("settings")
        settings: Mapping[str, Any] = raw_settings if isinstance(raw_settings, Mapping) else {}
        if (
            svc.auto_deploy is not None
            and settings.get("is_auto_deploy_enabled") != svc.auto_deploy
        ):
            patch["is_auto_deploy_enabled"] = svc.auto_deploy
        if patch:
            await api.json("PATCH", f"/applications/{uuid}", json=patch)
            self.session.log.info(
                "coolify application pinned",
                extra={"application": uuid, "revision": pin, "fields": sorted(patch)},
            )

        history = await self.session.deployments(uuid)
        if not (patch or envs_changed or svc.force) and self._already_active(
            uuid, app, history, pin, image_mode
        ):
            self.session.log.info(
                "coolify application already runs this revision",
                extra={"application": uuid, "revision": pin},
            )
            self.session.save_record(uuid, release.revision, pin, image_mode)
            return
        timeout = svc.deploy_timeout or self.session.settings.deploy_timeout
        in_flight = [
            d
            for d in history
            if d.get("status") in ACTIVE_STATUSES and self.session.matches(d, pin, image_mode)
        ]
        # Coolify skips a deploy whose (app, commit, image tag) is already queued. That in-flight
        # deployment may predate our env change (or, for image apps whose deployments all carry
        # commit HEAD, our new tag): let it end, then queue ours.
        needs_fresh = envs_changed or (image_mode and bool(patch))
        if in_flight and needs_fresh and not svc.force:
            for stale in in_flight:
                try:
                    await self.follow.wait_for_deployment(
                        uuid, str(stale["deployment_uuid"]), pin, image_mode, timeout
                    )
                except CoolifyDeployFailed:
                    pass  # its outcome is not ours; our own deployment follows
            in_flight = []
        # With force, only a forced build of this commit is ours to follow (an earlier try of
        # this same deploy); Coolify never skips a forced deploy as a duplicate.
        followable = [d for d in in_flight if not svc.force or d.get("force_rebuild")]
        if followable and not (svc.force and needs_fresh):
            deployment_uuid = str(followable[0]["deployment_uuid"])
            self.session.log.info(
                "coolify deployment of this revision already in flight; following it",
                extra={"application": uuid, "deployment": deployment_uuid},
            )
        else:
            deployment_uuid = await self._trigger(uuid, pin, image_mode, svc, history)
        final = await self.follow.wait_for_deployment(
            uuid, deployment_uuid, pin, image_mode, timeout
        )
        await self.follow.verify_active(uuid, final, pin, image_mode)
        self.session.save_record(uuid, release.revision, pin, image_mode)


    def _pin_for(
        self, svc: ServiceSettings, release: Release, app: Mapping[str, Any], image_mode: bool
    ) -> str:
        """The value to pin. The Service's own pin wins: the core's Release.revision is a
        content address of the document, and a rollback hands back the old document (with
        its old pin). A full 40-hex revision is taken as a commit (a core passing commits)."""
        resource = release.resource
        where = f"{resource.file}: {resource.kind} {resource.name}"
        if image_mode:
            tag = svc.image_tag or self.session.pinned(app, image_mode)
            if not tag or not DOCKER_TAG.match(tag):
                raise CoolifyConfigError(
                    f"{where}: no image tag to deploy: set coolify.image.tag (the application "
                    "has none either)"
                )
            return tag
        if svc.git_commit_sha:
            return svc.git_commit_sha
        if FULL_SHA.match(release.revision or ""):
            return release.revision
        # Nothing pinned: Coolify builds the head of the application's branch.
        return "HEAD"


    def _already_active(
        self,
        uuid: str,
        app: Mapping[str, Any],
        history: list[dict[str, Any]],
        pin: str,
        image_mode: bool,
    ) -> bool:
        """True when the application already runs ``pin`` (so deploying again is a no-op)."""
        if pin == "HEAD" or not history:
            return False  # the branch head may have moved since
        if str(app.get("status") or "").partition(":")[0] != "running":
            return False
        latest = history[0]
        if latest.get("status") != "finished":
            return False
        if image_mode:
            # Image deployments do not record their tag; only our own record of a finished
            # deployment of this tag proves it (a tag typed into the UI has not run yet).
            record = self.session.load_record(uuid)
            return bool(record and record.get("image") is True and record.get("pin") == pin)
        return str(latest.get("commit") or "") == pin


    async def _trigger(
        self,
        uuid: str,
        pin: str,
        image_mode: bool,
        svc: ServiceSettings,
        history: list[dict[str, Any]],
    ) -> str:
        api = await self.session.api()
        params: dict[str, Any] = {"uuid": uuid}
        if svc.force:
            params["force"] = True

        async def send() -> str:
            body = await api.json("POST", "/deploy", params=params, once=True)
            items = body.get("deployments") if isinstance(body, Mapping) else None
            if not isinstance(items, list) or not items:
                raise CoolifyError(
                    f"POST /deploy on {self.session.settings.url} returned no deployment for {uuid}"
                )
            item = next(
                (i for i in items if isinstance(i, Mapping) and i.get("resource_uuid") == uuid),
                items[0],
            )
            message = str(item.get("message") or "")
            if DUPLICATE_MESSAGE in message.lower():
                # The returned deployment_uuid was generated but never stored: follow the real one.
                self.session.log.info(
                    "coolify already has this commit queued; following that deployment",
                    extra={"application": uuid, "revision": pin},
                )
                return await self.follow.find_running(uuid, pin, image_mode)
            deployment_uuid = item.get("deployment_uuid")
            if not deployment_uuid:
                raise CoolifyError(
                    f"POST /deploy on {self.session.settings.url} did not say which deployment it "
                    f"queued: {message}"
                )
            return str(deployment_uuid)

        deployment_uuid = await self.follow.queue_once(
            uuid, pin, image_mode, send, history, rollback=False, force=svc.force
        )
        self.session.log.info(
            "coolify deployment queued",
            extra={"application": uuid, "deployment": deployment_uuid, "revision": pin},
        )
        return deployment_uuid
