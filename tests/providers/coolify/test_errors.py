"""Failure modes: auth, API disabled, abilities, 429 with Retry-After, network faults."""

from __future__ import annotations

import logging
import time

import pytest

from reconciler.errors import ProviderError, SecretError
from reconciler.providers import Release, load_provider
from reconciler.providers.coolify import (
    CoolifyAPIDisabled,
    CoolifyAuthError,
    CoolifyForbidden,
    CoolifyNotFound,
    CoolifyProvider,
    CoolifyRateLimited,
    CoolifyUnavailable,
)

from .conftest import TOKEN_ENV, captured_logs, service_resource, target_resource
from .fake_coolify import FakeCoolify

SHA_A = "a" * 40


def release(resource, revision: str = "rev-1") -> Release:
    return Release(resource=resource, revision=revision, config_commit=None)


@pytest.mark.timeout(10)
async def test_bad_token_is_an_auth_error_without_the_token(
    fake: FakeCoolify, ctx, monkeypatch, caplog
) -> None:
    caplog.set_level(logging.DEBUG)
    bogus = "7|this-token-does-not-exist-anywhere"
    monkeypatch.setenv(TOKEN_ENV, bogus)
    app = fake.add_app("api")
    provider = load_provider(target_resource(fake.url), ctx)
    try:
        with pytest.raises(CoolifyAuthError) as caught:
            await provider.instances(service_resource(uuid=app.uuid))
    finally:
        await provider.close()
    error = caught.value
    assert isinstance(error, ProviderError)
    assert "401" in str(error) and "Unauthenticated" in str(error)
    assert f"env:{TOKEN_ENV}" in str(error)  # which reference to fix
    assert "API token" in error.hint
    for text in (str(error), repr(error), error.hint, captured_logs(caplog)):
        assert bogus not in text
        assert "this-token-does-not-exist" not in text


@pytest.mark.timeout(10)
async def test_token_without_team_is_invalid_token(fake: FakeCoolify, ctx, monkeypatch) -> None:
    monkeypatch.setenv(TOKEN_ENV, fake.add_token({"root"}, team_id=None))
    app = fake.add_app("api")
    provider = load_provider(target_resource(fake.url), ctx)
    try:
        with pytest.raises(CoolifyAuthError, match="Invalid token"):
            await provider.instances(service_resource(uuid=app.uuid))
    finally:
        await provider.close()


@pytest.mark.timeout(10)
async def test_api_disabled(fake: FakeCoolify, make_target, ctx, token: str) -> None:
    app = fake.add_app("api")
    fake.api_enabled = False
    provider = load_provider(make_target(), ctx)
    try:
        with pytest.raises(CoolifyAPIDisabled) as caught:
            await provider.instances(service_resource(uuid=app.uuid))
    finally:
        await provider.close()
    assert "API is disabled" in str(caught.value)
    assert "API Access" in caught.value.hint
    assert token not in str(caught.value)
    assert fake.calls("GET", f"/applications/{app.uuid}") == 1  # not retried: it will not heal


@pytest.mark.timeout(10)
async def test_missing_ability_names_it(fake: FakeCoolify, ctx, monkeypatch) -> None:
    monkeypatch.setenv(TOKEN_ENV, fake.add_token({"read"}))
    app = fake.add_app("api")
    service = service_resource(uuid=app.uuid, gitCommitSha=SHA_A)
    provider = load_provider(target_resource(fake.url), ctx)
    try:
        [instance] = await provider.instances(service)
        with pytest.raises(CoolifyForbidden, match="Missing required permissions: write"):
            await provider.deploy(release(service), instance)
    finally:
        await provider.close()
    assert fake.history(app.uuid) == []


@pytest.mark.timeout(10)
async def test_unknown_application_is_not_found(fake: FakeCoolify, make_target, ctx) -> None:
    provider = load_provider(make_target(), ctx)
    try:
        with pytest.raises(CoolifyNotFound, match="not found") as caught:
            await provider.instances(service_resource(uuid="doesnotexist"))
    finally:
        await provider.close()
    assert "coolify.uuid" in caught.value.hint


@pytest.mark.timeout(10)
async def test_missing_token_variable_is_a_secret_error(
    fake: FakeCoolify, ctx, monkeypatch
) -> None:
    monkeypatch.delenv(TOKEN_ENV, raising=False)
    provider = load_provider(target_resource(fake.url), ctx)
    try:
        with pytest.raises(SecretError, match=TOKEN_ENV):
            await provider.instances(service_resource(uuid="x"))
    finally:
        await provider.close()


@pytest.mark.timeout(20)
async def test_429_waits_for_retry_after(fake: FakeCoolify, make_target, ctx, caplog) -> None:
    caplog.set_level(logging.WARNING)
    app = fake.add_app("api")
    fake.inject_429.append(("/deploy", 1))
    service = service_resource(uuid=app.uuid, gitCommitSha=SHA_A)
    provider = load_provider(make_target(), ctx)
    try:
        [instance] = await provider.instances(service)
        started = time.monotonic()
        await provider.deploy(release(service), instance)
        elapsed = time.monotonic() - started
    finally:
        await provider.close()
    assert elapsed >= 1.0  # waited as asked
    assert fake.calls("POST", "/deploy") == 2
    assert [d.status for d in fake.history(app.uuid)] == ["finished"]
    assert any(
        r.getMessage() == "coolify throttled the request, waiting as asked" for r in caplog.records
    )


@pytest.mark.timeout(10)
async def test_429_asking_too_long_fails_at_once(fake: FakeCoolify, make_target, ctx) -> None:
    app = fake.add_app("api")
    fake.inject_429.append(("/applications", 600))
    provider = load_provider(make_target(), ctx)
    started = time.monotonic()
    try:
        with pytest.raises(CoolifyRateLimited, match="600s") as caught:
            await provider.instances(service_resource(uuid=app.uuid))
    finally:
        await provider.close()
    assert time.monotonic() - started < 2
    assert "maxRetryAfter" in str(caught.value)


@pytest.mark.timeout(10)
async def test_429_bounded_attempts(fake: FakeCoolify, make_target, ctx) -> None:
    app = fake.add_app("api")
    fake.inject_429.extend([("/applications", 0)] * 10)
    provider = load_provider(make_target(retry={"rateLimitAttempts": 3, "backoff": "10ms"}), ctx)
    try:
        with pytest.raises(CoolifyRateLimited, match="after 3 attempt"):
            await provider.instances(service_resource(uuid=app.uuid))
    finally:
        await provider.close()
    assert fake.calls("GET", f"/applications/{app.uuid}") == 3


@pytest.mark.timeout(20)
async def test_dropped_connections_are_retried(fake: FakeCoolify, make_target, ctx) -> None:
    app = fake.add_app("api")
    fake.drop_connections = 2
    provider = load_provider(make_target(), ctx)
    try:
        [instance] = await provider.instances(service_resource(uuid=app.uuid))
    finally:
        await provider.close()
    assert instance.id == app.uuid
    assert fake.calls("GET", f"/applications/{app.uuid}") == 3


@pytest.mark.timeout(20)
async def test_server_gone_fails_honestly_after_retries(
    fake: FakeCoolify, make_target, ctx, caplog
) -> None:
    caplog.set_level(logging.WARNING)
    app = fake.add_app("api")
    service = service_resource(uuid=app.uuid, gitCommitSha=SHA_A)
    provider = load_provider(
        make_target(retry={"attempts": 4, "backoff": "20ms", "maxBackoff": "80ms"}), ctx
    )
    assert isinstance(provider, CoolifyProvider)
    try:
        [instance] = await provider.instances(service)
        await fake.stop()  # Coolify goes away: connections are refused from now on
        started = time.monotonic()
        with pytest.raises(CoolifyUnavailable) as caught:
            await provider.deploy(release(service), instance)
        elapsed = time.monotonic() - started
    finally:
        await provider.close()
    message = str(caught.value)
    assert "after 4 attempt(s)" in message
    assert "ConnectError" in message
    assert fake.url in message
    retries = [r for r in caplog.records if r.getMessage() == "coolify request failed, retrying"]
    assert len(retries) == 3
    # Backoff happened (and was bounded): 3 waits between 10ms and 80ms each.
    assert 0.03 <= elapsed < 2


@pytest.mark.timeout(20)
async def test_network_fault_during_deploy_polling_recovers(
    fake: FakeCoolify, make_target, ctx
) -> None:
    app = fake.add_app("api")
    service = service_resource(uuid=app.uuid, gitCommitSha=SHA_A)
    fake.run_time = 0.3
    provider = load_provider(make_target(), ctx)
    try:
        [instance] = await provider.instances(service)
        task_deploy = provider.deploy(release(service), instance)
        import asyncio

        async def flaky() -> None:
            await asyncio.sleep(0.15)
            fake.drop_connections = 2

        await asyncio.gather(task_deploy, flaky())
    finally:
        await provider.close()
    assert app.running_commit == SHA_A


@pytest.mark.timeout(10)
async def test_full_deployment_queue_fails_fast_with_retry_after(
    fake: FakeCoolify, make_target, ctx
) -> None:
    """Coolify answers 429 + Retry-After: 60 when its queue is full; 60s > maxRetryAfter (5s)."""
    app = fake.add_app("api")
    fake.queue_limit = 0
    service = service_resource(uuid=app.uuid, gitCommitSha=SHA_A)
    provider = load_provider(make_target(), ctx)
    try:
        [instance] = await provider.instances(service)
        with pytest.raises(CoolifyRateLimited, match="wait 60s"):
            await provider.deploy(release(service), instance)
    finally:
        await provider.close()
    assert fake.history(app.uuid) == []
