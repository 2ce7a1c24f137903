"""The compose provider's ``recheck`` on the real dockerd: the container a look saw, inspected
again by its id (one engine request, no listing), vouched for while it runs the same start, and
declined (None: core observes) once it restarted, is gone, or has a healthcheck. The docker
CLI engine (``CliEngine``, engines reached over SSH) answers the same inspect."""

from __future__ import annotations

import asyncio
import random
from typing import Any

import pytest

from reconciler.providers import Health, contract
from reconciler.providers.compose.engine import CliEngine
from reconciler.providers.compose.provider import ComposeProvider
from reconciler.transport.local import LocalTransport
from tests.conftest import DockerCLI
from tests.helpers import free_port
from tests.providers.compose.conftest import http_get, make_resource, release

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]


def spec(image: str, port: int, healthcheck: bool = False) -> dict[str, Any]:
    section: dict[str, Any] = {
        "image": image, "pullPolicy": "never", "networkMode": "host", "replicas": 1,
        "command": ["httpd", "-f", "-p", f"127.0.0.1:{port}", "-h", "/www"],
        "stopGracePeriod": "2s", "waitTimeout": "30s",
    }
    if healthcheck:
        section["healthcheck"] = {
            "test": ["wget", "-q", "-O", "/dev/null", f"http://127.0.0.1:{port}/"],
            "interval": "300ms", "timeout": "2s", "retries": 3}
    return {"strategy": {"type": "rolling", "maxParallel": 1}, "compose": section}


class CountingEngine:
    """The provider's engine, counting what it is asked (the cost of a recheck)."""

    def __init__(self, engine: Any) -> None:
        self.engine = engine
        self.calls: list[str] = []

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self.engine, name)
        if not callable(attr):
            return attr

        async def counted(*args: Any, **kwargs: Any) -> Any:
            self.calls.append(name)
            return await attr(*args, **kwargs)

        return counted


async def test_a_running_container_is_vouched_for_by_one_inspect(
        make_provider: Any, environment: str, test_images: dict[str, str],
        docker_cli: DockerCLI) -> None:
    provider: ComposeProvider = make_provider()
    assert provider.capabilities.rechecks
    port = free_port()
    web = make_resource(environment, "Service", "web", spec(test_images["v1"], port))
    instance = (await provider.instances(web))[0]
    deployed = await provider.deploy(release(web, "r1"), instance)
    assert deployed is not None and deployed.running
    assert await http_get(port, "/") == (200, "version v1\n")
    seen = await provider.observe_instance(web, instance)
    assert seen.running and seen.health is Health.UNKNOWN and seen.up_for is not None

    counting = CountingEngine(provider.host.engine)
    provider.host.engine = counting  # type: ignore[assignment]
    await asyncio.sleep(0.3)
    again = await provider.recheck(web, instance, seen)
    assert again is not None and again.identity == seen.identity
    assert again.revision == seen.revision == "r1"
    assert again.up_for is not None and again.up_for >= seen.up_for + 0.25
    assert [c for c in counting.calls if c != "clock"] == ["container"]
    # core's look at it: the recheck, not an observation
    counting.calls.clear()
    looked = await contract.look_again(provider, web, instance, seen)
    assert looked is not None and looked.identity == seen.identity
    assert "containers" not in counting.calls and "labelled" not in counting.calls

    # restarted: another start, not the process seen
    container = str(seen.identity.container_id)
    docker_cli("restart", "-t", "1", container)
    assert await provider.recheck(web, instance, seen) is None
    restarted = await contract.look_again(provider, web, instance, seen)
    assert restarted is not None and restarted.identity.started_at != seen.identity.started_at
    # gone
    docker_cli("rm", "-f", container)
    assert await provider.recheck(web, instance, restarted) is None


async def test_a_container_with_a_healthcheck_is_left_to_an_observation(
        make_provider: Any, environment: str, test_images: dict[str, str]) -> None:
    provider: ComposeProvider = make_provider()
    port = free_port()
    web = make_resource(environment, "Service", "web", spec(test_images["v1"], port, True))
    instance = (await provider.instances(web))[0]
    await provider.deploy(release(web, "r1"), instance)
    seen = await provider.observe_instance(web, instance)
    assert seen.running
    # the healthcheck's status is the platform's signal: a recheck would report a stale one
    assert await provider.recheck(web, instance, seen) is None


async def test_the_cli_engine_inspects_one_container(docker_cli: DockerCLI, tiny_image: str,
                                                     docker_engine: Any) -> None:
    name = f"fraisier-recheck-{random.randint(0, 1 << 30)}"
    container = docker_cli("run", "-d", "--network", "none", "--name", name, tiny_image,
                           "sleep", "60").strip()
    engine = CliEngine(LocalTransport(), [docker_engine.docker_cli, "-H",
                                          docker_engine.docker_host])
    try:
        shown = await engine.container(container)
        assert shown is not None and shown["Id"] == container
        assert shown["State"]["Running"] is True
    finally:
        docker_cli("rm", "-f", container)
    assert await engine.container(container) is None
