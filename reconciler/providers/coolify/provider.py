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
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import re
import time
from collections.abc import Awaitable, Callable, Mapping
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from reconciler.providers import (
    RESERVED_ENV_PREFIX,
    Capabilities,
    Health,
    Identity,
    Instance,
    InstanceState,
    ProviderContext,
    Release,
    RunResult,
    workload_env,
)
from reconciler.spec.model import Resource

from .client import CoolifyClient
from .config import (
    FULL_SHA,
    GIT_SHA,
    EnvSpec,
    ServiceSettings,
    TargetSettings,
    describe_secret_ref,
    is_secret_ref,
    resolve_secret,
)
from .errors import (
    CoolifyConfigError,
    CoolifyDeployFailed,
    CoolifyDeployTimeout,
    CoolifyError,
    CoolifyNotFound,
    CoolifyRequestError,
    CoolifyUnavailable,
    CoolifyUnsupported,
)

# app/Enums/ApplicationDeploymentStatus.php
ACTIVE_STATUSES = frozenset({"queued", "in_progress"})
TERMINAL_STATUSES = frozenset({"finished", "failed", "cancelled-by-user"})
DUPLICATE_MESSAGE = "already queued for this commit"
DOCKER_TAG = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}$")
HISTORY_PAGE = 10
BEARER_TOKEN = re.compile(r"[\x21-\x7e]{1,4096}")  # RFC 6750 b64token and more, one line


class CoolifyProvider:
    """Provider for `provider: coolify` Targets."""

    # one application per Service, read whole; exec probes (if any) run on this machine
    capabilities = Capabilities()

    def __init__(self, target: Resource, ctx: ProviderContext) -> None:
        self.target = target
        self.settings = TargetSettings.from_target(target)
        self.ctx = ctx
        self.log = ctx.logger
        self._client: CoolifyClient | None = None
        self._status_client: CoolifyClient | None = None
        self._client_lock = asyncio.Lock()
        # (uuid, name, tag) -> application uuid; lookups by name/tag list every application.
        self._uuid_cache: dict[tuple[str | None, str | None, str | None], str] = {}

    # ---------------------------------------------------------------- plumbing

    async def api(self) -> CoolifyClient:
        """The API client, built on first use so that a missing token only fails real work."""
        async with self._client_lock:
            if self._client is None:
                ref = describe_secret_ref(self.settings.token_ref)
                token = resolve_secret(self.settings.token_ref, f"Target {self.target.name}: token",
                                       self.target.environment)
                if not BEARER_TOKEN.fullmatch(token):
                    # Sent as a header: a token with a line break or a space (a whole file, e.g.
                    # /proc/self/environ) would end up quoted in httpx's error, value and all.
                    raise CoolifyConfigError(
                        f"Target {self.target.name}: token from {ref} is not a bearer token "
                        "(one line of printable characters without spaces)")
                self._client = CoolifyClient(self.settings, token, self.log, token_ref=ref)
            return self._client

    async def status_api(self) -> CoolifyClient:
        """The client that polls deployments: the statusToken's when set (Coolify leaves the
        log out of deployment answers for a token without read:sensitive), else api()."""
        ref_spec = self.settings.status_token_ref
        if ref_spec is None:
            return await self.api()
        main = await self.api()
        async with self._client_lock:
            if self._status_client is None:
                ref = describe_secret_ref(ref_spec)
                token = resolve_secret(ref_spec, f"Target {self.target.name}: statusToken",
                                       self.target.environment)
                if not BEARER_TOKEN.fullmatch(token):
                    raise CoolifyConfigError(
                        f"Target {self.target.name}: statusToken from {ref} is not a bearer "
                        "token (one line of printable characters without spaces)")
                self._status_client = CoolifyClient(self.settings, token, self.log,
                                                    token_ref=ref)
                main.add_secrets([token])
            return self._status_client

    async def close(self) -> None:
        for client in (self._client, self._status_client):
            if client is not None:
                await client.close()
        self._client = self._status_client = None

    # Which core revision wrote which pin, per application: lets observe() report the core's
    # revision while the pin is untouched, and the pin itself once someone changed it.
    def _record_path(self, uuid: str) -> Path:
        safe = re.sub(r"[^A-Za-z0-9_.-]", "_", uuid)
        return self.ctx.state_dir / "coolify" / self.target.name / f"{safe}.json"

    def _load_record(self, uuid: str) -> dict[str, Any] | None:
        try:
            data = json.loads(self._record_path(uuid).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return None
        return data if isinstance(data, dict) and "revision" in data else None

    def _save_record(self, uuid: str, revision: str, pin: str, image_mode: bool) -> None:
        if not revision:
            return
        path = self._record_path(uuid)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        tmp.write_text(
            json.dumps({"revision": revision, "pin": pin, "image": image_mode}), encoding="utf-8"
        )
        os.replace(tmp, path)

    # The FRAISIER_ envs this provider last wrote, per application. They are not secret; the
    # record lets a token without read:sensitive (Coolify then hides every value) tell that
    # they are unchanged, so redeploying a revision does not rewrite them and rebuild.
    def _written_env_path(self, uuid: str) -> Path:
        return self._record_path(uuid).with_suffix(".env.json")

    def _load_written_env(self, uuid: str) -> dict[str, str]:
        try:
            data = json.loads(self._written_env_path(uuid).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return {}
        if not isinstance(data, dict):
            return {}
        return {str(k): v for k, v in data.items() if isinstance(v, str)}

    def _save_written_env(self, uuid: str, values: Mapping[str, str]) -> None:
        path = self._written_env_path(uuid)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(dict(sorted(values.items()))), encoding="utf-8")
        os.replace(tmp, path)

    async def application_uuid(self, svc: ServiceSettings) -> str:
        if svc.uuid:
            return svc.uuid
        cached = self._uuid_cache.get(svc.lookup_key)
        if cached:
            return cached
        api = await self.api()
        params = {"tag": svc.tag} if svc.tag else None
        apps = await api.json("GET", "/applications", params=params)
        if not isinstance(apps, list):
            raise CoolifyError(f"GET /applications on {self.settings.url} did not return a list")
        matches = [
            a
            for a in apps
            if isinstance(a, Mapping) and (svc.name is None or a.get("name") == svc.name)
        ]
        wanted = " and ".join(
            part
            for part in (
                f"name {svc.name!r}" if svc.name else "",
                f"tag {svc.tag!r}" if svc.tag else "",
            )
            if part
        )
        if not matches:
            raise CoolifyNotFound(f"no Coolify application with {wanted} on {self.settings.url}")
        if len(matches) > 1:
            uuids = ", ".join(sorted(str(a.get("uuid")) for a in matches))
            raise CoolifyConfigError(
                f"{len(matches)} Coolify applications match {wanted} ({uuids}); set coolify.uuid"
            )
        uuid = str(matches[0]["uuid"])
        self._uuid_cache[svc.lookup_key] = uuid
        return uuid

    async def application(self, uuid: str) -> dict[str, Any]:
        api = await self.api()
        app = await api.json("GET", f"/applications/{uuid}")
        if not isinstance(app, dict):
            raise CoolifyError(
                f"GET /applications/{uuid} on {self.settings.url} did not return an object"
            )
        return app

    async def deployments(self, uuid: str, take: int = HISTORY_PAGE) -> list[dict[str, Any]]:
        """The application's deployments, newest first.

        The spec says this route returns `[Application]`; Coolify really answers
        `{"count": N, "deployments": [ApplicationDeploymentQueue...]}` (contracts README §1).
        Both shapes are accepted so a future fix of either side does not break us.
        """
        api = await self.status_api()
        body = await api.json(
            "GET", f"/deployments/applications/{uuid}", params={"skip": 0, "take": take}
        )
        items = body.get("deployments") if isinstance(body, Mapping) else body
        if not isinstance(items, list):
            raise CoolifyError(
                f"GET /deployments/applications/{uuid} on {self.settings.url} returned an "
                "unexpected shape (neither a list nor {count, deployments})"
            )
        rows = [d for d in items if isinstance(d, dict)]
        rows.sort(
            key=lambda d: (str(d.get("created_at") or ""), int(d.get("id") or 0)), reverse=True
        )
        return rows

    # ---------------------------------------------------------------- Provider protocol

    async def instances(self, resource: Resource) -> list[Instance]:
        svc = ServiceSettings.from_resource(resource)
        uuid = await self.application_uuid(svc)
        app = await self.application(uuid)
        return [self._instance(uuid, app)]

    def _instance(self, uuid: str, app: Mapping[str, Any]) -> Instance:
        fqdn = app.get("fqdn") or ""
        labels = {"provider": "coolify", "coolify.uuid": uuid, "coolify.url": self.settings.url}
        if app.get("name"):
            labels["coolify.name"] = str(app["name"])
        if fqdn:
            labels["coolify.fqdn"] = str(fqdn)
        # No FQDN: an empty address makes a `{host}` health check fail loudly instead of
        # silently probing this machine.
        return Instance(id=uuid, address=fqdn_host(str(fqdn)), labels=labels)

    async def observe(self, resource: Resource) -> list[InstanceState]:
        svc = ServiceSettings.from_resource(resource)
        uuid = await self.application_uuid(svc)
        app = await self.application(uuid)
        history = await self.deployments(uuid, take=5)
        image_mode = self._image_mode(svc, app)
        pinned = self._pinned(app, image_mode)
        record = self._load_record(uuid)
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
            self._instance(uuid, app), revision, running, detail, facts, health=healthy,
            identity=Identity(deployment_uuid=str((latest or {}).get("deployment_uuid") or "")
                              or None),
        )]

    async def deploy(self, release: Release, instance: Instance) -> None:
        svc = ServiceSettings.from_resource(release.resource)
        api = await self.api()
        uuid = instance.id
        app = await self.application(uuid)
        image_mode = self._image_mode(svc, app)
        pin = self._pin_for(svc, release, app, image_mode)
        envs_changed = await self.sync_envs(uuid, release, svc)
        if await self._rollback_to_kept_image(release, svc, uuid, app, pin, image_mode,
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
            self.log.info(
                "coolify application pinned",
                extra={"application": uuid, "revision": pin, "fields": sorted(patch)},
            )

        history = await self.deployments(uuid)
        if not (patch or envs_changed or svc.force) and self._already_active(
            uuid, app, history, pin, image_mode
        ):
            self.log.info(
                "coolify application already runs this revision",
                extra={"application": uuid, "revision": pin},
            )
            self._save_record(uuid, release.revision, pin, image_mode)
            return
        timeout = svc.deploy_timeout or self.settings.deploy_timeout
        in_flight = [
            d
            for d in history
            if d.get("status") in ACTIVE_STATUSES and self._matches(d, pin, image_mode)
        ]
        # Coolify skips a deploy whose (app, commit, image tag) is already queued. That in-flight
        # deployment may predate our env change (or, for image apps whose deployments all carry
        # commit HEAD, our new tag): let it end, then queue ours.
        needs_fresh = envs_changed or (image_mode and bool(patch))
        if in_flight and needs_fresh and not svc.force:
            for stale in in_flight:
                try:
                    await self.wait_for_deployment(
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
            self.log.info(
                "coolify deployment of this revision already in flight; following it",
                extra={"application": uuid, "deployment": deployment_uuid},
            )
        else:
            deployment_uuid = await self._trigger(uuid, pin, image_mode, svc, history)
        final = await self.wait_for_deployment(uuid, deployment_uuid, pin, image_mode, timeout)
        await self._verify_active(uuid, final, pin, image_mode)
        self._save_record(uuid, release.revision, pin, image_mode)

    async def stop(self, resource: Resource, instance: Instance) -> None:
        api = await self.api()
        await api.json("POST", f"/applications/{instance.id}/stop")
        # Coolify queues the stop; wait until the container is really gone (bounded).
        deadline = time.monotonic() + min(self.settings.deploy_timeout, 300.0)
        interval = self.settings.poll_interval
        while True:
            app = await self.application(instance.id)
            state = str(app.get("status") or "").partition(":")[0]
            if state not in ("running", "restarting", "starting"):
                self.log.info(
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
            interval = min(interval * 1.5, self.settings.poll_max_interval)

    async def start(self, resource: Resource, instance: Instance) -> None:
        """POST /applications/{uuid}/start (a deployment of the pinned revision) and follow it."""
        api = await self.api()
        body = await api.json("POST", f"/applications/{instance.id}/start")
        await self._follow_action(resource, instance, body, "start")

    async def restart(self, resource: Resource, instance: Instance) -> None:
        """POST /applications/{uuid}/restart (a restart-only deployment) and follow it."""
        api = await self.api()
        body = await api.json("POST", f"/applications/{instance.id}/restart")
        await self._follow_action(resource, instance, body, "restart")

    async def remove(self, resource: Resource, instance: Instance) -> None:
        """Stop the application and delete the envs this Service put there.

        The application itself is not deleted: it was created in Coolify (with its domains,
        volumes and backups) and Fraisier only drives it.
        """
        await self.stop(resource, instance)
        self._record_path(instance.id).unlink(missing_ok=True)
        svc = ServiceSettings.from_resource(resource)
        keys = (
            {e.key for e in svc.envs}
            | set((resource.spec.get("env") or {}).keys())
            | set(workload_env(resource, ""))
        )
        api = await self.api()
        current = await api.json("GET", f"/applications/{instance.id}/envs")
        for env in current if isinstance(current, list) else []:
            if isinstance(env, Mapping) and env.get("key") in keys and not env.get("is_preview"):
                await self._delete_env(instance.id, str(env["uuid"]))
        self._written_env_path(instance.id).unlink(missing_ok=True)
        self.log.info(
            "coolify envs removed", extra={"application": instance.id, "keys": sorted(keys)}
        )

    async def run(self, release: Release, instance: Instance) -> RunResult:
        raise CoolifyUnsupported(
            f"{release.resource.kind} {release.resource.name}: the Coolify API has no "
            "run-to-completion containers; Jobs and Schedules cannot target a Coolify instance"
        )

    async def logs(self, resource: Resource, instance: Instance, tail: int = 100) -> list[str]:
        """The latest deployment's log (build + start output). Container logs are not included."""
        api = await self.api()
        history = await self.deployments(instance.id, take=1)
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

    # ---------------------------------------------------------------- envs

    def _desired_envs(
        self, release: Release, svc: ServiceSettings
    ) -> dict[str, tuple[EnvSpec, str]]:
        """key -> (spec, resolved value). Generic `env` first, `coolify.envs` overrides it."""
        resource = release.resource
        where = f"{resource.file}: {resource.kind} {resource.name}"
        desired: dict[str, tuple[EnvSpec, str]] = {}
        generic = resource.spec.get("env") or {}
        if release.env:
            for key, value in release.env.items():
                desired[key] = (EnvSpec(key, generic.get(key, value)), value)
        else:
            for key, raw in generic.items():
                if is_secret_ref(raw):
                    desired[key] = (EnvSpec(key, raw), resolve_secret(raw, f"{where}: env.{key}",
                                                                 resource.environment))
                else:
                    desired[key] = (EnvSpec(key, str(raw)), str(raw))
        for env in svc.envs:
            if env.secret:
                value = resolve_secret(env.value, f"{where}: coolify.envs.{env.key}",
                                       resource.environment)
            else:
                value = str(env.value)
            desired[env.key] = (env, value)
        # The schemas reserve the prefix in `env` and `coolify.envs`; a document that got past
        # them anyway must not silently lose its value to ours.
        taken = sorted(k for k in desired if k.startswith(RESERVED_ENV_PREFIX))
        if taken:
            raise CoolifyConfigError(
                f"{where}: sets {', '.join(taken)}; names starting with {RESERVED_ENV_PREFIX} "
                "are reserved (Fraisier sets them)"
            )
        # What every deployed process learns about itself: plain values (not secret), taken
        # literally (Coolify does not expand them), never preview envs.
        for key, value in workload_env(resource, release.revision).items():
            desired[key] = (EnvSpec(key, value, is_literal=True), value)
        return desired

    async def sync_envs(self, uuid: str, release: Release, svc: ServiceSettings) -> bool:
        """Make the application's (non-preview) envs match the spec plus the FRAISIER_ envs of
        ``release``. True if anything changed (a new container is needed to see it)."""
        desired = self._desired_envs(release, svc)
        api = await self.api()
        api.add_secrets(value for spec, value in desired.values() if spec.secret)
        current_list = await api.json("GET", f"/applications/{uuid}/envs")
        current = {
            str(e["key"]): e
            for e in (current_list if isinstance(current_list, list) else [])
            if isinstance(e, Mapping) and "key" in e and not e.get("is_preview")
        }
        upserts: list[dict[str, Any]] = []
        created: list[str] = []
        updated: list[str] = []
        written = self._load_written_env(uuid)
        ours = {k: v for k, (_, v) in desired.items() if k.startswith(RESERVED_ENV_PREFIX)}
        for key, (spec, value) in sorted(desired.items()):
            have = current.get(key)
            wanted: dict[str, Any] = {
                "key": key,
                "value": value,
                "is_preview": False,
                "is_literal": spec.is_literal,
                "is_multiline": spec.is_multiline,
                "is_shown_once": spec.is_shown_once,
            }
            flags = ["is_literal", "is_multiline", "is_shown_once"]
            if key in ours:
                # Runtime only: a build-time variable is part of Coolify's build configuration
                # (and a --build-arg), so a new FRAISIER_REVISION would rebuild every deploy.
                wanted.update(is_runtime=True, is_buildtime=False)
                flags += ["is_runtime", "is_buildtime"]
            if have is None:
                created.append(key)
                upserts.append(wanted)
                continue
            # Coolify's default for both is true (a variable created before this rule).
            same_flags = all(bool(have.get(flag, True)) == wanted[flag] for flag in flags)
            # Without read:sensitive Coolify hides values; then we cannot compare and must write,
            # except our own FRAISIER_ envs, whose last written value we keep.
            if "value" in have:
                same_value = have.get("value") == value
            else:
                same_value = key in ours and written.get(key) == value
            if not same_value or not same_flags:
                updated.append(key)
                upserts.append(wanted)
        if upserts:
            rewrites_ours = any(u["key"] in ours for u in upserts)
            if rewrites_ours:
                # Forget first: a PATCH whose answer is lost may or may not have applied.
                self._written_env_path(uuid).unlink(missing_ok=True)
            await api.json("PATCH", f"/applications/{uuid}/envs/bulk", json={"data": upserts})
            if rewrites_ours:
                self._save_written_env(uuid, ours)
        deleted: list[str] = []
        if svc.prune_envs:
            for key, have in sorted(current.items()):
                # FRAISIER_ names belong to Fraisier, not to the spec: never pruned.
                if key.startswith(RESERVED_ENV_PREFIX):
                    continue
                if key not in desired and have.get("uuid"):
                    await self._delete_env(uuid, str(have["uuid"]))
                    deleted.append(key)
        if created or updated or deleted:
            # Keys only: values (secret or not) stay out of logs.
            self.log.info(
                "coolify envs synced",
                extra={
                    "application": uuid,
                    "envs_created": created,
                    "envs_updated": updated,
                    "envs_deleted": deleted,
                },
            )
        return bool(created or updated or deleted)

    async def _delete_env(self, uuid: str, env_uuid: str) -> None:
        api = await self.api()
        try:
            await api.json("DELETE", f"/applications/{uuid}/envs/{env_uuid}")
        except CoolifyNotFound:
            pass  # already gone (e.g. a retried DELETE whose first answer was lost)

    # ---------------------------------------------------------------- deploy internals

    def _image_mode(self, svc: ServiceSettings, app: Mapping[str, Any]) -> bool:
        return svc.image_mode or app.get("build_pack") == "dockerimage"

    @staticmethod
    def _pinned(app: Mapping[str, Any], image_mode: bool) -> str | None:
        """What the application is pinned to: a commit SHA or HEAD, or an image tag."""
        value = app.get("docker_registry_image_tag") if image_mode else app.get("git_commit_sha")
        return str(value) if value else None

    def _pin_for(
        self, svc: ServiceSettings, release: Release, app: Mapping[str, Any], image_mode: bool
    ) -> str:
        """The value to pin. The Service's own pin wins: the core's Release.revision is a
        content address of the document, and a rollback hands back the old document (with
        its old pin). A full 40-hex revision is taken as a commit (a core passing commits)."""
        resource = release.resource
        where = f"{resource.file}: {resource.kind} {resource.name}"
        if image_mode:
            tag = svc.image_tag or self._pinned(app, image_mode)
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

    @staticmethod
    def _matches(deployment: Mapping[str, Any], pin: str, image_mode: bool) -> bool:
        if image_mode or pin == "HEAD":
            # Image deployments carry commit HEAD (the tag lives on the application); a HEAD
            # deployment records the commit it resolved.
            return True
        return str(deployment.get("commit") or "") == pin

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
            record = self._load_record(uuid)
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
        api = await self.api()
        params: dict[str, Any] = {"uuid": uuid}
        if svc.force:
            params["force"] = True

        async def send() -> str:
            body = await api.json("POST", "/deploy", params=params, once=True)
            items = body.get("deployments") if isinstance(body, Mapping) else None
            if not isinstance(items, list) or not items:
                raise CoolifyError(
                    f"POST /deploy on {self.settings.url} returned no deployment for {uuid}"
                )
            item = next(
                (i for i in items if isinstance(i, Mapping) and i.get("resource_uuid") == uuid),
                items[0],
            )
            message = str(item.get("message") or "")
            if DUPLICATE_MESSAGE in message.lower():
                # The returned deployment_uuid was generated but never stored: follow the real one.
                self.log.info(
                    "coolify already has this commit queued; following that deployment",
                    extra={"application": uuid, "revision": pin},
                )
                return await self._find_running(uuid, pin, image_mode)
            deployment_uuid = item.get("deployment_uuid")
            if not deployment_uuid:
                raise CoolifyError(
                    f"POST /deploy on {self.settings.url} did not say which deployment it "
                    f"queued: {message}"
                )
            return str(deployment_uuid)

        deployment_uuid = await self._queue_once(
            uuid, pin, image_mode, send, history, rollback=False, force=svc.force
        )
        self.log.info(
            "coolify deployment queued",
            extra={"application": uuid, "deployment": deployment_uuid, "revision": pin},
        )
        return deployment_uuid

    async def _queue_once(
        self,
        uuid: str,
        pin: str,
        image_mode: bool,
        send: Callable[[], Awaitable[str]],
        history: list[dict[str, Any]],
        *,
        rollback: bool,
        force: bool,
    ) -> str:
        """Send a request that queues a deployment, at most one deployment per call.

        The answer can be lost after Coolify queued it (a dropped connection, a timeout, a 5xx
        from a proxy). A forced deploy and a rollback are never skipped as duplicates, so
        sending again would queue a second build: first look for a deployment of this commit
        that appeared since ``history`` was read, and follow it.
        """
        api = await self.api()
        known = {str(d.get("deployment_uuid")) for d in history}
        attempt = 0
        while True:
            attempt += 1
            try:
                return await send()
            except CoolifyUnavailable as exc:
                if attempt >= self.settings.retry.attempts:
                    raise
                reason = str(exc)
            # Give a request the server is still handling time to land before looking.
            await asyncio.sleep(api.backoff(attempt))
            landed = [
                d for d in await self.deployments(uuid)
                if str(d.get("deployment_uuid")) not in known
                and d.get("status") in ACTIVE_STATUSES | TERMINAL_STATUSES
                and self._matches(d, pin, image_mode)
                and bool(d.get("rollback")) == rollback
                and (not force or bool(d.get("force_rebuild")))
            ]
            if landed:
                deployment_uuid = str(landed[-1]["deployment_uuid"])  # the oldest new one
                self.log.warning(
                    "coolify queued the deployment although its answer was lost; following it",
                    extra={"application": uuid, "deployment": deployment_uuid, "revision": pin},
                )
                return deployment_uuid
            self.log.warning(
                "coolify deploy request failed and queued nothing; sending it again",
                extra={"application": uuid, "revision": pin, "attempt": attempt,
                       "error": reason},
            )

    async def _kept_images(self, uuid: str) -> set[str]:
        """Tags of the application's images still on its server (Coolify's rollback list).
        Empty when the route is missing (Coolify before 4.3) or the server cannot be asked."""
        api = await self.status_api()
        try:
            body = await api.json("GET", f"/applications/{uuid}/rollback-images")
        except (CoolifyNotFound, CoolifyRequestError):
            return set()
        images = body.get("images") if isinstance(body, Mapping) else None
        return {
            str(i["tag"]) for i in (images if isinstance(images, list) else [])
            if isinstance(i, Mapping) and i.get("tag")
        }

    async def _rollback_to_kept_image(
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
        if image_mode or pin == "HEAD" or svc.force or self._pinned(app, False) == pin:
            return False
        history = await self.deployments(uuid)
        ran_before = any(
            d.get("status") == "finished" and str(d.get("commit") or "") == pin for d in history
        )
        # Asking for the kept images makes Coolify list them on its server: only for a commit
        # that recently ran (a first rollout of a commit has no image to go back to).
        if not ran_before or pin not in await self._kept_images(uuid):
            return False
        api = await self.api()
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
                return str(queued) if queued else await self._find_running(uuid, pin, False)

            deployment_uuid = await self._queue_once(
                uuid, pin, False, send, history, rollback=True, force=False
            )
        self.log.info(
            "coolify rollback to the kept image of this commit",
            extra={"application": uuid, "deployment": deployment_uuid, "revision": pin},
        )
        timeout = svc.deploy_timeout or self.settings.deploy_timeout
        final = await self.wait_for_deployment(uuid, deployment_uuid, pin, False, timeout)
        if not pin_first:
            await api.json("PATCH", f"/applications/{uuid}", json=patch)
        await self._verify_active(uuid, final, pin, False)
        self._save_record(uuid, release.revision, pin, False)
        return True

    async def _find_running(self, uuid: str, pin: str, image_mode: bool) -> str:
        history = await self.deployments(uuid)
        for wanted in (ACTIVE_STATUSES, TERMINAL_STATUSES):
            for deployment in history:
                if deployment.get("status") in wanted and self._matches(
                    deployment, pin, image_mode
                ):
                    return str(deployment["deployment_uuid"])
        raise CoolifyDeployFailed(
            f"Coolify said a deployment of {pin} was already queued for application {uuid}, "
            "but its deployment history shows none"
        )

    async def wait_for_deployment(
        self, uuid: str, deployment_uuid: str, pin: str, image_mode: bool, limit_s: float
    ) -> dict[str, Any]:
        api = await self.api()
        poller = await self.status_api()
        deadline = time.monotonic() + limit_s
        interval = self.settings.poll_interval
        last_status: str | None = None
        followed_fallback = False
        while True:
            try:
                deployment = await poller.json("GET", f"/deployments/{deployment_uuid}")
            except CoolifyNotFound:
                if followed_fallback:
                    raise
                # A duplicate answer we did not recognise: its uuid was never stored.
                followed_fallback = True
                deployment_uuid = await self._find_running(uuid, pin, image_mode)
                continue
            status = str(deployment.get("status") or "")
            if status != last_status:
                self.log.info(
                    "coolify deployment status",
                    extra={"application": uuid, "deployment": deployment_uuid, "status": status},
                )
                last_status = status
            if status in TERMINAL_STATUSES:
                if status != "finished":
                    if "logs" not in deployment and poller is not api:
                        # Polled without the log: read it once, with the token that may.
                        deployment = await api.json("GET", f"/deployments/{deployment_uuid}")
                    tail = [
                        api.redact(x) for x in parse_deployment_logs(deployment.get("logs"))[-5:]
                    ]
                    log_note = ("; last log lines: " + " | ".join(tail)) if tail else ""
                    raise CoolifyDeployFailed(
                        f"Coolify deployment {deployment_uuid} of application {uuid} ({pin}) ended "
                        f"{status}{log_note}"
                    )
                return dict(deployment)
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                await self._cancel_after_timeout(deployment_uuid)
                raise CoolifyDeployTimeout(
                    f"Coolify deployment {deployment_uuid} of application {uuid} ({pin}) still "
                    f"{status or 'unknown'} after {limit_s:g}s"
                    + ("; it was cancelled" if self.settings.cancel_on_timeout else "")
                )
            delay = interval / 2 + random.uniform(0, interval / 2)
            await asyncio.sleep(min(delay, remaining))
            interval = min(interval * 1.5, self.settings.poll_max_interval)

    async def _cancel_after_timeout(self, deployment_uuid: str) -> None:
        if not self.settings.cancel_on_timeout:
            return
        api = await self.api()
        try:
            await api.json("POST", f"/deployments/{deployment_uuid}/cancel")
        except CoolifyError as exc:
            # It may have ended meanwhile (400 cannot be cancelled); the timeout is still reported.
            self.log.warning(
                "could not cancel the timed-out coolify deployment",
                extra={"deployment": deployment_uuid, "error": str(exc)},
            )

    async def _verify_active(
        self, uuid: str, deployment: Mapping[str, Any], pin: str, image_mode: bool
    ) -> None:
        app = await self.application(uuid)
        pinned = self._pinned(app, image_mode)
        if pinned != pin:
            raise CoolifyDeployFailed(
                f"Coolify deployment {deployment.get('deployment_uuid')} finished but application "
                f"{uuid} now pins {pinned!r}, not {pin!r} (changed concurrently?)"
            )
        commit = str(deployment.get("commit") or "")
        if not image_mode and pin != "HEAD" and GIT_SHA.match(commit) and commit != pin:
            raise CoolifyDeployFailed(
                f"Coolify deployment {deployment.get('deployment_uuid')} built commit "
                f"{commit}, not {pin}"
            )
        self.log.info(
            "coolify deployment finished",
            extra={
                "application": uuid,
                "deployment": deployment.get("deployment_uuid"),
                "revision": pin,
                "status": app.get("status"),
            },
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
        timeout = svc.deploy_timeout or self.settings.deploy_timeout
        app = await self.application(instance.id)
        image_mode = self._image_mode(svc, app)
        pin = self._pinned(app, image_mode) or "HEAD"
        await self.wait_for_deployment(instance.id, str(deployment_uuid), pin, image_mode, timeout)


def fqdn_host(fqdn: str) -> str:
    """Host of the first URL in Coolify's comma-separated `fqdn` ('' when there is none)."""
    first = fqdn.split(",")[0].strip()
    if not first:
        return ""
    if "://" not in first:
        first = f"http://{first}"
    return urlsplit(first).hostname or ""


def parse_deployment_logs(raw: Any) -> list[str]:
    """Coolify keeps deployment logs as a JSON list of {output, hidden, ...}; text also works."""
    if not raw:
        return []
    entries: Any = raw
    if isinstance(raw, str):
        try:
            entries = json.loads(raw)
        except ValueError:
            return raw.splitlines()
    if not isinstance(entries, list):
        return str(raw).splitlines()
    lines: list[str] = []
    for entry in entries:
        if isinstance(entry, Mapping):
            if entry.get("hidden"):
                continue
            lines.extend(str(entry.get("output") or "").splitlines())
        else:
            lines.extend(str(entry).splitlines())
    return lines


def _deployment_summary(deployment: Mapping[str, Any] | None) -> dict[str, Any] | None:
    if deployment is None:
        return None
    return {
        "uuid": deployment.get("deployment_uuid"),
        "status": deployment.get("status"),
        "commit": deployment.get("commit"),
        "created_at": deployment.get("created_at"),
    }
