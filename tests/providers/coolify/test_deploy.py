"""Deploy, rollback, drift and duplicate handling against the contract-validating fake."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any

import pytest

from reconciler.providers import Health, ProviderContext, Release, load_provider
from reconciler.providers.coolify import (
    CoolifyDeployFailed,
    CoolifyDeployTimeout,
    CoolifyProvider,
    CoolifyUnsupported,
)
from reconciler.spec.model import Resource

from .conftest import service_resource
from .fake_coolify import FakeCoolify

SHA_A = "a" * 40
SHA_B = "b" * 40
SHA_C = "c" * 40


def release(resource: Resource, revision: str) -> Release:
    return Release(resource=resource, revision=revision, config_commit="f" * 40)


def provider_for(
    make_target: Callable[..., Resource], ctx: ProviderContext, **overrides: Any
) -> CoolifyProvider:
    provider = load_provider(make_target(**overrides), ctx)
    assert isinstance(provider, CoolifyProvider)
    return provider


def api_calls(fake: FakeCoolify) -> list[tuple[str, str]]:
    return [(m, p.removeprefix("/api/v1")) for m, p, _ in fake.requests]


@pytest.mark.timeout(20)
async def test_deploy_by_commit_pins_then_posts_deploy(fake: FakeCoolify, make_target, ctx) -> None:
    app = fake.add_app("api", fqdn="https://api.example.test,https://www.api.example.test")
    service = service_resource(uuid=app.uuid, gitCommitSha=SHA_A)
    provider = provider_for(make_target, ctx)
    try:
        [instance] = await provider.instances(service)
        assert instance.id == app.uuid
        assert instance.address == "api.example.test"
        assert instance.labels["coolify.name"] == "api"
        await provider.deploy(release(service, "rev-1"), instance)
        [state] = await provider.observe(service)
    finally:
        await provider.close()
    assert app.git_commit_sha == SHA_A
    assert app.running_commit == SHA_A
    # The core's revision is reported back while the pin it wrote is untouched.
    assert state.revision == "rev-1"
    assert state.facts["pinned_revision"] == SHA_A
    assert state.running is True
    assert state.facts["coolify_status"] == "running:healthy"
    assert state.health is Health.HEALTHY
    assert state.facts["last_deployment"]["status"] == "finished"
    calls = api_calls(fake)
    assert ("PATCH", f"/applications/{app.uuid}") in calls
    assert ("POST", "/deploy") in calls
    assert ("GET", "/deploy") not in calls
    # The pin is written before the deploy is queued.
    assert calls.index(("PATCH", f"/applications/{app.uuid}")) < calls.index(("POST", "/deploy"))
    assert [d.commit for d in fake.history(app.uuid)] == [SHA_A]


@pytest.mark.timeout(20)
async def test_full_sha_revision_from_core_is_deployed(fake: FakeCoolify, make_target, ctx) -> None:
    app = fake.add_app("api")
    service = service_resource(uuid=app.uuid)
    provider = provider_for(make_target, ctx)
    try:
        await provider.deploy(release(service, SHA_B), (await provider.instances(service))[0])
        [state] = await provider.observe(service)
    finally:
        await provider.close()
    assert app.running_commit == SHA_B
    assert state.revision == SHA_B


@pytest.mark.timeout(20)
async def test_redeploying_the_active_release_does_nothing(
    fake: FakeCoolify, make_target, ctx
) -> None:
    app = fake.add_app("api")
    service = service_resource(uuid=app.uuid, gitCommitSha=SHA_A)
    provider = provider_for(make_target, ctx)
    try:
        [instance] = await provider.instances(service)
        await provider.deploy(release(service, "rev-1"), instance)
        await provider.deploy(release(service, "rev-1"), instance)
    finally:
        await provider.close()
    assert fake.calls("POST", "/deploy") == 1
    assert len(fake.history(app.uuid)) == 1


@pytest.mark.timeout(20)
async def test_image_tag_deploy(fake: FakeCoolify, make_target, ctx) -> None:
    app = fake.add_image_app("web", "ghcr.io/acme/web", "1.0.0", status="running:healthy")
    service = service_resource(uuid=app.uuid, image={"name": "ghcr.io/acme/web", "tag": "1.1.0"})
    provider = provider_for(make_target, ctx)
    try:
        [instance] = await provider.instances(service)
        await provider.deploy(release(service, "rev-img"), instance)
        [state] = await provider.observe(service)
    finally:
        await provider.close()
    assert app.docker_registry_image_tag == "1.1.0"
    assert app.running_image_tag == "1.1.0"
    assert app.git_commit_sha == "HEAD"  # image apps are never pinned by commit
    assert state.revision == "rev-img"
    assert state.facts["revision_kind"] == "image_tag"
    assert state.facts["image"] == "ghcr.io/acme/web:1.1.0"
    patches = [
        b
        for (m, p, _), b in zip(fake.requests, fake.request_bodies)
        if m == "PATCH" and p.endswith(app.uuid)
    ]
    assert patches == [b'{"docker_registry_image_tag":"1.1.0"}']


@pytest.mark.timeout(20)
async def test_image_redeploy_skips_only_what_really_ran(
    fake: FakeCoolify, make_target, ctx
) -> None:
    app = fake.add_image_app("web", "ghcr.io/acme/web", "1.0.0", status="running:healthy")
    v11 = service_resource(uuid=app.uuid, image={"tag": "1.1.0"})
    v12 = service_resource(uuid=app.uuid, image={"tag": "1.2.0"})
    provider = provider_for(make_target, ctx)
    try:
        [instance] = await provider.instances(v11)
        await provider.deploy(release(v11, "rev-11"), instance)
        await provider.deploy(release(v11, "rev-11"), instance)  # already running: no-op
        assert fake.calls("POST", "/deploy") == 1
        app.docker_registry_image_tag = "1.2.0"  # typed into the UI, never deployed
        await provider.deploy(release(v12, "rev-12"), instance)
    finally:
        await provider.close()
    assert fake.calls("POST", "/deploy") == 2
    assert app.running_image_tag == "1.2.0"


@pytest.mark.timeout(20)
async def test_failed_deployment_raises_with_log_tail(fake: FakeCoolify, make_target, ctx) -> None:
    app = fake.add_app("api")
    fake.fail_commits.add(SHA_B)
    service = service_resource(uuid=app.uuid, gitCommitSha=SHA_B)
    provider = provider_for(make_target, ctx)
    try:
        [instance] = await provider.instances(service)
        with pytest.raises(CoolifyDeployFailed) as caught:
            await provider.deploy(release(service, "rev-bad"), instance)
        [state] = await provider.observe(service)
    finally:
        await provider.close()
    [dep] = fake.history(app.uuid)
    assert dep.status == "failed"
    assert dep.uuid in str(caught.value)
    assert "ended failed" in str(caught.value)
    assert "exit code 1" in str(caught.value)
    assert state.running is False
    assert state.health is Health.UNHEALTHY
    assert state.facts["last_deployment"]["status"] == "failed"


@pytest.mark.timeout(20)
async def test_duplicate_deploy_answer_follows_the_running_deployment(
    fake: FakeCoolify, make_target, ctx
) -> None:
    """POST /deploy queued the deployment but the answer was lost. The provider looks for the
    deployment it may have queued before sending again, finds it and follows it: no second
    request (a forced one would not be skipped as a duplicate), no phantom uuid polled."""
    app = fake.add_app("api")
    fake.deploy_fault_after_queue = 1
    service = service_resource(uuid=app.uuid, gitCommitSha=SHA_A)
    provider = provider_for(make_target, ctx)
    try:
        [instance] = await provider.instances(service)
        await provider.deploy(release(service, "rev-1"), instance)
    finally:
        await provider.close()
    assert fake.calls("POST", "/deploy") == 1
    [dep] = fake.history(app.uuid)
    assert dep.status == "finished"
    polled = {
        p.rsplit("/", 1)[1]
        for m, p in api_calls(fake)
        if m == "GET" and p.startswith("/deployments/") and "/applications/" not in p
    }
    assert polled == {dep.uuid}


@pytest.mark.timeout(20)
async def test_duplicate_answer_resolves_to_the_queued_deployment(
    fake: FakeCoolify, make_target, ctx
) -> None:
    app = fake.add_app("api", git_commit_sha=SHA_A)
    fake.run_time = 0.5
    real_uuid, created = fake.queue(app)
    assert created
    service = service_resource(uuid=app.uuid, gitCommitSha=SHA_A)
    provider = provider_for(make_target, ctx)
    try:
        svc = provider_service(service)
        found = await provider.deployer._trigger(app.uuid, SHA_A, False, svc, [])
    finally:
        await provider.close()
    assert found == real_uuid
    assert len(fake.history(app.uuid)) == 1


def provider_service(resource: Resource):
    from reconciler.providers.coolify.config import ServiceSettings

    return ServiceSettings.from_resource(resource)


@pytest.mark.timeout(20)
async def test_in_flight_deployment_of_same_commit_is_followed(
    fake: FakeCoolify, make_target, ctx
) -> None:
    app = fake.add_app("api", git_commit_sha=SHA_A)
    # The application already has the envs of this revision (an earlier deploy of rev-1 wrote
    # them); without them the in-flight deployment would not carry FRAISIER_REVISION and a
    # fresh one is queued (test_fraisier_env.py).
    for key, value in {
        "FRAISIER_REVISION": "rev-1",
        "FRAISIER_SERVICE": "api",
        "FRAISIER_ENVIRONMENT": "default",
    }.items():
        fake._upsert_env(app, {"key": key, "value": value, "is_literal": True,
                               "is_runtime": True, "is_buildtime": False})
    fake.run_time = 0.3
    real_uuid, _ = fake.queue(app)  # e.g. started from the Coolify UI a moment ago
    service = service_resource(uuid=app.uuid, gitCommitSha=SHA_A)
    provider = provider_for(make_target, ctx)
    try:
        await provider.deploy(release(service, "rev-1"), (await provider.instances(service))[0])
    finally:
        await provider.close()
    assert fake.calls("POST", "/deploy") == 0
    assert fake.calls("PATCH", "/envs/bulk") == 0
    assert [d.uuid for d in fake.history(app.uuid)] == [real_uuid]
    assert app.running_commit == SHA_A


@pytest.mark.timeout(20)
async def test_drift_when_commit_changed_by_hand(fake: FakeCoolify, make_target, ctx) -> None:
    app = fake.add_app("api")
    service = service_resource(uuid=app.uuid, gitCommitSha=SHA_A)
    provider = provider_for(make_target, ctx)
    try:
        [instance] = await provider.instances(service)
        await provider.deploy(release(service, "rev-1"), instance)
        [before] = await provider.observe(service)
        # Someone edits the commit in the Coolify UI.
        app.git_commit_sha = SHA_C
        [drifted] = await provider.observe(service)
        # Re-applying the desired state puts the pin back and redeploys it.
        await provider.deploy(release(service, "rev-1"), instance)
        [healed] = await provider.observe(service)
    finally:
        await provider.close()
    assert before.revision == "rev-1"
    assert drifted.revision == SHA_C != "rev-1"
    assert drifted.facts["pinned_revision"] == SHA_C
    assert healed.revision == "rev-1"
    assert app.git_commit_sha == SHA_A
    assert [d.commit for d in fake.history(app.uuid)] == [SHA_A, SHA_A]


@pytest.mark.timeout(20)
async def test_drift_is_seen_by_a_fresh_provider_without_records(
    fake: FakeCoolify, make_target, ctx, tmp_path
) -> None:
    app = fake.add_app("api", git_commit_sha=SHA_C, status="running:healthy")
    service = service_resource(uuid=app.uuid, gitCommitSha=SHA_A)
    provider = provider_for(make_target, ctx)
    try:
        [state] = await provider.observe(service)
    finally:
        await provider.close()
    assert state.revision == SHA_C


@pytest.mark.timeout(30)
async def test_rollback_to_previous_sha(fake: FakeCoolify, make_target, ctx) -> None:
    """The core rolls back by deploying the previous Release (its recorded document)."""
    app = fake.add_app("api")
    good = service_resource(uuid=app.uuid, gitCommitSha=SHA_A)
    bad = service_resource(uuid=app.uuid, gitCommitSha=SHA_B)
    fake.fail_commits.add(SHA_B)
    provider = provider_for(make_target, ctx)
    try:
        [instance] = await provider.instances(good)
        await provider.deploy(release(good, "rev-a"), instance)
        with pytest.raises(CoolifyDeployFailed):
            await provider.deploy(release(bad, "rev-b"), instance)
        [during] = await provider.observe(bad)
        await provider.deploy(release(good, "rev-a"), instance)
        [after] = await provider.observe(good)
    finally:
        await provider.close()
    assert during.revision == SHA_B  # pinned to the bad commit, not what the core recorded
    assert app.git_commit_sha == SHA_A
    assert app.running_commit == SHA_A
    assert after.revision == "rev-a"
    assert after.running is True
    assert [(d.commit, d.status) for d in fake.history(app.uuid)] == [
        (SHA_A, "finished"),
        (SHA_B, "failed"),
        (SHA_A, "finished"),
    ]


@pytest.mark.timeout(20)
async def test_deploy_timeout_cancels_the_deployment(fake: FakeCoolify, make_target, ctx) -> None:
    app = fake.add_app("api")
    fake.run_time = 30
    service = service_resource(uuid=app.uuid, gitCommitSha=SHA_A, deployTimeout="400ms")
    provider = provider_for(make_target, ctx)
    started = time.monotonic()
    try:
        with pytest.raises(CoolifyDeployTimeout) as caught:
            await provider.deploy(release(service, "rev-1"), (await provider.instances(service))[0])
    finally:
        await provider.close()
    assert time.monotonic() - started < 5
    [dep] = fake.history(app.uuid)
    assert dep.status == "cancelled-by-user"
    assert "cancelled" in str(caught.value)


@pytest.mark.timeout(20)
async def test_lookup_by_name_and_tag_is_cached(fake: FakeCoolify, make_target, ctx) -> None:
    app = fake.add_app("api", tags=["prod"])
    fake.add_app("api", tags=["staging"])
    fake.add_app("worker", tags=["prod"])
    provider = provider_for(make_target, ctx)
    try:
        by_both = service_resource(name="api", tag="prod")
        [first] = await provider.instances(by_both)
        [second] = await provider.instances(by_both)
        ambiguous = service_resource(name="api")
        from reconciler.providers.coolify import CoolifyConfigError, CoolifyNotFound

        with pytest.raises(CoolifyConfigError, match="2 Coolify applications match"):
            await provider.instances(ambiguous)
        with pytest.raises(CoolifyNotFound):
            await provider.instances(service_resource(name="nope"))
    finally:
        await provider.close()
    assert first.id == second.id == app.uuid
    assert first.address == ""  # no FQDN: no address to probe
    list_calls = [q for m, p, q in fake.requests if m == "GET" and p.endswith("/applications")]
    assert list_calls[0] == "tag=prod"
    assert len(list_calls) == 3  # cached for by_both; one each for the two failing lookups


@pytest.mark.timeout(20)
async def test_stop_start_restart_use_post(fake: FakeCoolify, make_target, ctx) -> None:
    app = fake.add_app("api")
    service = service_resource(uuid=app.uuid, gitCommitSha=SHA_A)
    provider = provider_for(make_target, ctx)
    try:
        [instance] = await provider.instances(service)
        await provider.deploy(release(service, "rev-1"), instance)
        await provider.stop(service, instance)
        assert app.status == "exited"
        await provider.start(service, instance)
        assert app.status == "running:healthy"
        await provider.restart(service, instance)
    finally:
        await provider.close()
    calls = api_calls(fake)
    for action in ("stop", "start", "restart"):
        assert ("POST", f"/applications/{app.uuid}/{action}") in calls
        assert ("GET", f"/applications/{app.uuid}/{action}") not in calls
    assert fake.history(app.uuid)[0].restart_only is True


@pytest.mark.timeout(20)
async def test_health_facts_reflect_coolify_status(fake: FakeCoolify, make_target, ctx) -> None:
    fake.status_after_deploy = "running:unhealthy"
    app = fake.add_app("api")
    service = service_resource(uuid=app.uuid, gitCommitSha=SHA_A)
    provider = provider_for(make_target, ctx)
    try:
        await provider.deploy(release(service, "rev-1"), (await provider.instances(service))[0])
        [unhealthy] = await provider.observe(service)
        app.status = "running:unknown"
        [unknown] = await provider.observe(service)
    finally:
        await provider.close()
    assert unhealthy.running is True
    assert unhealthy.health is Health.UNHEALTHY
    assert unhealthy.facts["health"] == "unhealthy"
    assert unknown.health is Health.UNKNOWN


@pytest.mark.timeout(20)
async def test_logs_of_latest_deployment(fake: FakeCoolify, make_target, ctx, monkeypatch) -> None:
    app = fake.add_app("api")
    service = service_resource(uuid=app.uuid, gitCommitSha=SHA_A)
    provider = provider_for(make_target, ctx)
    try:
        [instance] = await provider.instances(service)
        await provider.deploy(release(service, "rev-1"), instance)
        lines = await provider.logs(service, instance, tail=1)
        all_lines = await provider.logs(service, instance)
    finally:
        await provider.close()
    assert lines == ["Rolling update completed."]
    assert all_lines[0].startswith("Starting deployment of api")
    # A read-only token (no read:sensitive) gets no logs, and is told why.
    from .conftest import TOKEN_ENV

    monkeypatch.setenv(TOKEN_ENV, fake.add_token({"read"}))
    reader = provider_for(make_target, ctx)
    try:
        hidden = await reader.logs(service, instance)
    finally:
        await reader.close()
    assert len(hidden) == 1 and "read:sensitive" in hidden[0]


@pytest.mark.timeout(10)
async def test_jobs_are_refused_clearly(fake: FakeCoolify, make_target, ctx) -> None:
    app = fake.add_app("api")
    job = service_resource(uuid=app.uuid)
    provider = provider_for(make_target, ctx)
    try:
        with pytest.raises(CoolifyUnsupported, match="Jobs and Schedules"):
            await provider.run(release(job, "r"), (await provider.instances(job))[0])
    finally:
        await provider.close()


@pytest.mark.timeout(20)
async def test_concurrent_deploys_of_two_applications(fake: FakeCoolify, make_target, ctx) -> None:
    apps = [fake.add_app(f"svc{i}") for i in range(3)]
    services = [
        service_resource(f"svc{i}", uuid=a.uuid, gitCommitSha=SHA_A) for i, a in enumerate(apps)
    ]
    provider = provider_for(make_target, ctx)
    try:
        instances = [(await provider.instances(s))[0] for s in services]
        await asyncio.gather(
            *(provider.deploy(release(s, "r"), i) for s, i in zip(services, instances))
        )
    finally:
        await provider.close()
    assert all(a.running_commit == SHA_A for a in apps)


@pytest.mark.timeout(20)
async def test_unpinned_service_deploys_branch_head(fake: FakeCoolify, make_target, ctx) -> None:
    """No gitCommitSha and a core revision that is not a commit: Coolify builds HEAD."""
    app = fake.add_app("api", git_commit_sha=SHA_A)
    service = service_resource(uuid=app.uuid)
    provider = provider_for(make_target, ctx)
    try:
        await provider.deploy(
            release(service, "3f2a9c1b7d4e"), (await provider.instances(service))[0]
        )
        [state] = await provider.observe(service)
    finally:
        await provider.close()
    assert app.git_commit_sha == "HEAD"
    assert [d.commit for d in fake.history(app.uuid)] == ["HEAD"]
    assert state.revision == "3f2a9c1b7d4e"
