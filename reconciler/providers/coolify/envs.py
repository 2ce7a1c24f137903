"""The envs of a Coolify application: the spec's (``env`` then ``coolify.envs``, secrets resolved)
plus the runtime-only FRAISIER_ envs, synced through the bulk PATCH with as few writes as
possible (a write can mean a rebuild), optionally pruning the others; values never logged.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from reconciler.providers import RESERVED_ENV_PREFIX, Release, workload_env

from .config import EnvSpec, ServiceSettings, is_secret_ref, resolve_secret
from .errors import CoolifyConfigError, CoolifyNotFound
from .session import CoolifySession


class EnvSync:
    """Makes an application's envs match a release."""

    def __init__(self, session: CoolifySession) -> None:
        self.session = session

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
        api = await self.session.api()
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
        written = self.session.load_written_env(uuid)
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
                self.session.written_env_path(uuid).unlink(missing_ok=True)
            await api.json("PATCH", f"/applications/{uuid}/envs/bulk", json={"data": upserts})
            if rewrites_ours:
                self.session.save_written_env(uuid, ours)
        deleted: list[str] = []
        if svc.prune_envs:
            for key, have in sorted(current.items()):
                # FRAISIER_ names belong to Fraisier, not to the spec: never pruned.
                if key.startswith(RESERVED_ENV_PREFIX):
                    continue
                if key not in desired and have.get("uuid"):
                    await self.delete_env(uuid, str(have["uuid"]))
                    deleted.append(key)
        if created or updated or deleted:
            # Keys only: values (secret or not) stay out of logs.
            self.session.log.info(
                "coolify envs synced",
                extra={
                    "application": uuid,
                    "envs_created": created,
                    "envs_updated": updated,
                    "envs_deleted": deleted,
                },
            )
        return bool(created or updated or deleted)


    async def delete_env(self, uuid: str, env_uuid: str) -> None:
        api = await self.session.api()
        try:
            await api.json("DELETE", f"/applications/{uuid}/envs/{env_uuid}")
        except CoolifyNotFound:
            pass  # already gone (e.g. a retried DELETE whose first answer was lost)
