"""Behaviour read from Coolify 4.3.11's own source (no Coolify server runs here), each against
the fake that models it: request validation of its controllers, the build-skip rule of
ApplicationDeploymentJob, POST /applications/{uuid}/rollback, forced deploys never skipped as
duplicates, and `logs` only in answers to a token with read:sensitive."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import httpx
import pytest

from reconciler.providers import ProviderContext, Release, load_provider
from reconciler.providers.coolify import CoolifyDeployFailed, CoolifyProvider
from reconciler.spec.model import Resource

from .conftest import service_resource
from .fake_coolify import READ, FakeCoolify

SHA_A = "a" * 40
SHA_B = "b" * 40
STATUS_TOKEN_ENV = "FRAISIER_TEST_COOLIFY_STATUS_TOKEN"


def release(resource: Resource, revision: str) -> Release:
    return Release(resource=resource, revision=revision, config_commit="f" * 40)


def provider_for(
    make_target: Callable[..., Resource], ctx: ProviderContext, **overrides: Any
) -> CoolifyProvider:
    provider = load_provider(make_target(**overrides), ctx)
    assert isinstance(provider, CoolifyProvider)
    return provider


@pytest.mark.timeout(20)
async def test_fake_refuses_what_coolify_refuses(fake: FakeCoolify, token: str) -> None:
    """The OpenAPI spec only says `git_commit_sha: string`; Coolify's update_by_uuid also applies
    sharedDataApplications()' regex and create_bulk_envs its boolean rules, and rollback_by_uuid
    checks `commit` with validateGitRef. The fake answers as Coolify does."""
    app = fake.add_app("api", git_commit_sha=SHA_A)
    headers = {"Authorization": f"Bearer {token}", "Accept": "application/json"}
    async with httpx.AsyncClient(base_url=f"{fake.url}/api/v1", headers=headers) as http:
        bad_sha = await http.patch(f"/applications/{app.uuid}",
                                   json={"git_commit_sha": "not a sha !!"})
        bad_tag = await http.patch(f"/applications/{app.uuid}",
                                   json={"docker_registry_image_tag": "has space"})
        bad_flag = await http.patch(f"/applications/{app.uuid}/envs/bulk",
                                    json={"data": [{"key": "A", "value": "1",
                                                    "is_buildtime": "sometimes"}]})
        flag_commit = await http.post(f"/applications/{app.uuid}/rollback",
                                      json={"commit": "--upload-pack=touch /tmp/x"})
        good = await http.patch(f"/applications/{app.uuid}", json={"git_commit_sha": SHA_B})
    assert bad_sha.status_code == 422
    assert bad_sha.json() == {"message": "Validation failed.", "errors": {
        "git_commit_sha": ["The git commit sha field format is invalid."]}}
    assert bad_tag.status_code == 422
    assert list(bad_tag.json()["errors"]) == ["docker_registry_image_tag"]
    assert bad_flag.status_code == 422
    assert bad_flag.json()["errors"] == {
        "is_buildtime": ["The is buildtime field must be true or false."]}
    assert flag_commit.status_code == 422
    assert flag_commit.json()["errors"] == {
        "commit": ["Invalid rollback commit: must not start with a hyphen."]}
    assert fake.history(app.uuid) == []  # nothing was queued
    assert good.status_code == 200
    assert app.git_commit_sha == SHA_B  # refused requests changed nothing before this one


@pytest.mark.timeout(30)
async def test_fraisier_envs_are_runtime_only_so_the_image_is_reused(
    fake: FakeCoolify, make_target, ctx
) -> None:
    """A new document revision of the same commit changes FRAISIER_REVISION. As a build-time
    variable (Coolify's default) it is a --build-arg and part of the build configuration, so
    every deploy rebuilt. Runtime-only, the container sees it and the image is reused."""
    app = fake.add_app("api")
    # A variable of an earlier Fraisier, created with Coolify's defaults (build time too).
    fake._upsert_env(app, {"key": "FRAISIER_SERVICE", "value": "api", "is_literal": True})
    service = service_resource(uuid=app.uuid, gitCommitSha=SHA_A, envs={"LOG_LEVEL": "info"})
    provider = provider_for(make_target, ctx)
    try:
        [instance] = await provider.instances(service)
        await provider.deploy(release(service, "rev-1"), instance)
        await provider.deploy(release(service, "rev-2"), instance)
    finally:
        await provider.close()
    first, second = reversed(fake.history(app.uuid))
    assert (first.status, second.status) == ("finished", "finished")
    assert first.built is True
    assert first.build_args is not None
    assert not [k for k in first.build_args if k.startswith("FRAISIER_")]
    assert first.build_args == {"LOG_LEVEL": "info"}  # the user's own envs keep the default
    assert second.built is False  # same commit, same build configuration: image reused
    assert second.envs is not None and second.envs["FRAISIER_REVISION"] == "rev-2"
    flags = {e.key: (e.is_runtime, e.is_buildtime) for e in app.envs}
    assert flags == {
        "FRAISIER_REVISION": (True, False),
        "FRAISIER_SERVICE": (True, False),
        "FRAISIER_ENVIRONMENT": (True, False),
        "LOG_LEVEL": (True, True),
    }


@pytest.mark.timeout(20)
async def test_forced_deploy_whose_answer_is_lost_queues_one_build(
    fake: FakeCoolify, make_target, ctx
) -> None:
    """force=true makes Coolify queue even when this commit is already queued. POST /deploy
    queued a build and the connection dropped before the answer: sending it again blindly
    queued a second forced build. The provider looks first, finds it, and follows it."""
    app = fake.add_app("api")
    fake.deploy_fault_after_queue = 1
    service = service_resource(uuid=app.uuid, gitCommitSha=SHA_A, force=True)
    provider = provider_for(make_target, ctx)
    try:
        [instance] = await provider.instances(service)
        await provider.deploy(release(service, "rev-1"), instance)
        # A retry of the whole apply while that forced build still runs follows it too.
        fake.run_time = 0.5
        app.status = "exited"
        fake.queue(app, force=True)
        await provider.deploy(release(service, "rev-1"), instance)
    finally:
        await provider.close()
    assert fake.calls("POST", "/deploy") == 1
    assert [(d.commit, d.force, d.status) for d in fake.history(app.uuid)] == [
        (SHA_A, True, "finished"), (SHA_A, True, "finished")]


@pytest.mark.timeout(30)
@pytest.mark.parametrize("newer_builds", [True, False], ids=["newer-ran", "newer-failed-build"])
async def test_rollback_reuses_the_kept_image_through_coolify_rollback(
    fake: FakeCoolify, make_target, ctx, newer_builds: bool
) -> None:
    """Core rolls back by deploying the previous Release. Re-pinning git_commit_sha and POST
    /deploy changes the build configuration (the pin is a 'build' item), so Coolify rebuilt
    the old commit. The image of that commit is still on the server (rollback-images): Coolify's
    own rollback runs it again without a build, and the pin follows."""
    app = fake.add_app("api")
    if not newer_builds:
        fake.fail_commits.add(SHA_B)
    good = service_resource(uuid=app.uuid, gitCommitSha=SHA_A)
    bad = service_resource(uuid=app.uuid, gitCommitSha=SHA_B)
    provider = provider_for(make_target, ctx)
    try:
        [instance] = await provider.instances(good)
        await provider.deploy(release(good, "rev-a"), instance)
        if newer_builds:
            await provider.deploy(release(bad, "rev-b"), instance)  # then its health gate fails
        else:
            with pytest.raises(CoolifyDeployFailed):
                await provider.deploy(release(bad, "rev-b"), instance)
        await provider.deploy(release(good, "rev-a"), instance)
        [after] = await provider.observe(good)
    finally:
        await provider.close()
    back = fake.history(app.uuid)[0]
    assert (back.commit, back.status, back.rollback) == (SHA_A, "finished", True)
    assert back.built is False, "the kept image must run again, not a rebuild"
    assert fake.calls("POST", f"/applications/{app.uuid}/rollback") == 1
    assert fake.calls("POST", "/deploy") == 2
    assert app.running_commit == SHA_A
    assert app.git_commit_sha == SHA_A  # Coolify's later deployments stay on it
    assert after.revision == "rev-a"
    assert after.running is True


@pytest.mark.timeout(30)
async def test_rollback_without_a_kept_image_rebuilds(fake: FakeCoolify, make_target, ctx) -> None:
    """Coolify cleaned the old image up (docker_images_to_keep): nothing to roll back to, so the
    commit is pinned and built again, as before."""
    app = fake.add_app("api")
    fake.images_to_keep = 1
    good = service_resource(uuid=app.uuid, gitCommitSha=SHA_A)
    bad = service_resource(uuid=app.uuid, gitCommitSha=SHA_B)
    provider = provider_for(make_target, ctx)
    try:
        [instance] = await provider.instances(good)
        await provider.deploy(release(good, "rev-a"), instance)
        await provider.deploy(release(bad, "rev-b"), instance)
        await provider.deploy(release(good, "rev-a"), instance)
    finally:
        await provider.close()
    back = fake.history(app.uuid)[0]
    assert (back.commit, back.rollback, back.built) == (SHA_A, False, True)
    assert fake.calls("POST", f"/applications/{app.uuid}/rollback") == 0


@pytest.mark.timeout(30)
async def test_status_is_polled_without_the_deployment_log(
    fake: FakeCoolify, make_target, ctx, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Coolify 4.3 has no parameter to leave `logs` out of a deployment; it leaves them out
    only for a token without read:sensitive. With `statusToken` (read only) the polls carry no
    log; the tail of a failed deployment is still read, once, with the main token."""
    monkeypatch.setenv(STATUS_TOKEN_ENV, fake.add_token({READ}))
    app = fake.add_app("api")
    fake.run_time = 0.6
    fake.fail_commits.add(SHA_B)
    provider = provider_for(make_target, ctx, statusToken={"env": STATUS_TOKEN_ENV})
    try:
        [instance] = await provider.instances(service_resource(uuid=app.uuid))
        await provider.deploy(
            release(service_resource(uuid=app.uuid, gitCommitSha=SHA_A), "rev-a"), instance)
        polls = fake.calls("GET", f"/deployments/{fake.history(app.uuid)[0].uuid}")
        sent_while_succeeding = fake.log_bytes_sent
        with pytest.raises(CoolifyDeployFailed, match="exit code 1"):
            await provider.deploy(
                release(service_resource(uuid=app.uuid, gitCommitSha=SHA_B), "rev-b"), instance)
        failed = fake.history(app.uuid)[0]
    finally:
        await provider.close()
    assert polls >= 4
    assert sent_while_succeeding == 0
    # One read of the failed deployment with the log, however many polls it took.
    assert fake.calls("GET", f"/deployments/{failed.uuid}") >= 4
    assert 0 < fake.log_bytes_sent <= 2 * len(str(failed.logs))
