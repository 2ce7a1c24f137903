"""The deployment journal: creation, transitions, events, steps and queries."""

from __future__ import annotations

import itertools

import pytest

from reconciler.errors import NotFound, StoreError
from reconciler.spec.model import ResourceKey
from reconciler.state.sqlite import SQLiteStore
from reconciler.state.store import (
    CANCELLED,
    DEPLOYMENT_STATUSES,
    FAILED,
    FINAL_STATUSES,
    IN_PROGRESS,
    PENDING,
    ROLLBACK_FAILED,
    ROLLED_BACK,
    SUCCEEDED,
    TRANSITIONS,
    DeploymentRecord,
    TransitionError,
)


async def new_deployment(
    store: SQLiteStore, key: ResourceKey, to: str = "r2", trigger: str = "poll"
) -> DeploymentRecord:
    return await store.create_deployment(
        key,
        from_revision="r1",
        to_revision=to,
        config_commit="c2",
        trigger=trigger,
        strategy="rolling",
        spec={"spec": {"image": "api:2"}},
    )


# Every path from pending through TRANSITIONS, so each legal edge is exercised in context.
def legal_paths() -> list[tuple[str, ...]]:
    paths: list[tuple[str, ...]] = []

    def walk(path: tuple[str, ...]) -> None:
        paths.append(path)
        for nxt in sorted(TRANSITIONS.get(path[-1], ())):
            walk((*path, nxt))

    walk((PENDING,))
    return [p for p in paths if len(p) > 1]


ILLEGAL = [
    (a, b)
    for a, b in itertools.product(DEPLOYMENT_STATUSES, DEPLOYMENT_STATUSES)
    if b not in TRANSITIONS.get(a, frozenset())
]


async def drive(store: SQLiteStore, deployment_id: str, path: tuple[str, ...]) -> None:
    for status in path[1:]:
        await store.transition(deployment_id, status, message=f"to {status}")


async def test_create_deployment(store: SQLiteStore, api: ResourceKey) -> None:
    await store.record_desired(api, revision="r2", spec_hash="h", spec={}, config_commit="c2")
    d = await new_deployment(store, api)
    assert d.status == PENDING
    assert d.identifier == "prod/Service/api#1"
    assert d.key == api
    assert (d.from_revision, d.to_revision, d.config_commit) == ("r1", "r2", "c2")
    assert (d.trigger, d.strategy) == ("poll", "rolling")
    assert d.spec == {"spec": {"image": "api:2"}}
    assert d.created_at is not None and d.started_at is None and d.finished_at is None
    assert [e.status for e in d.events] == [PENDING]
    assert d.steps == []
    assert await store.get_deployment(d.id) == d
    assert await store.get_deployment(d.identifier) == d


async def test_sequence_numbers_are_per_resource(store: SQLiteStore, api: ResourceKey) -> None:
    other = ResourceKey("prod", "Service", "worker")
    idents = [
        (await new_deployment(store, api)).identifier,
        (await new_deployment(store, other)).identifier,
        (await new_deployment(store, api)).identifier,
        (await new_deployment(store, api)).identifier,
        (await new_deployment(store, other)).identifier,
    ]
    assert idents == [
        "prod/Service/api#1",
        "prod/Service/worker#1",
        "prod/Service/api#2",
        "prod/Service/api#3",
        "prod/Service/worker#2",
    ]


async def test_create_deployment_for_unseen_resource_creates_it(store: SQLiteStore) -> None:
    key = ResourceKey("default", "Job", "migrate")
    d = await new_deployment(store, key)
    assert d.identifier == "default/Job/migrate#1"
    record = await store.get_resource(key)
    assert record is not None and record.desired_revision is None


@pytest.mark.parametrize("path", legal_paths(), ids=lambda p: ">".join(p))
async def test_every_legal_transition(
    store: SQLiteStore, api: ResourceKey, path: tuple[str, ...]
) -> None:
    d = await new_deployment(store, api)
    await drive(store, d.id, path)
    after = await store.get_deployment(d.id)
    assert after is not None
    assert after.status == path[-1]
    assert [e.status for e in after.events] == list(path)
    assert [e.message for e in after.events] == [None] + [f"to {s}" for s in path[1:]]
    ats = [e.at for e in after.events]
    assert ats == sorted(ats)
    if IN_PROGRESS in path:
        assert after.started_at is not None
        assert after.started_at == after.events[path.index(IN_PROGRESS)].at
    else:
        assert after.started_at is None
    if path[-1] in FINAL_STATUSES:
        assert after.finished_at == after.events[-1].at
    else:
        assert after.finished_at is None


def test_legal_paths_cover_every_edge() -> None:
    edges = {(p[i], p[i + 1]) for p in legal_paths() for i in range(len(p) - 1)}
    assert edges == {(a, b) for a, bs in TRANSITIONS.items() for b in bs}


async def path_to(status: str) -> tuple[str, ...]:
    for path in legal_paths():
        if path[-1] == status:
            return path
    return (PENDING,)


@pytest.mark.parametrize(("current", "target"), ILLEGAL, ids=lambda s: s)
async def test_illegal_transition_is_refused(
    store: SQLiteStore, api: ResourceKey, current: str, target: str
) -> None:
    d = await new_deployment(store, api)
    await drive(store, d.id, await path_to(current))
    before = await store.get_deployment(d.id)
    assert before is not None and before.status == current
    with pytest.raises(TransitionError, match=f"{current} -> {target}"):
        await store.transition(d.id, target, message="nope")
    after = await store.get_deployment(d.id)
    assert after == before  # nothing changed, no event logged


async def test_unknown_status_and_unknown_deployment(store: SQLiteStore, api: ResourceKey) -> None:
    d = await new_deployment(store, api)
    with pytest.raises(TransitionError):
        await store.transition(d.id, "done")
    with pytest.raises(NotFound):
        await store.transition("00000000-0000-0000-0000-000000000000", IN_PROGRESS)
    assert await store.get_deployment("00000000-0000-0000-0000-000000000000") is None


async def test_transition_stores_error_output_and_exit_code(
    store: SQLiteStore, api: ResourceKey
) -> None:
    d = await new_deployment(store, api)
    await store.transition(d.id, IN_PROGRESS)
    await store.transition(
        d.id, FAILED, message="health gate", error="503 from /healthz", output="log…",
        exit_code=3,
    )
    await store.transition(d.id, ROLLED_BACK, message="back to r1")
    after = await store.get_deployment(d.id)
    assert after is not None
    # kept when a later transition does not pass them
    assert (after.error, after.output, after.exit_code) == ("503 from /healthz", "log…", 3)
    assert after.status == ROLLED_BACK
    assert [e.message for e in after.events] == [None, None, "health gate", "back to r1"]


async def test_exit_code_zero_is_stored(store: SQLiteStore, api: ResourceKey) -> None:
    d = await new_deployment(store, api)
    await store.transition(d.id, IN_PROGRESS)
    await store.transition(d.id, SUCCEEDED, exit_code=0, output="")
    after = await store.get_deployment(d.id)
    assert after is not None and after.exit_code == 0 and after.output == ""


async def test_steps_journal(store: SQLiteStore, api: ResourceKey) -> None:
    d = await new_deployment(store, api)
    await store.transition(d.id, IN_PROGRESS)
    s1 = await store.start_step(d.id, "upload", "host-a", detail="release r2")
    s2 = await store.start_step(d.id, "restart", "host-a")
    await store.finish_step(s1, "succeeded")
    await store.finish_step(s2, "failed", detail="exit status 1")
    s3 = await store.start_step(d.id, "restart", "host-b")
    after = await store.get_deployment(d.id)
    assert after is not None
    steps = after.steps
    assert [(s.id, s.seq, s.action, s.instance, s.status, s.detail) for s in steps] == [
        (s1, 1, "upload", "host-a", "succeeded", "release r2"),
        (s2, 2, "restart", "host-a", "failed", "exit status 1"),
        (s3, 3, "restart", "host-b", "started", None),
    ]
    assert steps[0].finished_at is not None and steps[0].finished_at >= steps[0].started_at
    assert steps[2].finished_at is None


async def test_step_rules(store: SQLiteStore, api: ResourceKey) -> None:
    d = await new_deployment(store, api)
    step = await store.start_step(d.id, "upload", "host-a")
    with pytest.raises(StoreError):
        await store.finish_step(step, "started")
    with pytest.raises(StoreError):
        await store.finish_step(step, "ok")
    await store.finish_step(step, "succeeded")
    with pytest.raises(StoreError, match="already finished"):
        await store.finish_step(step, "failed")
    with pytest.raises(StoreError, match="already finished"):
        await store.finish_step(step, "interrupted")
    with pytest.raises(NotFound):
        await store.finish_step("no-such-step", "succeeded")
    with pytest.raises(NotFound):
        await store.start_step("no-such-deployment", "upload", "host-a")


async def test_steps_may_follow_a_failure(store: SQLiteStore, api: ResourceKey) -> None:
    # rollback actions are journalled on the failed deployment before it becomes rolled_back
    d = await new_deployment(store, api)
    await store.transition(d.id, IN_PROGRESS)
    await store.transition(d.id, FAILED)
    step = await store.start_step(d.id, "rollback", "host-a")
    await store.finish_step(step, "succeeded")
    await store.transition(d.id, ROLLED_BACK)
    after = await store.get_deployment(d.id)
    assert after is not None and [s.action for s in after.steps] == ["rollback"]


async def test_list_deployments_newest_first_with_events_and_steps(
    store: SQLiteStore, api: ResourceKey
) -> None:
    other = ResourceKey("prod", "Job", "etl")
    d1 = await new_deployment(store, api, to="r1")
    d2 = await new_deployment(store, other, to="r1")
    d3 = await new_deployment(store, api, to="r2")
    await store.transition(d3.id, IN_PROGRESS)
    await store.start_step(d3.id, "upload", "h")

    everything = await store.list_deployments()
    assert [d.id for d in everything] == [d3.id, d2.id, d1.id]
    mine = await store.list_deployments(api)
    assert [d.id for d in mine] == [d3.id, d1.id]
    assert [e.status for e in mine[0].events] == [PENDING, IN_PROGRESS]
    assert [s.action for s in mine[0].steps] == ["upload"]
    assert [e.status for e in mine[1].events] == [PENDING]
    assert [d.id for d in await store.list_deployments(limit=2)] == [d3.id, d2.id]
    assert len(await store.list_deployments(limit=0)) == 3
    assert await store.list_deployments(ResourceKey("x", "Service", "none")) == []


async def test_unfinished_deployments_oldest_first(store: SQLiteStore, api: ResourceKey) -> None:
    other = ResourceKey("prod", "Job", "etl")
    a = await new_deployment(store, api)
    b = await new_deployment(store, other)
    c = await new_deployment(store, api)
    done = await new_deployment(store, other)
    await store.transition(b.id, IN_PROGRESS)
    await store.transition(done.id, CANCELLED)
    await store.transition(c.id, IN_PROGRESS)
    await store.transition(c.id, FAILED)
    unfinished = await store.unfinished_deployments()
    assert [(d.id, d.status) for d in unfinished] == [(a.id, PENDING), (b.id, IN_PROGRESS)]
    assert [e.status for e in unfinished[1].events] == [PENDING, IN_PROGRESS]


async def test_last_good(store: SQLiteStore, api: ResourceKey) -> None:
    assert await store.last_good(api) is None
    good1 = await new_deployment(store, api, to="r1")
    await drive(store, good1.id, (PENDING, IN_PROGRESS, SUCCEEDED))
    good2 = await new_deployment(store, api, to="r2")
    await drive(store, good2.id, (PENDING, IN_PROGRESS, SUCCEEDED))
    bad = await new_deployment(store, api, to="r3")
    await drive(store, bad.id, (PENDING, IN_PROGRESS, FAILED, ROLLED_BACK))
    worse = await new_deployment(store, api, to="r4")
    await drive(store, worse.id, (PENDING, IN_PROGRESS, ROLLBACK_FAILED))
    other = ResourceKey("prod", "Service", "other")
    other_good = await new_deployment(store, other, to="r9")
    await drive(store, other_good.id, (PENDING, IN_PROGRESS, SUCCEEDED))

    last = await store.last_good(api)
    assert last is not None
    assert (last.id, last.to_revision, last.status) == (good2.id, "r2", SUCCEEDED)
    assert [e.status for e in last.events] == [PENDING, IN_PROGRESS, SUCCEEDED]


async def test_unicode_and_large_deployment_values(store: SQLiteStore) -> None:
    key = ResourceKey("prod", "Service", "café-☕")
    output = ("línea ✓ 🚀\n" * 80_000)[:1_100_000]
    spec = {"env": {"GREETING": "grüß dich"}, "big": "y" * 1_048_576}
    d = await store.create_deployment(
        key, from_revision=None, to_revision="ré-1", config_commit=None, trigger="cli",
        strategy="recreate", spec=spec,
    )
    await store.transition(d.id, IN_PROGRESS, message="démarrage")
    step = await store.start_step(d.id, "exécuter", "hôte-1", detail="détail " * 1000)
    await store.finish_step(step, "succeeded")
    await store.transition(d.id, SUCCEEDED, output=output, exit_code=0)
    after = await store.get_deployment(d.id)
    assert after is not None
    assert after.identifier == "prod/Service/café-☕#1"
    assert after.output == output
    assert after.spec == spec
    assert after.events[1].message == "démarrage"
    assert after.steps[0].action == "exécuter"


async def test_crash_recovery_closes_open_steps_as_interrupted(
    store: SQLiteStore, api: ResourceKey
) -> None:
    d = await new_deployment(store, api)
    await store.transition(d.id, IN_PROGRESS)
    done = await store.start_step(d.id, "upload", "h1")
    await store.finish_step(done, "succeeded")
    await store.start_step(d.id, "restart", "h1")
    # what a restarted daemon does with what the crash left open
    (left,) = await store.unfinished_deployments()
    open_steps = [s for s in left.steps if s.finished_at is None]
    assert [s.action for s in open_steps] == ["restart"]
    for step in open_steps:
        await store.finish_step(step.id, "interrupted", "reconciler stopped")
    await store.transition(left.id, CANCELLED, message="interrupted during restart")
    assert await store.unfinished_deployments() == []
    after = await store.get_deployment(d.id)
    assert after is not None
    assert [(s.action, s.status, s.detail) for s in after.steps] == [
        ("upload", "succeeded", None), ("restart", "interrupted", "reconciler stopped"),
    ]
    assert after.steps[1].finished_at is not None
