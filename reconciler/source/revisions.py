"""Revisions: the content address of what would be deployed, resolved before planning.

A revision is a hash of the resource's document, its Target's, and the identity of its source (a
git tree id in the config repo, an app repo's commit, an artifact's digest). Resolving it may
fetch an app repo; a plan is made from revisions resolved here, so planning itself is pure.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

from reconciler.errors import StoreError
from reconciler.source.git import GitSource
from reconciler.spec import model
from reconciler.spec.model import DesiredState, Resource, ResourceKey, spec_hash
from reconciler.spec.provider_schemas import provider_schemas, without_fields

if TYPE_CHECKING:
    from reconciler.spec.cache import SpecCache

# Planned revision of a resource whose revision could not be computed (never a real one).
UNRESOLVED = "unresolved"
# ResourceKey from a plain tuple in C (ResourceKey(...) runs a Python-level __new__).
_new_key = tuple.__new__


class Revisions:
    """Revisions of resources, memoized where they are a pure function of the documents."""

    def __init__(self, source: GitSource | None, state_dir: Path, *,
                 kept: SpecCache | None = None) -> None:
        self.source = source  # the config repo (``source.path``)
        self.state_dir = state_dir
        self._app_sources: dict[str, GitSource] = {}
        # revision_of of resources without a source, by (document hash, Target's document hash):
        # a pure function of the two, and most of the per-resource cost of a no-op plan.
        self._revisions: dict[tuple[str, str], str] = {}
        # A one-shot command's memo comes from the spec cache and goes back to it (``kept``):
        # the next process's plan computes only the revisions of what changed.
        self._kept = kept
        self._kept_name = ""
        self._used: list[tuple[str, str]] | None = None  # memo keys asked for, while kept

    def app_source(self, spec: dict[str, Any]) -> GitSource:
        repo = str(spec["repo"])
        src = self._app_sources.get(repo)
        if src is None:
            src = GitSource(repo, ref=spec.get("ref"), state_dir=self.state_dir)
            self._app_sources[repo] = src
        return src


    def revision_of(self, resource: Resource, desired: DesiredState) -> str:
        """Content address of what would be deployed: the document, its Target, and the
        identity of its source (a git tree id, an app commit, an artifact digest)."""
        target = desired.target_of(resource)
        memo: tuple[str, str] | None = None
        if (resource.hash and not (resource.has_field("source") and resource.spec.get("source"))
                and (target is None or target.hash)):
            memo = (resource.hash + resource.sealed_digest,
                    target.hash if target is not None else "")
            if self._used is not None:
                self._used.append(memo)
            known = self._revisions.get(memo)
            if known is not None:
                return known
        revision = self._revision(resource, desired,
                                  _reaching_hash(target) if target is not None else None)
        if memo is not None:
            if (len(self._revisions) >= 100_000
                    and len(self._revisions) >= 2 * len(desired.resources)):
                self._revisions.clear()
            self._revisions[memo] = revision
        return revision

    def legacy_revision_of(self, resource: Resource, desired: DesiredState) -> str | None:
        """The revision of ``resource`` as it was computed before Targets' connection fields
        were left out (the whole Target document), when that differs from ``revision_of``:
        a record applied under it is the same deployment, not a change."""
        target = desired.target_of(resource)
        if target is None or _reaching_hash(target) == _deploy_hash(target):
            return None
        return self._revision(resource, desired, _deploy_hash(target), fetch=False)

    def _revision(self, resource: Resource, desired: DesiredState, target_part: str | None,
                  *, fetch: bool = True) -> str:
        parts = [_deploy_hash(resource)]
        if resource.sealed_digest:  # a re-encrypted secret value is a new revision
            parts.append(resource.sealed_digest)
        if target_part is not None:
            parts.append(target_part)
        source = (resource.spec.get("source") if resource.has_field("source") else None) or {}
        if "path" in source and self.source is not None and desired.commit:
            parts.append(self.source.tree_id(desired.commit, str(source["path"])) or "missing")
        elif "git" in source:
            app = self.app_source(source["git"])
            # without fetch: the commit revision_of fetched this pass
            parts.append(app.commit if not fetch and app.commit else app.sync().commit)
        elif "artifact" in source:
            parts.append(str(source["artifact"].get("sha256", "")))
        return hashlib.sha256("\0".join(parts).encode()).hexdigest()[:12]


    def resolve(self, desired: DesiredState,
                errors: dict[ResourceKey, Exception] | None = None) -> dict[ResourceKey, str]:
        """The revision of every resource of ``desired``: what ``make_plan`` compares.

        With ``errors``, a resource whose revision cannot be computed (an app repository that
        cannot be cloned, …) must not stop the plan of the others: it gets the placeholder
        :data:`UNRESOLVED` and its exception goes into ``errors``; a store error still raises.
        """
        known = len(self._revisions)
        if self._kept is not None:
            if not self._kept_name:
                self._kept_name = "revisions-" + _memo_fingerprint()
                stored = self._kept.get_value(self._kept_name)
                if isinstance(stored, dict) and not self._revisions:
                    self._revisions = stored
                    known = len(stored)
            self._used = []
        revisions: dict[ResourceKey, str] = {}
        memo, used = self._revisions, self._used
        resources = desired.resources
        # The memo's hits inline (``revision_of``'s first half, the same key), each Target
        # looked up once: this loop runs for every resource of the fleet at every plan.
        targets: dict[tuple[str, str], Resource | None] = {}
        for key, resource in resources.items():
            digest = resource.hash
            if digest and not (resource.has_field("source") and resource.spec.get("source")):
                name = None if key[1] == "Target" else resource.target
                target: Resource | None = None
                if name is not None:
                    where = (key[0], name)
                    if where in targets:
                        target = targets[where]
                    else:
                        target = targets[where] = resources.get(
                            _new_key(ResourceKey, (key[0], "Target", name)))
                target_hash = "" if target is None else target.hash
                if target is None or target_hash:
                    found = memo.get(key_ := (digest + resource.sealed_digest, target_hash))
                    if found is not None:
                        if used is not None:
                            used.append(key_)
                        revisions[key] = found
                        continue
            if errors is None:
                revisions[key] = self.revision_of(resource, desired)
            else:
                try:
                    revisions[key] = self.revision_of(resource, desired)
                except StoreError:
                    raise
                except Exception as exc:
                    errors[key] = exc
                    revisions[key] = UNRESOLVED
        used, self._used = self._used, None
        if (self._kept is not None and used is not None
                and (len(self._revisions) != known or len(self._revisions) > len(used) + 1000)):
            # written back when something was computed (or many entries went unused): the
            # entries this plan asked for, so the memo follows the fleet and stays its size
            memo = self._revisions  # (a revision that failed has no entry)
            self._kept.put_value(self._kept_name, {key: found for key in used
                                                   if (found := memo.get(key)) is not None})
        return revisions


def _memo_fingerprint() -> str:
    """What a kept memo's revisions were computed by: this module and the document hash's
    (their size and mtime), and every provider's connection-only Target fields (left out of
    a Target's part of a revision). A memo made by other code or fields is not read."""
    parts = [f"{path}:{os.stat(path).st_size}:{os.stat(path).st_mtime_ns}"
             for path in (__file__, model.__file__)]
    parts += [f"{name}={','.join(info.connection_fields)}"
              for name, info in sorted(provider_schemas().items())]
    return hashlib.sha256("\0".join(parts).encode()).hexdigest()[:16]


class HashMemo(dict[str, str]):
    """Document hash -> a hash derived from that document alone, bounded: asked for once per
    resource on a Target, so it must not grow with every document ever seen."""

    LIMIT = 20_000

    def remember(self, key: str, digest: str) -> str:
        if key:
            if len(self) >= self.LIMIT:
                self.clear()
            self[key] = digest
        return digest


# Document hash -> the hash without sync windows (a function of the document): a Target with
# windows is hashed again for every resource on it otherwise.
_WINDOWLESS = HashMemo()


def _deploy_hash(resource: Resource) -> str:
    """The document's hash without its sync windows: they say when a change may go out, not
    what runs, so editing them must not make every resource on a Target a new revision."""
    if not resource.has_field("syncWindows"):
        return resource.hash
    known = _WINDOWLESS.get(resource.hash) if resource.hash else None
    if known is not None:
        return known
    document = resource.document()
    document["spec"] = {k: v for k, v in resource.spec.items() if k != "syncWindows"}
    return _WINDOWLESS.remember(resource.hash, spec_hash(document))



# Target document hash -> the hash of what reaches the hosts (no sync windows, no connection
# fields): asked for every resource on the Target.
_REACHING = HashMemo()


def _reaching_hash(target: Resource) -> str:
    """A Target's part of its resources' revisions: its document without sync windows and
    without the fields its provider declares connection-only (``connection_fields``): an SSH
    timeout says how the reconciler reaches a host, not what runs there."""
    known = _REACHING.get(target.hash) if target.hash else None
    if known is not None:
        return known
    schemas = provider_schemas().get(str(target.spec.get("provider")))
    excluded = ("syncWindows", *(schemas.connection_fields if schemas is not None else ()))
    if not any(path.split(".")[0].split("[")[0] in target.spec for path in excluded):
        digest = target.hash
    else:
        document = target.document()
        document["spec"] = without_fields(target.spec, excluded)
        digest = spec_hash(document)
    return _REACHING.remember(target.hash, digest)
