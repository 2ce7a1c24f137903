"""Deploy, rollback, drift and duplicate handling against the contract-validating fake."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import pytest

from reconciler.providers import ProviderContext, Release, load_provider
from reconciler.providers.coolify import CoolifyDeployFailed, CoolifyDeployTimeout, CoolifyProvider
from reconciler.spec.model import Resource

from .conftest import service_resource
from .fake_coolify import FakeCoolify

SHA_A = "a" * 40
SHA_B = "b" * 40


def release(resource: Resource, revision: str) -> Release:
    return Release(resource=resource, revision=revision, config_commit="c" * 40)


async def provider_for(make_target: Callable[..., Resource], ctx: ProviderContext, **overrides: Any) -> CoolifyProvider:
    provider = load_provider(make_target(**overrides), ctx)
    assert isinstance(provider, CoolifyProvider)
    return provider


@pytest.mark.timeout(20)
async def test_deploy_by_commit_pins_then_posts_deploy(fake: FakeCoolify, make_target, ctx) -> None:
    app = fake.add_app("api", fqdn="https://api.example.test,https://www.api.example.test")
    service = service_resource(uuid=app.uuid)
    provider = await provider_for(make_target, ctx)
    try:
        [instance] = await provider.instances(service)
        assert instance.id == app.uuid
        assert instance.address == "api.example.test"
        await provider.deploy(release(service, SHA_A), instance)
        [state] = await provider.observe(service)
    finally:
        await provider.close()
    assert app.git_commit_sha == SHA_A
    assert app.running_commit == SHA_A
    assert state.revision == SHA_A
    assert state.running is True
    assert state.facts["coolify_status"] == "running:healthy"
    assert state.facts["healthy"] is True
    assert state.facts["last_deployment"]["status"] == "finished"
    methods = [(m, p.removeprefix("/api/v1")) for m, p, _ in fake.requests]
    assert ("PATCH", f"/applications/{app.uuid}") in methods
    assert ("POST", "/deploy") in methods
    assert ("GET", "/deploy") not in methods
    # The pin is written before the deploy is queued.
    assert methods.index(("PATCH", f"/applications/{app.uuid}")) < methods.index(("POST", "/deploy"))
    assert [d.commit for d in fake.history(app.uuid)] == [SHA_A]
