"""FRAISIER_REVISION, FRAISIER_SERVICE and FRAISIER_ENVIRONMENT on Coolify applications.

They go through the envs API like the spec's envs (plain, literal, never preview). The fake
records each deployment's envs when its job starts, which is what its containers get.
"""

from __future__ import annotations

import asyncio
import json
import time

import pytest

from reconciler.providers import Release, load_provider
from reconciler.providers.coolify import CoolifyConfigError, CoolifyDeployFailed

from .conftest import TOKEN_ENV, service_resource, target_resource
from .fake_coolify import DEPLOY, READ, WRITE, FakeApp, FakeCoolify

SHA_A = "a" * 40
SHA_B = "b" * 40
OURS = ("FRAISIER_ENVIRONMENT", "FRAISIER_REVISION", "FRAISIER_SERVICE")


def release(resource, revision: str) -> Release:
    return Release(resource=resource, revision=revision, config_commit=None)


def env_map(app: FakeApp) -> dict[str, str]:
    return {e.key: e.value for e in app.envs}


def bulk_keys(fake: FakeCoolify) -> list[list[str]]:
    return [
        sorted(item["key"] for item in json.loads(body)["data"])
        for (_, path, _), body in zip(fake.requests, fake.request_bodies)
        if path.endswith("/envs/bulk")
    ]


async def until(predicate, limit: float = 5.0) -> None:
    deadline = time.monotonic() + limit
    while not predicate():
        assert time.monotonic() < deadline, "condition not reached"
        await asyncio.sleep(0.01)


@pytest.mark.timeout(20)
async def test_deploy_sets_plain_literal_non_preview_envs(
    fake: FakeCoolify, make_target, ctx
) -> None:
    app = fake.add_app("api")
    service = service_resource(uuid=app.uuid, gitCommitSha=SHA_A, envs={"MODE": "prod"})
    provider = load_provider(make_target(), ctx)
    try:
        [instance] = await provider.instances(service)
        await provider.deploy(release(service, "rev-1"), instance)
    finally:
        await provider.close()
    assert env_map(app) == {
        "MODE": "prod",
        "FRAISIER_REVISION": "rev-1",
        "FRAISIER_SERVICE": "api",
        "FRAISIER_ENVIRONMENT": "default",
    }
    for env in app.envs:
        if env.key in OURS:
            assert (env.is_literal, env.is_multiline, env.is_shown_once, env.is_preview) == (
                True,
                False,
                False,
                False,
            ), env
    # Written with the spec's envs in the one bulk call, before the deploy was queued.
    assert bulk_keys(fake) == [sorted(["MODE", *OURS])]
    [dep] = fake.history(app.uuid)
    assert dep.envs is not None and dep.envs["FRAISIER_REVISION"] == "rev-1"


@pytest.mark.timeout(20)
async def test_new_revision_of_same_commit_runs_a_fresh_deployment(
    fake: FakeCoolify, make_target, ctx
) -> None:
    """Only the document changed (same commit): the new FRAISIER_REVISION still reaches a new
    container, through a deployment that started after the env was written."""
    app = fake.add_app("api")
    service = service_resource(uuid=app.uuid, gitCommitSha=SHA_A)
    provider = load_provider(make_target(), ctx)
    try:
        [instance] = await provider.instances(service)
        await provider.deploy(release(service, "rev-1"), instance)
        await provider.deploy(release(service, "rev-2"), instance)
        [state] = await provider.observe(service)
    finally:
        await provider.close()
    assert env_map(app)["FRAISIER_REVISION"] == "rev-2"
    assert bulk_keys(fake) == [list(OURS), ["FRAISIER_REVISION"]]
    newest, first = fake.history(app.uuid)
    assert (newest.commit, newest.status) == (SHA_A, "finished")
    assert newest.envs is not None and newest.envs["FRAISIER_REVISION"] == "rev-2"
    assert first.envs is not None and first.envs["FRAISIER_REVISION"] == "rev-1"
    assert state.revision == "rev-2"


@pytest.mark.timeout(20)
async def test_in_flight_deployment_predating_the_new_revision_is_not_taken_for_ours(
    fake: FakeCoolify, make_target, ctx
) -> None:
    """A deployment of the same commit already running (e.g. from the Coolify UI) started with
    the old FRAISIER_REVISION: it ends, then a fresh one carries the new value."""
    app = fake.add_app("api")
    service = service_resource(uuid=app.uuid, gitCommitSha=SHA_A)
    provider = load_provider(make_target(), ctx)
    try:
        [instance] = await provider.instances(service)
        await provider.deploy(release(service, "rev-1"), instance)
        fake.run_time = 0.4
        ui_uuid, created = fake.queue(app)
        assert created
        [ui] = [d for d in fake.deployments if d.uuid == ui_uuid]
        await until(lambda: ui.status == "in_progress")
        await provider.deploy(release(service, "rev-2"), instance)
    finally:
        await provider.close()
    assert fake.calls("POST", "/deploy") == 2
    ours, ui_dep, _ = fake.history(app.uuid)
    assert ui_dep.uuid == ui_uuid and ui_dep.status == "finished"
    assert ui_dep.envs is not None and ui_dep.envs["FRAISIER_REVISION"] == "rev-1"
    assert ours.status == "finished"
    assert ours.envs is not None and ours.envs["FRAISIER_REVISION"] == "rev-2"
    assert fake.duplicates_skipped == 0


@pytest.mark.timeout(20)
async def test_redeploying_the_same_revision_writes_nothing_and_deploys_nothing(
    fake: FakeCoolify, make_target, ctx
) -> None:
    app = fake.add_app("api")
    service = service_resource(uuid=app.uuid, gitCommitSha=SHA_A)
    provider = load_provider(make_target(), ctx)
    try:
        [instance] = await provider.instances(service)
        await provider.deploy(release(service, "rev-1"), instance)
        stamps = {e.key: e.updated_at for e in app.envs}
        await provider.deploy(release(service, "rev-1"), instance)
    finally:
        await provider.close()
    assert fake.calls("PATCH", "/envs/bulk") == 1
    assert fake.calls("POST", "/deploy") == 1
    assert len(fake.history(app.uuid)) == 1
    assert {e.key: e.updated_at for e in app.envs} == stamps


@pytest.mark.timeout(30)
async def test_token_without_read_sensitive_still_skips_unchanged_fraisier_envs(
    fake: FakeCoolify, ctx, monkeypatch
) -> None:
    """Coolify hides every value from such a token. The provider remembers what it wrote, so a
    redeploy of the same revision is still a no-op, while a new revision and the rollback of a
    failed one (whose value was written before its build failed) are written again."""
    monkeypatch.setenv(TOKEN_ENV, fake.add_token({READ, WRITE, DEPLOY}))
    app = fake.add_app("api")
    fake.fail_commits.add(SHA_B)
    good = service_resource(uuid=app.uuid, gitCommitSha=SHA_A)
    bad = service_resource(uuid=app.uuid, gitCommitSha=SHA_B)
    provider = load_provider(target_resource(fake.url), ctx)
    try:
        [instance] = await provider.instances(good)
        await provider.deploy(release(good, "rev-a"), instance)
        await provider.deploy(release(good, "rev-a"), instance)
        assert (fake.calls("PATCH", "/envs/bulk"), fake.calls("POST", "/deploy")) == (1, 1)
        with pytest.raises(CoolifyDeployFailed):
            await provider.deploy(release(bad, "rev-b"), instance)
        assert env_map(app)["FRAISIER_REVISION"] == "rev-b"
        await provider.deploy(release(good, "rev-a"), instance)
    finally:
        await provider.close()
    assert env_map(app)["FRAISIER_REVISION"] == "rev-a"
    assert bulk_keys(fake) == [list(OURS), ["FRAISIER_REVISION"], ["FRAISIER_REVISION"]]
    newest = fake.history(app.uuid)[0]
    assert newest.status == "finished"
    assert newest.envs is not None and newest.envs["FRAISIER_REVISION"] == "rev-a"
    # Not secret: the remembered values are plain JSON in the state directory.
    [written] = list(ctx.state_dir.rglob("*.env.json"))
    assert json.loads(written.read_text())["FRAISIER_REVISION"] == "rev-a"


@pytest.mark.timeout(30)
async def test_rollback_sets_the_old_revision(fake: FakeCoolify, make_target, ctx) -> None:
    app = fake.add_app("api")
    fake.fail_commits.add(SHA_B)
    good = service_resource(uuid=app.uuid, gitCommitSha=SHA_A)
    bad = service_resource(uuid=app.uuid, gitCommitSha=SHA_B)
    provider = load_provider(make_target(), ctx)
    try:
        [instance] = await provider.instances(good)
        await provider.deploy(release(good, "rev-a"), instance)
        with pytest.raises(CoolifyDeployFailed):
            await provider.deploy(release(bad, "rev-b"), instance)
        await provider.deploy(release(good, "rev-a"), instance)
        [state] = await provider.observe(good)
    finally:
        await provider.close()
    assert env_map(app)["FRAISIER_REVISION"] == "rev-a"
    rolled_back, failed, first = fake.history(app.uuid)
    assert [(d.commit, d.status) for d in (rolled_back, failed, first)] == [
        (SHA_A, "finished"),
        (SHA_B, "failed"),
        (SHA_A, "finished"),
    ]
    assert [d.envs and d.envs["FRAISIER_REVISION"] for d in (rolled_back, failed, first)] == [
        "rev-a",
        "rev-b",
        "rev-a",
    ]
    assert state.revision == "rev-a"


@pytest.mark.timeout(20)
async def test_prune_keeps_fraisier_envs_and_remove_deletes_them(
    fake: FakeCoolify, make_target, ctx
) -> None:
    app = fake.add_app("api")
    fake._upsert_env(app, {"key": "MANUAL", "value": "x"})
    # A FRAISIER_ name the spec never declares (a newer Fraisier's, say): not the spec's to prune.
    fake._upsert_env(app, {"key": "FRAISIER_OTHER", "value": "y"})
    service = service_resource(uuid=app.uuid, gitCommitSha=SHA_A, envs={"A": "1"}, pruneEnvs=True)
    provider = load_provider(make_target(), ctx)
    try:
        [instance] = await provider.instances(service)
        await provider.deploy(release(service, "rev-1"), instance)
        after_deploy = env_map(app)
        fake._upsert_env(app, {"key": "LATER", "value": "z"})
        await provider.remove(service, instance)
    finally:
        await provider.close()
    assert after_deploy == {
        "A": "1",
        "FRAISIER_OTHER": "y",
        "FRAISIER_REVISION": "rev-1",
        "FRAISIER_SERVICE": "api",
        "FRAISIER_ENVIRONMENT": "default",
    }
    # remove deletes what this Service put there (its envs and the three), nothing else.
    assert env_map(app) == {"FRAISIER_OTHER": "y", "LATER": "z"}
    assert fake.calls("DELETE", "") == 1 + 1 + 3  # MANUAL by prune; A and the three by remove
    assert list(ctx.state_dir.rglob("*.env.json")) == []


@pytest.mark.timeout(20)
async def test_remove_of_a_service_without_envs_deletes_the_fraisier_envs(
    fake: FakeCoolify, make_target, ctx
) -> None:
    app = fake.add_app("api")
    service = service_resource(uuid=app.uuid, gitCommitSha=SHA_A)
    provider = load_provider(make_target(), ctx)
    try:
        [instance] = await provider.instances(service)
        await provider.deploy(release(service, "rev-1"), instance)
        assert sorted(env_map(app)) == list(OURS)
        await provider.stop(service, instance)
        assert sorted(env_map(app)) == list(OURS)  # stop keeps them: start reuses them
        await provider.remove(service, instance)
    finally:
        await provider.close()
    assert env_map(app) == {}


@pytest.mark.timeout(20)
async def test_fraisier_envs_are_not_drift(fake: FakeCoolify, make_target, ctx) -> None:
    """observe() reports the applied revision; the envs it did not declare in the spec are not
    a difference, and a second provider (fresh process) agrees."""
    app = fake.add_app("api")
    service = service_resource(uuid=app.uuid, gitCommitSha=SHA_A, envs={"MODE": "prod"})
    provider = load_provider(make_target(), ctx)
    try:
        [instance] = await provider.instances(service)
        await provider.deploy(release(service, "rev-2"), instance)
        [state] = await provider.observe(service)
    finally:
        await provider.close()
    fresh = load_provider(make_target(), ctx)
    try:
        [again] = await fresh.observe(service)
    finally:
        await fresh.close()
    assert state.revision == again.revision == "rev-2"
    assert state.facts["pinned_revision"] == SHA_A
    assert "FRAISIER_REVISION" not in repr(state.facts)


@pytest.mark.timeout(20)
async def test_spec_setting_a_reserved_name_is_refused_before_any_write(
    fake: FakeCoolify, make_target, ctx
) -> None:
    app = fake.add_app("api")
    service = service_resource(
        uuid=app.uuid, gitCommitSha=SHA_A, envs={"FRAISIER_REVISION": "mine"}
    )
    provider = load_provider(make_target(), ctx)
    try:
        [instance] = await provider.instances(service)
        with pytest.raises(CoolifyConfigError, match=r"FRAISIER_REVISION.*reserved"):
            await provider.deploy(release(service, "rev-1"), instance)
    finally:
        await provider.close()
    assert app.envs == []
    assert fake.calls("PATCH", "") == 0
    assert fake.calls("POST", "/deploy") == 0
