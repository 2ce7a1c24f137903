"""What a deployment ships: the ``Release`` of a resource at a revision (environment, an exporter
of its source), the resource rebuilt from a recorded document, and its slot variants.
"""

from __future__ import annotations

from functools import partial
from typing import Any

from reconciler.providers import Exporter, Release
from reconciler.rollout.core import EngineCore
from reconciler.rollout.outcome import DeploymentFailed
from reconciler.rollout.strategies import SLOTS, slot_resource
from reconciler.spec.model import Resource, ResourceKey, spec_hash
from reconciler.spec.secrets import resolve_env


def resource_from_document(key: ResourceKey, document: dict[str, Any],
                           file: str = "<recorded>") -> Resource:
    """Rebuild a Resource from a recorded document (for rollbacks and deletions)."""
    meta = document.get("metadata") or {}
    spec = document.get("spec") or {}
    deps: list[ResourceKey] = []
    res = Resource(key=key, labels=dict(meta.get("labels") or {}), spec=spec, file=file,
                   depends_on=deps)
    res.hash = spec_hash(res.document())
    return res


def variants_of(resource: Resource) -> list[Resource]:
    """The resource as providers know it: itself, plus its slots when its strategy has ports
    (blue-green, weighted canary run each slot under its own name)."""
    strategy = resource.spec.get("strategy") or {}
    ports = strategy.get("ports") if isinstance(strategy, dict) else None
    if not ports:
        return [resource]
    return [resource, *(slot_resource(resource, slot, int(ports[slot])) for slot in SLOTS)]


class Releases(EngineCore):
    """Releases of resources at a revision."""

    def release_for(self, resource: Resource, revision: str, commit: str | None) -> Release:
        # sops/age references are read from the config repo at the deployed commit
        repo = self.source.tree(commit).read if self.source is not None and commit else None
        env = resolve_env(resource.spec.get("env") or {}, environment=resource.environment,
                          repo=repo)
        source = resource.spec.get("source") or {}
        export: Exporter | None = None
        content: str | None = None
        if "path" in source:
            if self.source is None or commit is None:
                raise DeploymentFailed(f"{resource.key}: source.path needs a config repo commit")
            export = partial(self.source.export, commit, str(source["path"]))
            content = f"config@{commit}:{source['path']}"
        elif "git" in source:
            app = self.revisions.app_source(source["git"])
            app_commit = app.commit or app.sync().commit
            export = partial(app.export, app_commit, str(source["git"].get("path", "")))
            content = f"git {app.display_url}@{app_commit}:{source['git'].get('path', '')}"
        elif "artifact" in source:
            from reconciler.source.artifact import fetch_artifact

            artifact = source["artifact"]
            export = partial(fetch_artifact, str(artifact["url"]), str(artifact["sha256"]))
            content = f"artifact sha256:{artifact['sha256']}"
        return Release(resource=resource, revision=revision, config_commit=commit,
                       export=export, env=env, content=content)

    async def target_from_store(self, resource: Resource) -> Resource | None:
        """The Target of ``resource`` as recorded (applied, else desired): for resources
        handled without the desired state (rollbacks, deletions, recovery)."""
        tkey = resource.target_key
        if tkey is None:
            return None
        rec = await self.store.get_resource(tkey)
        if rec is None or not (rec.applied_spec or rec.desired_spec):
            return None
        return resource_from_document(tkey, rec.applied_spec or rec.desired_spec or {})
