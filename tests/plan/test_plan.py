from collections.abc import Iterable
from typing import Any

from reconciler.plan.diff import diff_documents
from reconciler.plan.ordering import waves
from reconciler.plan.planner import (
    BLOCKED,
    CREATE,
    DELETE,
    ORPHAN,
    SUSPENDED,
    UNCHANGED,
    UPDATE,
    Plan,
    make_plan,
)
from reconciler.spec.model import DesiredState, Resource, ResourceKey, spec_hash
from reconciler.state.store import ResourceRecord


def res(kind: str, name: str, spec: dict, deps: list[ResourceKey] | None = None) -> Resource:
    r = Resource(ResourceKey("e", kind, name), {}, spec, "f.yaml", depends_on=deps or [])
    r.hash = spec_hash(r.document())
    return r


def state(*rs: Resource) -> DesiredState:
    return DesiredState({r.key: r for r in rs}, commit="c" * 40)


def rev(r: Resource) -> str:
    return r.hash[:12]


def planned(desired: DesiredState, records: Iterable[ResourceRecord], **kw: Any) -> Plan:
    """``make_plan`` with every revision resolved first, as the engine does."""
    return make_plan(desired, records, {k: rev(r) for k, r in desired.resources.items()}, **kw)


def test_diff_reports_paths_for_added_removed_changed():
    old = {"spec": {"a": 1, "b": [1, 2], "c": {"x": "y"}}}
    new = {"spec": {"a": 2, "b": [1], "c": {"x": "y", "z": True}}}
    got = {(c.op, c.path) for c in diff_documents(old, new)}
    assert got == {("~", "spec.a"), ("-", "spec.b[1]"), ("+", "spec.c.z")}


def test_diff_type_change_is_a_change():
    assert [c.op for c in diff_documents({"a": 1}, {"a": "1"})] == ["~"]


def test_waves_put_targets_first_and_respect_depends_on():
    t = ResourceKey("e", "Target", "t")
    job = ResourceKey("e", "Job", "migrate")
    api = ResourceKey("e", "Service", "api")
    web = ResourceKey("e", "Service", "web")
    got = waves([web, api, job, t], {api: [job], web: [api]})
    assert got == [[t], [job], [api], [web]]


def test_plan_actions():
    target = res("Target", "t", {"provider": "bare_metal"})
    api = res("Service", "api", {"target": "t", "command": ["a"]})
    web = res("Service", "web", {"target": "t", "command": ["w"]})
    gone = ResourceKey("e", "Service", "gone")
    records = [
        ResourceRecord(target.key, "1", applied_revision=rev(target),
                       applied_spec=target.document()),
        ResourceRecord(api.key, "2", applied_revision="old",
                       applied_spec={**api.document(),
                                     "spec": {"target": "t", "command": ["old"]}}),
        ResourceRecord(gone, "3", applied_revision="x", applied_spec={"spec": {}}),
    ]
    plan = planned(state(target, api, web), records)
    actions = {i.key.name: i.action for i in plan.items}
    assert actions == {"t": UNCHANGED, "api": UPDATE, "web": CREATE, "gone": ORPHAN}
    api_item = plan.by_key()[api.key]
    assert [(c.op, c.path) for c in api_item.changes] == [("~", "spec.command[0]")]
    assert not plan.in_sync
    pruned = planned(state(target, api, web), records, prune=True)
    assert pruned.by_key()[gone].action == DELETE
    assert pruned.items[-1].key == gone


def test_rolled_back_revision_is_blocked_until_it_changes_or_forced():
    target = res("Target", "t", {"provider": "bare_metal"})
    api = res("Service", "api", {"target": "t", "command": ["a"]})
    rec = ResourceRecord(api.key, "2", applied_revision="good", applied_spec={},
                         failed_revision=rev(api))
    plan = planned(state(target, api), [rec])
    assert plan.by_key()[api.key].action == BLOCKED
    assert planned(state(target, api), [rec], force=True).by_key()[api.key].action == UPDATE


def test_suspended_and_drift():
    target = res("Target", "t", {"provider": "bare_metal"})
    api = res("Service", "api", {"target": "t", "command": ["a"]})
    rec = ResourceRecord(api.key, "2", applied_revision=rev(api), applied_spec=api.document())
    assert planned(state(target, api), [rec]).by_key()[api.key].action == UNCHANGED
    redeployed = planned(state(target, api), [rec], redeploy=[api.key])
    assert redeployed.by_key()[api.key].action == UPDATE
    rec.suspended = True
    suspended = planned(state(target, api), [rec], redeploy=[api.key])
    assert suspended.by_key()[api.key].action == SUSPENDED


def test_a_plan_is_made_from_resolved_revisions_alone(tmp_path):
    """Planning is pure: revisions are resolved beforehand (reconciler.source.revisions), so a
    plan needs no repository — here the app repo a Service builds from does not even exist."""
    target = res("Target", "t", {"provider": "bare-metal"})
    api = res("Service", "api", {"target": "t", "source": {
        "git": {"repo": str(tmp_path / "no-such-repo"), "ref": "main"}}})
    desired = state(target, api)
    records = [ResourceRecord(api.key, "1", applied_revision="old", applied_spec=api.document())]
    plan = make_plan(desired, records, {target.key: "t1", api.key: "new"})
    by_key = plan.by_key()
    assert (by_key[target.key].action, by_key[target.key].revision) == (CREATE, "t1")
    assert (by_key[api.key].action, by_key[api.key].revision) == (UPDATE, "new")
    assert not (tmp_path / "no-such-repo").exists()
