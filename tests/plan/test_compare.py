"""Where a plan item runs, for people: Target, provider, hosts (credentials never), strategy."""

from __future__ import annotations

from reconciler.plan.compare import placement, records_of
from reconciler.plan.planner import PlanItem
from reconciler.spec.model import DesiredState, Resource, ResourceKey


def resource(kind: str, name: str, spec: dict[str, object]) -> Resource:
    return Resource(ResourceKey("prod", kind, name), {}, spec, "f.yaml")


def test_placement_names_hosts_without_credentials_and_the_strategy() -> None:
    state = DesiredState({r.key: r for r in [
        resource("Target", "paas", {"provider": "coolify",
                                    "url": "https://user:s3cret@coolify.example.org"}),
        resource("Target", "docker", {"provider": "compose"}),
        resource("Service", "api", {"target": "paas", "strategy": {"type": "canary"}}),
        resource("Service", "web", {"target": "docker"}),
        resource("Job", "migrate", {"target": "docker"}),
    ]})
    item = {k.name: PlanItem(k, "create", "r", state.resources[k]) for k in state.resources}
    api = placement(item["api"], state)
    assert (api.target, api.provider, api.strategy) == ("paas", "coolify", "canary")
    assert api.hosts == ("https://***@coolify.example.org",)
    web = placement(item["web"], state)
    assert (web.hosts, web.strategy) == (("local docker",), "recreate")
    assert placement(item["migrate"], state).strategy is None
    # a deleted resource (no desired document): its recorded one, its Target from the base
    (record,) = [r for r in records_of(state, dict.fromkeys(state.resources, "r"))
                 if r.key.name == "api"]
    gone = PlanItem(record.key, "delete", None, None, record)
    assert placement(gone, DesiredState({}), state).provider == "coolify"
