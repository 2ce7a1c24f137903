"""One Coolify Target as the provider's parts share it (``CoolifySession``): the API clients
(built on first use; the statusToken's for polling), the per-application records on this
machine (which core revision wrote which pin, the FRAISIER_ envs last written), finding an
application and its deployments, and reading what it is pinned to. Also how Coolify's
``fqdn`` and deployment logs are read.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from reconciler.providers import Instance, ProviderContext
from reconciler.spec.model import Resource

from .client import CoolifyClient
from .config import ServiceSettings, TargetSettings, describe_secret_ref, resolve_secret
from .errors import CoolifyConfigError, CoolifyError, CoolifyNotFound

# app/Enums/ApplicationDeploymentStatus.php
ACTIVE_STATUSES = frozenset({"queued", "in_progress"})
TERMINAL_STATUSES = frozenset({"finished", "failed", "cancelled-by-user"})
HISTORY_PAGE = 10
BEARER_TOKEN = re.compile(r"[\x21-\x7e]{1,4096}")  # RFC 6750 b64token and more, one line


class CoolifySession:
    """One Coolify Target as the provider's parts share it."""

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
    def record_path(self, uuid: str) -> Path:
        safe = re.sub(r"[^A-Za-z0-9_.-]", "_", uuid)
        return self.ctx.state_dir / "coolify" / self.target.name / f"{safe}.json"


    def load_record(self, uuid: str) -> dict[str, Any] | None:
        try:
            data = json.loads(self.record_path(uuid).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return None
        return data if isinstance(data, dict) and "revision" in data else None


    def save_record(self, uuid: str, revision: str, pin: str, image_mode: bool) -> None:
        if not revision:
            return
        path = self.record_path(uuid)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        tmp.write_text(
            json.dumps({"revision": revision, "pin": pin, "image": image_mode}), encoding="utf-8"
        )
        os.replace(tmp, path)


    # The FRAISIER_ envs this provider last wrote, per application. They are not secret; the
    # record lets a token without read:sensitive (Coolify then hides every value) tell that
    # they are unchanged, so redeploying a revision does not rewrite them and rebuild.
    def written_env_path(self, uuid: str) -> Path:
        return self.record_path(uuid).with_suffix(".env.json")


    def load_written_env(self, uuid: str) -> dict[str, str]:
        try:
            data = json.loads(self.written_env_path(uuid).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return {}
        if not isinstance(data, dict):
            return {}
        return {str(k): v for k, v in data.items() if isinstance(v, str)}


    def save_written_env(self, uuid: str, values: Mapping[str, str]) -> None:
        path = self.written_env_path(uuid)
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


    async def instances(self, resource: Resource) -> list[Instance]:
        svc = ServiceSettings.from_resource(resource)
        uuid = await self.application_uuid(svc)
        app = await self.application(uuid)
        return [self.instance_of(uuid, app)]


    def instance_of(self, uuid: str, app: Mapping[str, Any]) -> Instance:
        fqdn = app.get("fqdn") or ""
        labels = {"provider": "coolify", "coolify.uuid": uuid, "coolify.url": self.settings.url}
        if app.get("name"):
            labels["coolify.name"] = str(app["name"])
        if fqdn:
            labels["coolify.fqdn"] = str(fqdn)
        # No FQDN: an empty address makes a `{host}` health check fail loudly instead of
        # silently probing this machine.
        return Instance(id=uuid, address=fqdn_host(str(fqdn)), labels=labels)


    def image_mode(self, svc: ServiceSettings, app: Mapping[str, Any]) -> bool:
        return svc.image_mode or app.get("build_pack") == "dockerimage"


    @staticmethod
    def pinned(app: Mapping[str, Any], image_mode: bool) -> str | None:
        """What the application is pinned to: a commit SHA or HEAD, or an image tag."""
        value = app.get("docker_registry_image_tag") if image_mode else app.get("git_commit_sha")
        return str(value) if value else None


    @staticmethod
    def matches(deployment: Mapping[str, Any], pin: str, image_mode: bool) -> bool:
        if image_mode or pin == "HEAD":
            # Image deployments carry commit HEAD (the tag lives on the application); a HEAD
            # deployment records the commit it resolved.
            return True
        return str(deployment.get("commit") or "") == pin



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
