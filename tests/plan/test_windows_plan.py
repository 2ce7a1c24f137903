"""Sync windows in the plan: changes outside their windows become DEFERRED (fixed ``now``)."""

from __future__ import annotations

from collections.abc import Iterable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from reconciler.plan.planner import (
    CREATE,
    DEFERRED,
    DELETE,
    ORPHAN,
    SUSPENDED,
    UNCHANGED,
    UPDATE,
    Plan,
    make_plan,
)
from reconciler.plan.windows import ignoring_windows
from reconciler.spec.model import DesiredState, Resource, ResourceKey, spec_hash
from reconciler.state.store import ResourceRecord

NOON = datetime(2026, 11, 26, 12, 0, tzinfo=UTC)  # a Thursday
NIGHT = datetime(2026, 11, 27, 2, 30, tzinfo=UTC)
NIGHTLY = {"kind": "allow", "schedule": "0 2 * * *", "duration": "1h"}
FREEZE = {"kind": "deny", "schedule": "0 2 * * *", "duration": "10m", "timezone": "UTC"}


def res(kind: str, name: str, spec: dict[str, Any]) -> Resource:
    r = Resource(ResourceKey("prod", kind, name), {}, spec, "f.yaml")
    r.hash = spec_hash(r.document())
    return r


def state(*rs: Resource) -> DesiredState:
    return DesiredState({r.key: r for r in rs}, commit="c" * 40)


def rev(r: Resource) -> str:
    return r.hash[:12]


def planned(desired: DesiredState, records: Iterable[ResourceRecord], **kw: Any) -> Plan:
    """``make_plan`` with every revision resolved first, as the engine does."""
    return make_plan(desired, records, {k: rev(r) for k, r in desired.resources.items()}, **kw)


def applied(r: Resource, revision: str | None = None, **kw: Any) -> ResourceRecord:
    return ResourceRecord(r.key, r.key.name, applied_revision=revision or rev(r),
                          applied_spec=r.document(), **kw)


def actions(plan: Any) -> dict[str, str]:
    return {i.key.name: i.action for i in plan.items}


def test_target_window_defers_every_change_on_it_until_it_opens() -> None:
    target = res("Target", "t", {"provider": "bare_metal", "syncWindows": [NIGHTLY]})
    api = res("Service", "api", {"target": "t", "command": ["a"]})
    web = res("Service", "web", {"target": "t", "command": ["w"]})
    same = res("Service", "same", {"target": "t", "command": ["s"]})
    old_api = ResourceRecord(api.key, "api", applied_revision="old", applied_spec={
        **api.document(), "spec": {"target": "t", "command": ["old"]}})
    records = [applied(target), old_api, applied(same)]
    plan = planned(state(target, api, web, same), records, now=NOON)
    assert actions(plan) == {"t": UNCHANGED, "api": DEFERRED, "web": DEFERRED, "same": UNCHANGED}
    item = plan.by_key()[api.key]
    assert item.reason == ("outside sync window: next opens 2026-11-27T02:00:00+00:00 "
                           "(allow 0 2 * * * for 1h, UTC)")
    assert [c.path for c in item.changes] == ["spec.command[0]"]  # still shows what changes
    assert not plan.in_sync
    assert plan.counts() == {UNCHANGED: 2, DEFERRED: 2}
    assert item.opens_at == datetime(2026, 11, 27, 2, 0, tzinfo=UTC)
    listed = {r["name"]: r for r in plan.to_json()["resources"]}
    assert listed["api"]["action"] == DEFERRED
    assert listed["api"]["opensAt"] == "2026-11-27T02:00:00+00:00"
    assert "opensAt" not in listed["same"]

    inside = planned(state(target, api, web, same), records, now=NIGHT)
    assert actions(inside) == {"t": UNCHANGED, "api": UPDATE, "web": CREATE, "same": UNCHANGED}


def test_resource_windows_merge_with_the_targets_and_deny_wins() -> None:
    target = res("Target", "t", {"provider": "bare_metal", "syncWindows": [NIGHTLY]})
    frozen = res("Service", "frozen", {"target": "t", "command": ["f"], "syncWindows": [FREEZE]})
    free = res("Service", "free", {"target": "t", "command": ["x"]})
    plan = planned(state(target, frozen, free), [applied(target)],
                     now=datetime(2026, 11, 27, 2, 5, tzinfo=UTC))
    assert actions(plan) == {"t": UNCHANGED, "frozen": DEFERRED, "free": CREATE}
    assert "deny 0 2 * * * for 10m, UTC is active" in plan.by_key()[frozen.key].reason
    assert "next opens 2026-11-27T02:10:00+00:00" in plan.by_key()[frozen.key].reason


def test_a_change_to_the_target_itself_is_deferred_by_its_windows() -> None:
    target = res("Target", "t", {"provider": "bare_metal", "syncWindows": [NIGHTLY]})
    plan = planned(state(target), [], now=NOON)
    assert actions(plan) == {"t": DEFERRED}


def test_windows_only_apply_where_they_are_written() -> None:
    guarded = res("Target", "guarded", {"provider": "bare_metal", "syncWindows": [NIGHTLY]})
    open_ = res("Target", "open", {"provider": "bare_metal"})
    a = res("Service", "a", {"target": "guarded", "command": ["a"]})
    b = res("Service", "b", {"target": "open", "command": ["b"]})
    plan = planned(state(guarded, open_, a, b), [applied(guarded), applied(open_)],
                     now=NOON)
    assert actions(plan) == {"guarded": UNCHANGED, "open": UNCHANGED, "a": DEFERRED, "b": CREATE}


def test_ignore_windows_plans_as_if_there_were_none() -> None:
    target = res("Target", "t", {"provider": "bare_metal", "syncWindows": [NIGHTLY]})
    api = res("Service", "api", {"target": "t", "command": ["a"]})
    desired = state(target, api)
    assert actions(planned(desired, [], now=NOON, ignore_windows=True)) == {
        "t": CREATE, "api": CREATE}
    with ignoring_windows():  # what `reconciler apply --ignore-windows` sets for the pass
        assert actions(planned(desired, [], now=NOON)) == {"t": CREATE, "api": CREATE}
    assert actions(planned(desired, [], now=NOON)) == {"t": DEFERRED, "api": DEFERRED}


def test_suspended_blocked_and_orphans_are_not_deferred() -> None:
    target = res("Target", "t", {"provider": "bare_metal", "syncWindows": [NIGHTLY]})
    paused = res("Service", "paused", {"target": "t", "command": ["p"]})
    gone = ResourceKey("prod", "Service", "gone")
    records = [applied(target), applied(paused, "old", suspended=True),
               ResourceRecord(gone, "g", applied_revision="x",
                              applied_spec={"spec": {"target": "t"}})]
    plan = planned(state(target, paused), records, now=NOON)
    assert actions(plan) == {"t": UNCHANGED, "paused": SUSPENDED, "gone": ORPHAN}


def test_deletes_are_deferred_by_the_windows_of_their_recorded_target() -> None:
    target = res("Target", "t", {"provider": "bare_metal", "syncWindows": [NIGHTLY]})
    other = res("Target", "o", {"provider": "bare_metal"})
    on_t = ResourceRecord(ResourceKey("prod", "Service", "on-t"), "1", applied_revision="x",
                          applied_spec={"kind": "Service", "spec": {"target": "t"}})
    on_o = ResourceRecord(ResourceKey("prod", "Service", "on-o"), "2", applied_revision="x",
                          applied_spec={"kind": "Service", "spec": {"target": "o"}})
    records = [applied(target), applied(other), on_t, on_o]
    plan = planned(state(target, other), records, prune=True, now=NOON)
    assert actions(plan) == {"t": UNCHANGED, "o": UNCHANGED, "on-t": DEFERRED, "on-o": DELETE}
    assert planned(state(target, other), records, prune=True,
                     now=NIGHT).by_key()[on_t.key].action == DELETE


def test_delete_without_a_recorded_spec_is_guarded_by_its_environments_windows() -> None:
    # The engine plans from light records (no specs): the Target is not known, so every Target
    # window of the environment applies; deleting is never less guarded than deploying.
    target = res("Target", "t", {"provider": "bare_metal", "syncWindows": [NIGHTLY]})
    light = ResourceRecord(ResourceKey("prod", "Service", "gone"), "1", applied_revision="x")
    elsewhere = ResourceRecord(ResourceKey("staging", "Service", "gone"), "2",
                               applied_revision="x")
    plan = planned(state(target), [applied(target), light, elsewhere], prune=True,
                     now=NOON)
    assert plan.by_key()[light.key].action == DEFERRED
    assert plan.by_key()[elsewhere.key].action == DELETE


def test_now_defaults_to_the_current_time() -> None:
    always_denied = {"kind": "deny", "schedule": "* * * * *", "duration": "2m"}
    target = res("Target", "t", {"provider": "bare_metal", "syncWindows": [always_denied]})
    plan = planned(state(target), [])
    assert actions(plan) == {"t": DEFERRED}
    assert plan.items[0].reason.startswith("outside sync window: no opening found")
    assert plan.items[0].opens_at is None
    assert plan.to_json()["resources"][0]["opensAt"] is None


def test_editing_sync_windows_is_not_a_new_revision(tmp_path: Path) -> None:
    """Windows say when a change may go out, not what runs: the revision ignores them."""
    from reconciler.rollout.engine import Reconciler

    def doc(kind: str, name: str, spec: dict) -> Resource:
        res = Resource(ResourceKey("prod", kind, name), {}, spec, "f.yaml")
        res.hash = spec_hash(res.document())
        return res

    window = [{"kind": "deny", "schedule": "0 0 * * *", "duration": "1h"}]
    engine = Reconciler(None, state_dir=tmp_path)  # type: ignore[arg-type]
    revisions = []
    for windows in (None, window, [{**window[0], "duration": "2h"}]):
        target_spec = {"provider": "bare_metal"}
        service_spec = {"target": "t", "command": ["true"]}
        if windows:
            target_spec["syncWindows"] = windows
            service_spec["syncWindows"] = windows
        target, svc = doc("Target", "t", target_spec), doc("Service", "a", service_spec)
        desired = DesiredState({target.key: target, svc.key: svc})
        revisions.append(engine.revision_of(svc, desired))
    assert len(set(revisions)) == 1
