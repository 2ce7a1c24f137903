"""What a compose replica's container listens on (``compose/listening.py``), read inside the
real container on the real dockerd of tests/infra; and the gate that reads it through the CLI:
a container slower to bind than the gate's time rule, on a port another process of this
machine holds (``networkMode: host``), is not judged by that process's answers."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest

from reconciler.providers import Listening, listening_of
from tests.helpers import stranger_server
from tests.providers.compose.conftest import free_port, make_resource, release
from tests.providers.compose.test_end_to_end import Fleet, fleet, resource_status

__all__ = ["fleet"]

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]


async def test_a_container_listens_on_what_its_processes_hold(
        make_provider: Any, environment: str, test_images: dict[str, str]) -> None:
    provider = make_provider()
    port = free_port()

    def web(name: str, command: list[str]) -> Any:
        return make_resource(environment, "Service", name, {"compose": {
            "image": test_images["v1"], "pullPolicy": "never", "networkMode": "host",
            "command": command}})

    serving = web("web", ["httpd", "-f", "-p", f"127.0.0.1:{port}", "-h", "/www"])
    quiet = web("quiet", ["sleep", "600"])
    for resource in (serving, quiet):
        [instance] = await provider.instances(resource)
        await provider.deploy(release(resource, "r1"), instance)
    [instance] = await provider.instances(serving)
    state = await provider.observe_instance(serving, instance)
    heard = None
    for _ in range(50):  # httpd binds just after its start
        heard = await listening_of(provider, serving, instance, state)
        if heard is not None and port in heard.tcp_ports:
            break
        await asyncio.sleep(0.1)
    assert heard == Listening(frozenset({port}))

    [instance] = await provider.instances(quiet)
    state = await provider.observe_instance(quiet, instance)
    heard = await listening_of(provider, quiet, instance, state)
    assert heard is not None and heard.none
    await provider.stop(quiet, instance)
    assert await provider.listening(quiet, instance, state) is None  # gone


async def test_a_container_is_not_judged_by_a_stranger_holding_its_port(fleet: Fleet) -> None:
    with stranger_server() as port:
        spec = {
            "target": "docker",
            "compose": {
                "image": fleet.images["v1"], "pullPolicy": "never", "networkMode": "host",
                "restart": "no", "wait": False,
                "command": ["sh", "-c", f"sleep 2; exec httpd -f -p 127.0.0.1:{port} -h /www"],
            },
            "health": {"http": {"url": f"http://{{host}}:{port}/"}, "interval": "200ms",
                       "startPeriod": "5s"},
        }
        web = fleet.header("Service", "web") + "spec: " + json.dumps(spec) + "\n"
        await fleet.commit({"targets.yaml": fleet.target(), "web.yaml": web}, "web")
        code, out, err = await fleet.cli("apply", "--repo", str(fleet.repo))
        assert code == 1, (out, err)
        status = resource_status(await fleet.cli_json("status"), "web")
        assert "exited with code 1" in (status.get("lastError") or ""), status

