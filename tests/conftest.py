"""Fixtures for the real integration targets stood up by tests/infra/up.sh.

Everything here skips with a clear reason when the infrastructure is missing, or fails when
RECONCILER_REQUIRE_INTEGRATION=1 (set by .ci/run). Pick the compose flavour with
``--compose=v1|v2`` or FRAISIER_COMPOSE (default v2).
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest

from tests.helpers import need
from tests.infra.testinfra import UP_HINT, Infra, InfraHost, lease_all, lease_any, load


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--compose",
        choices=("v1", "v2"),
        default=os.environ.get("FRAISIER_COMPOSE", "v2"),
        help="compose implementation for compose tests (env FRAISIER_COMPOSE; default v2)",
    )


@pytest.fixture(scope="session")
def testinfra() -> Infra:
    """env.json written by tests/infra/up.sh."""
    infra, reason = load()
    need(infra is not None, reason)
    assert infra is not None
    return infra


@pytest.fixture(scope="session")
def testhosts(testinfra: Infra) -> tuple[InfraHost, ...]:
    """Descriptions of every test host (not leased, not reset: read-only use)."""
    down = [f"{h.name} (127.0.0.1:{h.port})" for h in testinfra.hosts if not h.tcp_open()]
    need(bool(testinfra.hosts) and not down, f"test hosts not answering SSH: {down}; {UP_HINT}")
    return testinfra.hosts


@pytest.fixture
def ssh_host(testhosts: tuple[InfraHost, ...]) -> Iterator[InfraHost]:
    """One test host, leased for this test and reset (no fraisier-* units, no /srv/fraisier)."""
    with lease_any(testhosts) as host:
        host.reset()
        yield host


@pytest.fixture
def ssh_hosts(testhosts: tuple[InfraHost, ...]) -> Iterator[tuple[InfraHost, ...]]:
    """Every test host, leased for this test and reset."""
    with lease_all(testhosts):
        for host in testhosts:
            host.reset()
        yield testhosts


@pytest.fixture(scope="session")
def docker_engine(testinfra: Infra) -> Infra:
    """The Docker engine answers on its socket (returns the infra description)."""
    need(testinfra.docker_ok(), f"dockerd not answering on {testinfra.docker_host}; {UP_HINT}")
    return testinfra


@pytest.fixture
async def docker_client(docker_engine: Infra) -> AsyncIterator[Any]:
    """An aiodocker client on the test engine, closed after the test."""
    import aiodocker

    client = aiodocker.Docker(url=docker_engine.docker_host)
    try:
        yield client
    finally:
        await client.close()


@pytest.fixture(scope="session")
def tiny_image(docker_engine: Infra) -> str:
    """Name of the local busybox image (sh, httpd, wget; use compose `init: true`)."""
    name = docker_engine.tiny_image
    need(docker_engine.image_exists(name), f"image {name} missing; {UP_HINT}")
    return name


@pytest.fixture(scope="session")
def compose_version(request: pytest.FixtureRequest) -> str:
    return str(request.config.getoption("--compose"))


@pytest.fixture(scope="session")
def compose_cli(docker_engine: Infra, compose_version: str) -> list[str]:
    """argv prefix of the selected compose (e.g. ``[path]`` + ``["-f", file, "up", "-d"]``)."""
    argv = docker_engine.compose_argv(compose_version)
    need(argv is not None, f"compose {compose_version} not installed; {UP_HINT}")
    assert argv is not None
    return argv
