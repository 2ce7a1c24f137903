"""FRAISIER_REVISION, FRAISIER_SERVICE and FRAISIER_ENVIRONMENT in real compose containers.

Per-replica projects (rolling) each get the revision their own deploy carried; a blue-green slot
names the Service, not the slot; a redeploy of the same release recreates nothing (the variables
are part of the same render every time) and observe reports no drift.
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from reconciler.providers.compose.provider import ComposeProvider
from reconciler.providers.compose.render import project_name
from reconciler.rollout.strategies import slot_resource
from tests.providers.compose.conftest import (
    docker_json,
    make_resource,
    project_containers,
    release,
)

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]


def spec(image: str, replicas: int, strategy: str) -> dict[str, Any]:
    return {
        "strategy": {"type": strategy, "maxParallel": 2},
        "compose": {
            "image": image,
            "pullPolicy": "never",
            "networkMode": "none",
            "replicas": replicas,
            "command": ["sleep", "3600"],
            "environment": {"MODE": "test"},
            "stopGracePeriod": "1s",
        },
    }


def fraisier_env(infra: Any, project: str) -> list[dict[str, str]]:
    """The FRAISIER_* variables of each container of ``project`` as Docker reports them."""
    found = []
    for container in project_containers(infra, project):
        env = docker_json(infra, "inspect", container)[0]["Config"]["Env"]
        pairs = dict(item.split("=", 1) for item in env)
        assert pairs["MODE"] == "test"
        found.append({k: v for k, v in pairs.items() if k.startswith("FRAISIER_")})
    return found


async def test_replicas_and_slots_see_their_revision(
    make_provider: Any, environment: str, test_images: dict[str, str], docker_engine: Any
) -> None:
    provider: ComposeProvider = make_provider()
    web = make_resource(environment, "Service", "web", spec(test_images["v1"], 2, "rolling"))
    instances = await provider.instances(web)
    await asyncio.gather(*(provider.deploy(release(web, "r1"), i) for i in instances))
    base = project_name(web)
    expected = {"FRAISIER_REVISION": "r1", "FRAISIER_SERVICE": "web",
                "FRAISIER_ENVIRONMENT": environment}
    for n in (1, 2):
        assert fraisier_env(docker_engine, f"{base}_r{n}") == [expected]

    # replica 2 moves to r2 (same document, a new revision): only it changes
    before = project_containers(docker_engine, f"{base}_r1")
    await provider.deploy(release(web, "r2"), instances[1])
    assert fraisier_env(docker_engine, f"{base}_r2") == [{**expected, "FRAISIER_REVISION": "r2"}]
    assert fraisier_env(docker_engine, f"{base}_r1") == [expected]
    assert project_containers(docker_engine, f"{base}_r1") == before
    # the same release again: the same render, nothing recreated, no drift
    second = project_containers(docker_engine, f"{base}_r2")
    await provider.deploy(release(web, "r2"), instances[1])
    assert project_containers(docker_engine, f"{base}_r2") == second
    states = {s.instance.id: s.revision for s in await provider.observe(web)}
    assert states == {instances[0].id: "r1", instances[1].id: "r2"}

    # a blue-green slot: its own project, the Service's name
    shop = make_resource(environment, "Service", "shop", spec(test_images["v1"], 1, "recreate"))
    green = slot_resource(shop, "green", 18999)
    [slot_instance] = await provider.instances(green)
    await provider.deploy(release(green, "r7"), slot_instance)
    assert fraisier_env(docker_engine, project_name(green)) == [
        {"FRAISIER_REVISION": "r7", "FRAISIER_SERVICE": "shop", "FRAISIER_ENVIRONMENT": environment}
    ]
