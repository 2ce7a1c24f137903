"""Going back to a commit whose image Coolify still keeps, through Coolify's own rollback (POST
/applications/{uuid}/rollback): the kept image runs again and nothing is built; the pin is
moved before or after it so that Coolify reuses the image.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from reconciler.providers import Release

from .config import ServiceSettings
from .errors import CoolifyNotFound, CoolifyRequestError
from .follow import DeploymentFollower
from .session import ACTIVE_STATUSES, CoolifySession


class KeptImageRollback:
    """Returns an application to a kept image of a commit."""

    def __init__(self, session: CoolifySession, follow: DeploymentFollower) -> None:
        self.session = session
        self.follow = follow

    async def _kept_images(self, uuid: str) -> set[str]:
        """Tags of the application's images still on its server (Coolify's rollback list).
        Empty when the route is missing (Coolify before 4.3) or the server cannot be asked."""
        api = await self.session.status_api()
        try:
            body = await api.json("GET", f"/applications/{uuid}/rollback-images")
        except (CoolifyNotFound, CoolifyRequestError):
            return set()
        images = body.get("images") if isinstance(body, Mapping) else None
        return {
            str(i["tag"]) for i in (images if isinstance(images, list) else [])
            if isinstance(i, Mapping) and i.get("tag")
        }


    async def rollback_to_kept_image(
        self,
        release: Release,
        svc: ServiceSettings,
        uuid: str,
        app: Mapping[str, Any],
        pin: str,
        image_mode: bool,
        envs_changed: bool,
    ) -> bool:
        """Go back to a commit whose image Coolify still keeps through Coolify's own rollback
        (POST /applications/{uuid}/rollback): the kept image runs again, nothing is built.
        False (nothing done) when this deploy is not such a return.

        Coolify reuses the image only when the build configuration equals the last finished
        deployment's, and the pinned git_commit_sha is part of it. So the pin is moved before
        the rollback when that deployment was made pinned to this commit (the newer one failed
        to build), and after it otherwise (the newer one ran: its pin is the applied one).
        Moving it at all keeps Coolify's later deployments (restart, auto-deploy) on it.
        """
        if image_mode or pin == "HEAD" or svc.force or self.session.pinned(app, False) == pin:
            return False
        history = await self.session.deployments(uuid)
        ran_before = any(
            d.get("status") == "finished" and str(d.get("commit") or "") == pin for d in history
        )
        # Asking for the kept images makes Coolify list them on its server: only for a commit
        # that recently ran (a first rollout of a commit has no image to go back to).
        if not ran_before or pin not in await self._kept_images(uuid):
            return False
        api = await self.session.api()
        applied = next(
            (d for d in history if d.get("status") == "finished" and not d.get("restart_only")),
            None,
        )
        pin_first = bool(
            applied and str(applied.get("commit") or "") == pin and not applied.get("rollback")
        )
        patch: dict[str, Any] = {"git_commit_sha": pin}
        raw_settings = app.get("settings")
        settings: Mapping[str, Any] = raw_settings if isinstance(raw_settings, Mapping) else {}
        auto = svc.auto_deploy
        if auto is not None and settings.get("is_auto_deploy_enabled") != auto:
            patch["is_auto_deploy_enabled"] = auto
        if pin_first:
            await api.json("PATCH", f"/applications/{uuid}", json=patch)
        in_flight = [
            d for d in history
            if d.get("status") in ACTIVE_STATUSES and d.get("rollback")
            and str(d.get("commit") or "") == pin
        ]
        if in_flight and not envs_changed:
            deployment_uuid = str(in_flight[0]["deployment_uuid"])
        else:
            async def send() -> str:
                body = await api.json("POST", f"/applications/{uuid}/rollback",
                                      json={"commit": pin}, once=True)
                queued = body.get("deployment_uuid") if isinstance(body, Mapping) else None
                return str(queued) if queued else await self.follow.find_running(uuid, pin, False)

            deployment_uuid = await self.follow.queue_once(
                uuid, pin, False, send, history, rollback=True, force=False
            )
        self.session.log.info(
            "coolify rollback to the kept image of this commit",
            extra={"application": uuid, "deployment": deployment_uuid, "revision": pin},
        )
        timeout = svc.deploy_timeout or self.session.settings.deploy_timeout
        final = await self.follow.wait_for_deployment(uuid, deployment_uuid, pin, False, timeout)
        if not pin_first:
            await api.json("PATCH", f"/applications/{uuid}", json=patch)
        await self.follow.verify_active(uuid, final, pin, False)
        self.session.save_record(uuid, release.revision, pin, False)
        return True
