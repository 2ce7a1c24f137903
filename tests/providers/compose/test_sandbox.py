"""Sandboxed containers (docs/sandboxing.md): what `docker inspect` shows of a deployed one."""

from __future__ import annotations

from typing import Any

import pytest

from reconciler.providers.compose.render import render
from tests.infra.testinfra import Infra
from tests.providers.compose.conftest import (
    docker_json,
    free_port,
    http_get,
    make_resource,
    release,
)
from tests.providers.compose.test_compose_docker import only_state, web_spec

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]


async def deployed_host_config(provider: Any, service: Any, infra: Infra) -> dict[str, Any]:
    (instance,) = await provider.instances(service)
    await provider.deploy(release(service, "r1"), instance)
    state = await only_state(provider, service)
    assert state.running and state.facts["health"] == "healthy", state
    (inspected,) = docker_json(infra, "inspect", state.facts["container_id"])
    return {**inspected["HostConfig"], "User": inspected["Config"]["User"]}


async def test_default_profile_in_docker_inspect(make_provider: Any, environment: str,
                                                 test_images: Any, docker_engine: Infra) -> None:
    port = free_port()
    service = make_resource(environment, "Service", "web", web_spec(test_images["v1"], port))
    config = await deployed_host_config(make_provider(), service, docker_engine)
    assert config["SecurityOpt"] == ["no-new-privileges:true"], config["SecurityOpt"]
    assert config["CapDrop"] == ["ALL"] and not config["CapAdd"], config
    assert config["ReadonlyRootfs"] is False
    assert await http_get(port, "/version") == (200, "version v1\n")


async def test_strict_profile_read_only_non_root(make_provider: Any, environment: str,
                                                 test_images: Any, docker_engine: Infra) -> None:
    port = free_port()
    spec = web_spec(test_images["v1"], port, sandbox="strict", user="0:0",
                    capabilities=["NET_BIND_SERVICE"])
    service = make_resource(environment, "Service", "web", spec)
    config = await deployed_host_config(make_provider(), service, docker_engine)
    assert config["ReadonlyRootfs"] is True and "/tmp" in (config["Tmpfs"] or {}), config
    assert config["CapAdd"] == ["CAP_NET_BIND_SERVICE"] or config["CapAdd"] == [
        "NET_BIND_SERVICE"], config["CapAdd"]
    assert config["User"] == "0:0"  # declared: kept
    assert await http_get(port, "/version") == (200, "version v1\n")


def test_render_profiles() -> None:
    def svc(target_sandbox: Any = None, **compose: Any) -> dict[str, Any]:
        spec = {"compose": {"image": "x:1", **compose}}
        resource = make_resource("t", "Service", "web", spec)
        rendered = render(resource, "r1", target_sandbox=target_sandbox)
        return dict(rendered.document["services"]["web"])

    off = svc(sandbox="off")
    assert "security_opt" not in off and "cap_drop" not in off
    strict = svc(sandbox="strict", writablePaths=["/run/app"])
    assert strict["user"] == "65534:65534" and strict["read_only"] is True
    assert strict["tmpfs"] == ["/run/app"]
    default = svc(readOnly=True)
    assert default["read_only"] is True and default["tmpfs"] == ["/tmp"]
    assert "user" not in default
    # the Target's profile applies unless the workload names one; YAML's bare `off` is False
    assert "cap_drop" not in svc(target_sandbox=False)
    assert svc(target_sandbox="strict")["user"] == "65534:65534"
    assert svc(target_sandbox="off", sandbox="default")["cap_drop"] == ["ALL"]
