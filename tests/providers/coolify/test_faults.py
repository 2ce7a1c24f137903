"""Server faults the issue lists that test_errors.py does not reach: 5xx answers and answers
slower than the request timeout. Each one either heals within the retry budget or ends in an
honest CoolifyUnavailable that names the route, the cause and the number of tries."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

import pytest

from reconciler.providers import ProviderContext, Release, load_provider
from reconciler.providers.coolify import CoolifyProvider, CoolifyUnavailable
from reconciler.spec.model import Resource

from .conftest import captured_logs, service_resource
from .fake_coolify import FakeCoolify

SHA_A = "a" * 40


def release(resource: Resource) -> Release:
    return Release(resource=resource, revision="rev-1", config_commit=None)


def provider_for(
    make_target: Callable[..., Resource], ctx: ProviderContext, **overrides: Any
) -> CoolifyProvider:
    provider = load_provider(make_target(**overrides), ctx)
    assert isinstance(provider, CoolifyProvider)
    return provider


@pytest.mark.timeout(20)
@pytest.mark.parametrize("status", [500, 503])
async def test_5xx_on_deploy_is_retried_then_succeeds(
    fake: FakeCoolify, make_target, ctx, caplog, status: int
) -> None:
    caplog.set_level(logging.WARNING)
    app = fake.add_app("api")
    # attempts=3: two failures leave one try, which succeeds.
    fake.inject_5xx.extend([("/deploy", status), ("/deploy", status)])
    service = service_resource(uuid=app.uuid, gitCommitSha=SHA_A)
    provider = provider_for(make_target, ctx)
    try:
        [instance] = await provider.instances(service)
        await provider.deploy(release(service), instance)
    finally:
        await provider.close()
    assert fake.inject_5xx == []
    assert fake.calls("POST", "/deploy") == 3
    # The failed tries queued nothing: exactly one deployment, and it ran.
    assert [(d.commit, d.status) for d in fake.history(app.uuid)] == [(SHA_A, "finished")]
    assert app.running_commit == SHA_A
    # A request that queues a deployment is not retried blindly: the provider first looks
    # whether the failed try queued one (it did not), then sends it again.
    again = "coolify deploy request failed and queued nothing; sending it again"
    retries = [r for r in caplog.records if r.getMessage() == again]
    assert [f"HTTP {status}" in getattr(r, "error", "") for r in retries] == [True, True]


@pytest.mark.timeout(20)
async def test_5xx_while_polling_a_deployment_is_retried(
    fake: FakeCoolify, make_target, ctx
) -> None:
    app = fake.add_app("api")
    fake.run_time = 0.3
    fake.inject_5xx.extend([("/deployments", 500), ("/deployments", 503)])
    service = service_resource(uuid=app.uuid, gitCommitSha=SHA_A)
    provider = provider_for(make_target, ctx)
    try:
        [instance] = await provider.instances(service)
        await provider.deploy(release(service), instance)
    finally:
        await provider.close()
    assert fake.inject_5xx == []
    assert [d.status for d in fake.history(app.uuid)] == ["finished"]
    assert app.running_commit == SHA_A


@pytest.mark.timeout(20)
async def test_persistent_500_fails_honestly(
    fake: FakeCoolify, make_target, ctx, token: str, caplog
) -> None:
    caplog.set_level(logging.DEBUG)
    app = fake.add_app("api")
    fake.inject_5xx.extend([("/applications", 500)] * 10)
    service = service_resource(uuid=app.uuid, gitCommitSha=SHA_A)
    provider = provider_for(make_target, ctx)
    started = time.monotonic()
    try:
        with pytest.raises(CoolifyUnavailable) as caught:
            await provider.instances(service)
    finally:
        await provider.close()
    elapsed = time.monotonic() - started
    message = str(caught.value)
    assert f"GET /applications/{app.uuid}" in message
    assert "HTTP 500 3 time(s)" in message and "Server Error" in message
    assert fake.url in message
    assert "reachable" in caught.value.hint
    assert fake.calls("GET", f"/applications/{app.uuid}") == 3  # retry.attempts, no more
    assert elapsed < 2  # backoff 10ms..50ms: bounded, not a hang
    assert fake.history(app.uuid) == [] and app.git_commit_sha == "HEAD"
    assert token not in message + captured_logs(caplog)


@pytest.mark.timeout(20)
async def test_answer_slower_than_the_request_timeout_is_retried(
    fake: FakeCoolify, make_target, ctx, caplog
) -> None:
    caplog.set_level(logging.WARNING)
    app = fake.add_app("api")
    fake.slow_responses.append((f"/applications/{app.uuid}", 1.2))
    service = service_resource(uuid=app.uuid, gitCommitSha=SHA_A)
    provider = provider_for(make_target, ctx, requestTimeout="300ms")
    started = time.monotonic()
    try:
        [instance] = await provider.instances(service)
    finally:
        await provider.close()
    elapsed = time.monotonic() - started
    assert instance.id == app.uuid
    assert fake.calls("GET", f"/applications/{app.uuid}") == 2
    # Gave up on the slow answer at the request timeout instead of waiting it out.
    assert 0.3 <= elapsed < 1.1
    [retry] = [r for r in caplog.records if r.getMessage() == "coolify request failed, retrying"]
    assert "ReadTimeout" in str(getattr(retry, "error", ""))


@pytest.mark.timeout(20)
async def test_persistently_slow_api_fails_honestly(
    fake: FakeCoolify, make_target, ctx, token: str
) -> None:
    app = fake.add_app("api")
    fake.slow_responses.extend([(f"/applications/{app.uuid}", 1.0)] * 3)
    service = service_resource(uuid=app.uuid, gitCommitSha=SHA_A)
    provider = provider_for(make_target, ctx, requestTimeout="250ms")
    started = time.monotonic()
    try:
        with pytest.raises(CoolifyUnavailable) as caught:
            await provider.instances(service)
    finally:
        await provider.close()
    elapsed = time.monotonic() - started
    message = str(caught.value)
    assert "did not answer" in message and "after 3 attempt(s)" in message
    assert "ReadTimeout" in message
    assert f"GET /applications/{app.uuid}" in message
    assert token not in message
    # Three tries of 250 ms plus two short backoffs; never the 3 s the server would take.
    assert 0.75 <= elapsed < 2.0


@pytest.mark.timeout(20)
async def test_deploy_answer_slower_than_the_timeout_does_not_double_deploy(
    fake: FakeCoolify, make_target, ctx
) -> None:
    """POST /deploy times out; the retry queues the build. The slow first request is still
    handled by the server after the client gave up (as a loaded Coolify would) and meets the
    retry's deployment in flight: Coolify skips it as a duplicate, so exactly one build runs."""
    app = fake.add_app("api")
    fake.run_time = 1.5  # the retry's build is still running when the slow request lands
    fake.slow_responses.append(("/deploy", 0.6))
    service = service_resource(uuid=app.uuid, gitCommitSha=SHA_A)
    provider = provider_for(make_target, ctx, requestTimeout="250ms")
    try:
        [instance] = await provider.instances(service)
        await provider.deploy(release(service), instance)
    finally:
        await provider.close()
    assert fake.calls("POST", "/deploy") == 2
    assert fake.duplicates_skipped == 1  # the slow request did land, and was turned away
    assert [(d.commit, d.status) for d in fake.history(app.uuid)] == [(SHA_A, "finished")]
    assert app.running_commit == SHA_A
