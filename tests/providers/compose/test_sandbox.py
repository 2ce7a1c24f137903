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


async def test_a_container_docker_restarted_is_diagnosed_from_its_exited_run(
        make_provider: Any, environment: str, tiny_image: str, docker_engine: Infra) -> None:
    """A gate (or `status`) that looks after Docker's restart policy started a container again
    sees it running: the run that exited is still diagnosed (a CI run's gate reported the
    restart without the sandbox hint). The first run fails its chown (no CAP_CHOWN in the
    default sandbox) and leaves a mark; Docker restarts it; the second run serves."""
    import asyncio
    import time

    port = free_port()
    script = ("if [ -f /tmp/once ]; then exec httpd -f -p 127.0.0.1:" + str(port) + " -h /; "
              "fi; touch /tmp/once /tmp/f && chown 1:1 /tmp/f || exit 3")
    spec = {"compose": {"image": tiny_image, "pullPolicy": "never", "networkMode": "host",
                        "init": True, "command": ["sh", "-c", script], "user": "0:0",
                        "restart": "on-failure", "wait": False}}
    service = make_resource(environment, "Service", "web", spec)
    provider = make_provider()
    (instance,) = await provider.instances(service)
    await provider.deploy(release(service, "r1"), instance)
    deadline = time.monotonic() + 30
    while True:
        state = await only_state(provider, service)
        if state.running and state.facts.get("restart_count"):
            break
        assert time.monotonic() < deadline, state
        await asyncio.sleep(0.2)
    assert "restarted by Docker 1 time(s) after exiting" in state.detail, state.detail
    assert "sandbox 'default' likely caused this" in state.detail, state.detail
    assert "CHOWN" in state.detail, state.detail
    assert any("Operation not permitted" in line for line in state.last_output), state
    assert state.problem is None  # running: a restart is reported, not a failure
