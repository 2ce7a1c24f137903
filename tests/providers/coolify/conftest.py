"""Fixtures: a contract-validating fake Coolify per test, and builders for Targets and Services."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest

from reconciler.providers import ProviderContext
from reconciler.spec.model import Resource, ResourceKey
from tests.helpers import need

from .contract import OpenAPIContract, load_contract
from .fake_coolify import DEPLOY, READ, SENSITIVE, WRITE, FakeCoolify

TOKEN_ENV = "FRAISIER_TEST_COOLIFY_TOKEN"
ALL_ABILITIES = {READ, WRITE, DEPLOY, SENSITIVE}


@pytest.fixture(scope="session")
def contract() -> OpenAPIContract:
    loaded = load_contract()
    need(loaded is not None, "contracts/coolify/openapi.yaml not found (set RECONCILER_CONTRACTS)")
    assert loaded is not None
    return loaded


@pytest.fixture
async def fake(contract: OpenAPIContract) -> AsyncIterator[FakeCoolify]:
    server = FakeCoolify(contract)
    await server.start()
    try:
        yield server
    finally:
        await server.stop()
    # Any request the provider sent outside the spec (or response the fake sent) fails the test.
    assert server.violations == [], "OpenAPI contract violations:\n" + "\n".join(server.violations)


@pytest.fixture
def token(fake: FakeCoolify, monkeypatch: pytest.MonkeyPatch) -> str:
    value = fake.add_token(ALL_ABILITIES)
    monkeypatch.setenv(TOKEN_ENV, value)
    return value


FAST = {
    "pollInterval": "20ms",
    "pollMaxInterval": "100ms",
    "deployTimeout": "20s",
    "requestTimeout": "5s",
    "connectTimeout": "2s",
    "retry": {"attempts": 3, "backoff": "10ms", "maxBackoff": "50ms", "maxRetryAfter": "5s"},
}


def target_resource(url: str, **overrides: Any) -> Resource:
    spec: dict[str, Any] = {"provider": "coolify", "url": url, "token": {"env": TOKEN_ENV}, **FAST}
    spec.update(overrides)
    return Resource(ResourceKey("default", "Target", "coolify"), {}, spec, "targets.yaml")


def service_resource(resource_name: str = "api", /, **coolify: Any) -> Resource:
    spec = {"target": "coolify", "coolify": coolify}
    return Resource(ResourceKey("default", "Service", resource_name), {}, spec, "services.yaml")


@pytest.fixture
def ctx(tmp_path: Path) -> ProviderContext:
    return ProviderContext(
        state_dir=tmp_path, logger=logging.getLogger("reconciler.provider.coolify")
    )


@pytest.fixture
def make_target(fake: FakeCoolify, token: str) -> Callable[..., Resource]:
    def build(**overrides: Any) -> Resource:
        return target_resource(fake.url, **overrides)

    return build


def captured_logs(caplog: pytest.LogCaptureFixture) -> str:
    """Every captured record with its extra fields (what a JSON log line would carry)."""
    return "\n".join(f"{r.getMessage()} {r.__dict__!r}" for r in caplog.records)
