"""The plan of a change between two commits of the config repo (``diff --base``): no host, no
database.

The base commit's desired state stands in for the recorded state, as if it had been applied
exactly: every resource of the base becomes a record with its document as applied spec and its
revision as applied revision. ``make_plan`` then compares the head with it as it compares git
with the database, so create/update/delete, dependsOn order and sync-window deferrals mean the
same thing in a pull request's plan as in ``apply``.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from reconciler.observe.redact import redact
from reconciler.plan.planner import (
    Plan,
    PlanItem,
    make_plan,
    name_target_changes,
    order_deletions,
)
from reconciler.spec.model import DesiredState, Resource, ResourceKey
from reconciler.state.store import ResourceRecord

DEFAULT_STRATEGY = "recreate"  # rollout.strategies.RECREATE: what a Service without one gets


def records_of(desired: DesiredState, revisions: Mapping[ResourceKey, str]) -> list[ResourceRecord]:
    """``desired`` as if it had been applied as it is: one full record per resource."""
    out: list[ResourceRecord] = []
    for key, resource in desired.resources.items():
        document = resource.document()
        out.append(ResourceRecord(
            key=key, id=str(key), desired_revision=revisions[key], desired_hash=resource.hash,
            desired_spec=document, applied_revision=revisions[key],
            applied_hash=resource.hash, applied_spec=document, config_commit=desired.commit,
            sync_status="Synced", last_result="succeeded"))
    return out


def plan_against(head: DesiredState, records: Iterable[ResourceRecord],
                 head_revisions: Mapping[ResourceKey, str], *, prune: bool = False,
                 now: datetime | None = None, environments: Iterable[str] = ()) -> Plan:
    """What applying ``head`` would do to a fleet in the state of ``records`` (full records:
    ``records_of`` a base commit, or read from a store), as ``apply`` plans it: a resource
    removed from git is deleted with ``prune``, else orphaned."""
    wanted = set(environments)
    if wanted:
        head = head.only(wanted)
        records = [r for r in records if r.key.environment in wanted]
    plan = make_plan(head, records, head_revisions, prune=prune, now=now)
    order_deletions(plan)
    name_target_changes(plan)
    return plan


@dataclass(frozen=True)
class Placement:
    """Where and how an item of a plan is rolled out: for people reading the plan."""

    target: str | None  # the Target's name (a Target itself: None)
    provider: str | None
    hosts: tuple[str, ...]
    strategy: str | None  # Services only

    def to_json(self) -> dict[str, Any]:
        return {"target": self.target, "provider": self.provider, "hosts": list(self.hosts),
                "strategy": self.strategy}


def _document_of(item: PlanItem) -> dict[str, Any]:
    if item.resource is not None:
        return item.resource.document()
    record = item.record
    return (record.applied_spec or record.desired_spec or {}) if record is not None else {}


def _hosts(target_spec: Mapping[str, Any]) -> tuple[str, ...]:
    hosts = target_spec.get("hosts")
    if isinstance(hosts, list) and hosts:
        return tuple(str(h.get("name") or h.get("address")) for h in hosts
                     if isinstance(h, Mapping))
    if target_spec.get("transport") == "local":
        return ("local",)
    # compose and coolify Targets name one endpoint (a URL may carry a credential)
    docker = target_spec.get("docker")
    if target_spec.get("provider") == "compose":
        host = docker.get("host") if isinstance(docker, Mapping) else None
        return (redact(str(host)) if host else "local docker",)
    url = target_spec.get("url")
    return (redact(url),) if isinstance(url, str) and url else ()


def placement(item: PlanItem, *targets: DesiredState) -> Placement:
    """Target, provider, hosts and strategy of ``item``, looked up in ``targets`` (the head
    first, then the base: a deleted resource's Target may be gone too)."""
    spec = _document_of(item).get("spec") or {}
    if item.key.kind == "Target":
        return Placement(None, spec.get("provider"), _hosts(spec), None)
    name = spec.get("target")
    target: Resource | None = None
    if isinstance(name, str):
        tkey = ResourceKey(item.key.environment, "Target", name)
        target = next((d.resources[tkey] for d in targets if tkey in d.resources), None)
    tspec = target.spec if target is not None else {}
    strategy = None
    if item.key.kind == "Service":
        strategy = str((spec.get("strategy") or {}).get("type", DEFAULT_STRATEGY))
    return Placement(name if isinstance(name, str) else None, tspec.get("provider"),
                     _hosts(tspec), strategy)
