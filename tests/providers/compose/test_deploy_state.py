"""What the health gate starts from (issue 17, the rolling goal): a compose observation says how
long the container has run (``up_for``, by the Docker host's clock), a replica's deploy returns
the state it last observed (the gate's first look), and that deploy returns after one poll that
sees the container running — the gate's stay-up rule judges the rest. Against the real dockerd.
"""

from __future__ import annotations

import asyncio
import time
from datetime import datetime
from typing import Any

import pytest

from reconciler.providers import Health, Phase
from reconciler.providers.compose.engine import CliEngine
from reconciler.providers.compose.provider import ComposeProvider
from reconciler.providers.compose.render import PROJECT_LABEL, project_name, replica_project
from reconciler.transport.local import LocalTransport
from tests.infra.testinfra import Infra
from tests.providers.compose.conftest import free_port, make_resource, release

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]


def rolling_web(image: str, port: int, **compose: Any) -> dict[str, Any]:
    """One httpd replica in the per-replica layout (strategy rolling), no Docker healthcheck."""
    section: dict[str, Any] = {
        "image": image,
        "pullPolicy": "never",
        "networkMode": "host",
        "replicas": 1,
        "command": ["httpd", "-f", "-p", f"127.0.0.1:{port}", "-h", "/www"],
        "stopGracePeriod": "1s",
        **compose,
    }
    return {"strategy": {"type": "rolling"}, "compose": section}


def started_at(state: Any) -> float:
    return datetime.fromisoformat(str(state.identity.started_at)).timestamp()


async def test_observations_report_the_container_age(
    make_provider: Any, environment: str, test_images: dict[str, str], docker_engine: Infra
) -> None:
    provider = make_provider()
    port = free_port()
    web = make_resource(environment, "Service", "web", rolling_web(test_images["v1"], port))
    [instance] = await provider.instances(web)
    await provider.deploy(release(web, "r1"), instance)
    await asyncio.sleep(0.6)

    before = time.time()
    one = await provider.observe_instance(web, instance)
    [every] = await provider.observe(web)
    after = time.time()
    for state in (one, every):
        assert state.running and state.up_for is not None, state
        # by StartedAt and this machine's clock (a local dockerd shares it); read after `before`
        assert before - started_at(state) - 0.05 <= state.up_for <= after - started_at(state)
        assert state.up_for >= 0.6

    # the docker CLI's engine (ssh:// hosts) counts by the engine's own clock: as old, never older
    transport = LocalTransport()
    cli = ComposeProvider(provider.target, provider.ctx, transport,
                          CliEngine(transport, [docker_engine.docker_cli]),
                          state_root=provider.state_root, base_env=provider.base_env)
    via_cli = await cli.observe_instance(web, instance)
    assert via_cli.up_for is not None and via_cli.identity == one.identity
    assert one.up_for - 0.5 <= via_cli.up_for <= time.time() - started_at(one) + 0.05

    await provider.stop(web, instance)
    stopped = await provider.observe_instance(web, instance)
    assert stopped.phase is Phase.EXITED and stopped.up_for is None, stopped


async def test_a_replica_deploy_returns_the_state_observe_reports(
    make_provider: Any, environment: str, test_images: dict[str, str]
) -> None:
    provider = make_provider()
    port = free_port()
    web = make_resource(environment, "Service", "web", rolling_web(test_images["v1"], port))
    [instance] = await provider.instances(web)
    deployed = await provider.deploy(release(web, "r1"), instance)
    observed = await provider.observe_instance(web, instance)
    assert deployed is not None and deployed.running, deployed
    assert (deployed.instance, deployed.revision, deployed.identity, deployed.health,
            deployed.working_dir, deployed.detail, deployed.phase) == (
        observed.instance, observed.revision, observed.identity, observed.health,
        observed.working_dir, observed.detail, observed.phase)  # fmt: skip
    assert {k: v for k, v in deployed.facts.items() if k != "status"} == {
        k: v for k, v in observed.facts.items() if k != "status"}
    assert deployed.up_for is not None and observed.up_for is not None
    assert deployed.up_for <= observed.up_for

    # the same release again: nothing restarts, and the state says how long it has run
    again = await provider.deploy(release(web, "r1"), instance)
    assert again is not None and again.identity == observed.identity
    assert again.up_for is not None and again.up_for >= observed.up_for

    # wait: false looks at nothing, so it reports nothing
    quick = make_resource(environment, "Service", "web",
                          rolling_web(test_images["v2"], port, wait=False))
    assert await provider.deploy(release(quick, "r2"), instance) is None


async def test_a_replica_deploy_returns_after_one_poll_that_sees_it_running(
    make_provider: Any, environment: str, test_images: dict[str, str]
) -> None:
    """No second poll 100 ms later: the gate that follows watches the container."""
    provider = make_provider()
    web = make_resource(environment, "Service", "web",
                        rolling_web(test_images["v1"], free_port()))
    [instance] = await provider.instances(web)
    project = replica_project(project_name(web), 1)
    engine = provider.host.engine
    real = engine.containers
    reads: list[float] = []

    async def counted(labels: dict[str, str]) -> list[dict[str, Any]]:
        if labels == {PROJECT_LABEL: project}:
            reads.append(time.monotonic())
        return await real(labels)

    engine.containers = counted  # type: ignore[method-assign]
    try:
        state = await provider.deploy(release(web, "r1"), instance)
    finally:
        engine.containers = real  # type: ignore[method-assign]
    # one read of the replica's project before its `up` (is it deployed already?), one after
    assert len(reads) == 2, reads
    assert state is not None and state.running and state.health is Health.UNKNOWN


async def test_a_container_dying_after_one_poll_fails_the_gate_with_its_exit_code(
    make_provider: Any, environment: str, test_images: dict[str, str], docker_cli: Any
) -> None:
    """The deploy returns on one poll; the gate started from its state sees the exit. The
    container exits when told to (a file appears), after the deploy returned: not when a timer
    runs out, which a loaded machine's late first poll could outlive (seen in CI)."""
    from reconciler.rollout.gate import departure

    provider = make_provider()
    script = ("echo compose says bye; while [ ! -e /tmp/die ]; do sleep 0.05; done; "
              "echo told to go; exit 3")
    web = make_resource(environment, "Service", "web", rolling_web(
        test_images["v1"], free_port(), restart="no", command=["sh", "-c", script]))
    [instance] = await provider.instances(web)
    deployed = await provider.deploy(release(web, "r1"), instance)
    assert deployed is not None and deployed.running and deployed.identity.container_id
    docker_cli("exec", deployed.identity.container_id, "touch", "/tmp/die")
    deadline = time.monotonic() + 20
    now = await provider.observe_instance(web, instance)
    while now.running and time.monotonic() < deadline:
        await asyncio.sleep(0.1)
        now = await provider.observe_instance(web, instance)
    assert departure(deployed, now) == "exited with code 3"
    assert "compose says bye" in now.last_output
