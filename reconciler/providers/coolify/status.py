"""What a Coolify application is doing, as ``observe`` reports it: its status and health, the
revision it runs (the core's while the pin our last deploy wrote is untouched, the pin itself
once changed by hand: drift), its latest deployments; and the latest deployment's log.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from reconciler.providers import Health, Identity, Instance, InstanceState
from reconciler.spec.model import Resource

from .config import GIT_SHA, ServiceSettings
from .session import ACTIVE_STATUSES, CoolifySession, parse_deployment_logs


class StatusReader:
    """Reads the state and the deployment log of a Coolify application."""

    def __init__(self, session: CoolifySession) -> None:
        self.session = session

    async def observe(self, resource: Resource) -> list[InstanceState]:
        svc = ServiceSettings.from_resource(resource)
        uuid = await self.session.application_uuid(svc)
        app = await self.session.application(uuid)
        history = await self.session.deployments(uuid, take=5)
        image_mode = self.session.image_mode(svc, app)
        pinned = self.session.pinned(app, image_mode)
        record = self.session.load_record(uuid)
        latest = history[0] if history else None
        last_finished = next((d for d in history if d.get("status") == "finished"), None)
        status = str(app.get("status") or "")
        docker_state, _, health = status.partition(":")
        running = docker_state == "running"
        if running and health == "healthy":
            healthy = Health.HEALTHY
        elif health == "unhealthy" or (docker_state != "" and not running):
            healthy = Health.UNHEALTHY
        elif health == "starting":
            healthy = Health.STARTING
        else:
            healthy = Health.UNKNOWN  # running:unknown: Coolify has no health check configured
        # The core compares this with the revision it applied (its own content address). While
        # the application still carries the pin our last deploy wrote, report that revision;
        # a pin changed by hand (Coolify UI, another tool) shows as itself: drift.
        if record is not None and record.get("pin") == pinned and record.get("image") == image_mode:
            revision: str | None = str(record["revision"])
        elif pinned is not None and pinned.upper() != "HEAD":
            revision = pinned
        else:
            commit = str((last_finished or {}).get("commit") or "")
            revision = commit if GIT_SHA.match(commit) else None
        facts: dict[str, Any] = {
            "provider": "coolify",
            "coolify_status": status or None,
            "docker_state": docker_state or None,
            "health": health or None,
            "pinned_revision": pinned,
            "release_revision": record.get("revision") if record else None,
            "revision_kind": "image_tag" if image_mode else "git_commit_sha",
            "deploying": bool(latest and latest.get("status") in ACTIVE_STATUSES),
            "last_deployment": _deployment_summary(latest),
            "last_finished_deployment": _deployment_summary(last_finished),
        }
        if image_mode:
            facts["image"] = f"{app.get('docker_registry_image_name') or ''}:{pinned or ''}"
        detail = f"coolify status {status or 'unknown'}"
        if latest is not None:
            detail += f"; last deployment {latest.get('deployment_uuid')} {latest.get('status')}"
        return [InstanceState(
            self.session.instance_of(uuid, app), revision, running, detail, facts, health=healthy,
            identity=Identity(deployment_uuid=str((latest or {}).get("deployment_uuid") or "")
                              or None),
        )]


    async def logs(self, resource: Resource, instance: Instance, tail: int = 100) -> list[str]:
        """The latest deployment's log (build + start output). Container logs are not included."""
        api = await self.session.api()
        history = await self.session.deployments(instance.id, take=1)
        if not history:
            return []
        deployment_uuid = str(history[0].get("deployment_uuid"))
        deployment = await api.json("GET", f"/deployments/{deployment_uuid}")
        if not isinstance(deployment, Mapping) or "logs" not in deployment:
            return [
                f"(logs of Coolify deployment {deployment_uuid} are hidden: the API token "
                "lacks the read:sensitive ability)"
            ]
        lines = [api.redact(line) for line in parse_deployment_logs(deployment.get("logs"))]
        return lines[-tail:] if tail > 0 else lines



def _deployment_summary(deployment: Mapping[str, Any] | None) -> dict[str, Any] | None:
    if deployment is None:
        return None
    return {
        "uuid": deployment.get("deployment_uuid"),
        "status": deployment.get("status"),
        "commit": deployment.get("commit"),
        "created_at": deployment.get("created_at"),
    }
