"""Per-replica compose projects (strategies rolling and canary) against the real dockerd."""

from __future__ import annotations

import asyncio
import contextlib
import random
from pathlib import Path
from typing import Any

import pytest

from reconciler.errors import ProviderError
from reconciler.providers import Instance
from reconciler.providers.compose.engine import CliEngine
from reconciler.providers.compose.provider import ComposeProvider
from reconciler.providers.compose.render import project_name, replica_project
from reconciler.transport.local import LocalTransport
from tests.helpers import port_free
from tests.providers.compose.conftest import eventually, http_get, make_resource, release

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]


def port_prefix(count: int) -> int:
    """A number P such that 127.0.0.1:P1 .. P<count> are free (``{replica}`` appended).

    The ports lie below the kernel's ephemeral range: a port found free there could be handed to
    any other process's connection or bind(0) (other tests' free_port) before compose binds it.
    """
    ephemeral_low = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    for _ in range(200):
        prefix = random.randint(2000, ephemeral_low // 10 - 1)
        if all(port_free(prefix * 10 + n) for n in range(1, count + 1)):
            return prefix
    raise AssertionError("no free port range")


def web_spec(image: str, prefix: int, count: int, **compose: Any) -> dict[str, Any]:
    """An httpd per replica on 127.0.0.1:<prefix><replica>, serving the image's version and the
    replica number it was given through the environment."""
    script = (
        "mkdir -p /srv && cp /www/index.html /srv/version && echo $REPLICA > /srv/replica"
        " && exec httpd -f -p 127.0.0.1:" + str(prefix) + "{replica} -h /srv"
    )
    section: dict[str, Any] = {
        "image": image,
        "pullPolicy": "never",
        "networkMode": "host",
        "replicas": count,
        "command": ["/bin/sh", "-c", script],
        "environment": {"REPLICA": "{replica}"},
        "healthcheck": {
            "test": [
                "wget",
                "-q",
                "-O",
                "/dev/null",
                f"http://127.0.0.1:{prefix}{{replica}}/version",
            ],
            "interval": "300ms",
            "timeout": "2s",
            "retries": 3,
        },
        "stopGracePeriod": "2s",
        "waitTimeout": "30s",
    }
    section.update(compose)
    return {"strategy": {"type": "rolling", "maxParallel": 2}, "compose": section}


def by_id(states: list[Any]) -> dict[str, Any]:
    return {s.instance.id: s for s in states}


async def observe_instance_agrees(provider: ComposeProvider, resource: Any) -> None:
    """``observe_instance`` (the health gate's look at one replica: its own project only)
    reports every replica as ``observe`` (every container of the resource) does; Docker's
    healthcheck goes on between the two looks, so how far its streak got is not compared
    (a CI rehearsal saw a failing streak of 3, then 4)."""
    full = by_id(await provider.observe(resource))

    def steady(facts: dict[str, Any]) -> dict[str, Any]:
        return {k: v for k, v in facts.items()
                if k not in ("health_failing_streak", "health_last_output")}

    for instance in await provider.instances(resource):
        one = await provider.observe_instance(resource, instance)
        want = full[instance.id]
        assert (one.instance, one.revision, one.running, steady(one.facts)) == (
            want.instance, want.revision, want.running, steady(want.facts)
        ), instance.id  # fmt: skip
        assert one.detail.split(" (")[0] == want.detail.split(" (")[0], instance.id


async def test_replicas_are_deployed_stopped_and_removed_one_by_one(
    make_provider, environment, test_images
):
    prefix = port_prefix(3)
    provider: ComposeProvider = make_provider()
    v1 = make_resource(environment, "Service", "web", web_spec(test_images["v1"], prefix, 3))
    v2 = make_resource(environment, "Service", "web", web_spec(test_images["v2"], prefix, 3))
    base = project_name(v1)
    instances = await provider.instances(v1)
    assert [i.id for i in instances] == ["web-1", "web-2", "web-3"]
    assert [i.labels["project"] for i in instances] == [replica_project(base, n) for n in (1, 2, 3)]
    assert [i.labels["replica"] for i in instances] == ["1", "2", "3"]

    # A batch deployed concurrently (one Release object, as the rollout engine passes it).
    first = release(v1, "r1")
    await asyncio.gather(*(provider.deploy(first, i) for i in instances))
    states = by_id(await provider.observe(v1))
    assert set(states) == {"web-1", "web-2", "web-3"}
    assert all(s.revision == "r1" and s.running for s in states.values()), states
    for n in (1, 2, 3):
        assert await http_get(prefix * 10 + n, "/version") == (200, "version v1\n")
        assert await http_get(prefix * 10 + n, "/replica") == (200, f"{n}\n")
    assert {states[f"web-{n}"].facts["project"] for n in (1, 2, 3)} == {
        replica_project(base, n) for n in (1, 2, 3)
    }
    await observe_instance_agrees(provider, v1)
    ids = {i: s.facts["container_id"] for i, s in states.items()}

    # One replica to r2: only its container is replaced, the others keep running r1.
    await provider.deploy(release(v2, "r2"), instances[1])
    states = by_id(await provider.observe(v2))
    assert [states[f"web-{n}"].revision for n in (1, 2, 3)] == ["r1", "r2", "r1"]
    assert all(s.running and s.facts["health"] == "healthy" for s in states.values())
    assert states["web-1"].facts["container_id"] == ids["web-1"]
    assert states["web-3"].facts["container_id"] == ids["web-3"]
    assert states["web-2"].facts["container_id"] != ids["web-2"]
    assert await http_get(prefix * 10 + 2, "/version") == (200, "version v2\n")
    assert await http_get(prefix * 10 + 1, "/version") == (200, "version v1\n")
    assert states["web-2"].facts["compose_revision"] != states["web-1"].facts["compose_revision"]
    # the same release again: nothing recreated
    await provider.deploy(release(v2, "r2"), instances[1])
    assert (
        by_id(await provider.observe(v2))["web-2"].facts["container_id"]
        == (states["web-2"].facts["container_id"])
    )

    # A replica that turns unhealthy fails its own deploy; the previous release (what a rollback
    # redeploys) brings it back; the other replicas are not touched meanwhile.
    bad_spec = web_spec(test_images["v2"], prefix, 3)
    bad_spec["compose"]["healthcheck"]["test"][-1] += "-missing"
    bad = make_resource(environment, "Service", "web", bad_spec)
    with pytest.raises(ProviderError, match="unhealthy"):
        await provider.deploy(release(bad, "r-bad"), instances[1])
    states = by_id(await provider.observe(bad))
    assert states["web-2"].revision == "r-bad" and states["web-2"].facts["health"] == "unhealthy"
    await observe_instance_agrees(provider, bad)
    assert states["web-1"].facts["container_id"] == ids["web-1"] and states["web-1"].running
    await provider.deploy(release(v2, "r2"), instances[1])
    assert by_id(await provider.observe(v2))["web-2"].revision == "r2"

    # stop one replica: the others keep serving
    await provider.stop(v2, instances[2])
    states = by_id(await provider.observe(v2))
    assert not states["web-3"].running and states["web-3"].revision == "r1"
    assert states["web-1"].running and states["web-2"].running
    # remove one replica: it is missing, the others untouched, and it comes back on deploy
    await provider.remove(v2, instances[0])
    states = by_id(await provider.observe(v2))
    assert states["web-1"].detail == "container missing" and not states["web-1"].running
    await observe_instance_agrees(provider, v2)
    assert states["web-2"].facts["container_id"] != ids["web-2"] and states["web-2"].running
    assert Path(provider.state_root, base).is_dir()
    await provider.deploy(release(v2, "r2"), instances[0])
    assert await http_get(prefix * 10 + 1, "/version") == (200, "version v2\n")

    # Scaled down to two replicas: the third replica's project goes with the next deploy.
    two = make_resource(environment, "Service", "web", web_spec(test_images["v2"], prefix, 2))
    await provider.deploy(release(two, "r3"), (await provider.instances(two))[0])
    states = by_id(await provider.observe(two))
    assert set(states) == {"web-1", "web-2"}, states
    assert (
        await provider.engine.containers({"com.docker.compose.project": replica_project(base, 3)})
        == []
    )

    # removing a replica beyond the count is allowed (and idempotent); deploying one is not
    beyond = Instance("web-3", "127.0.0.1", {"service": "web", "replica": "3"})
    await provider.remove(two, beyond)
    with pytest.raises(ProviderError, match="not an instance"):
        await provider.deploy(release(two, "r3"), beyond)
    assert set(by_id(await provider.observe(two))) == {"web-1", "web-2"}

    # Removing every replica removes the resource's files too.
    await asyncio.gather(*(provider.remove(two, i) for i in await provider.instances(two)))
    assert await provider.engine.containers({"dev.fraisier.resource": str(two.key)}) == []
    assert not Path(provider.state_root, base).exists()


async def test_strategy_change_moves_replicas_without_duplicates(
    make_provider, environment, test_images, docker_cli, docker_engine
):
    provider: ComposeProvider = make_provider()
    script = (
        "echo boot >> /data/boots; echo boots=$(wc -l < /data/boots) replica={replica};"
        " exec sleep 300"
    )

    def spec(image: str, strategy: str) -> dict[str, Any]:
        return {
            "strategy": {"type": strategy},
            "stopTimeout": "1s",
            "compose": {  # the default pull policy (missing), which compose v1 calls differently
                "image": image,
                "networkMode": "host",
                "replicas": 2,
                "command": ["/bin/sh", "-c", script if strategy == "rolling" else
                            script.replace(" replica={replica}", "")],
                "volumes": ["data:/data"],
            },
        }  # fmt: skip

    recreate = make_resource(environment, "Service", "worker", spec(test_images["v1"], "recreate"))
    rolling = make_resource(environment, "Service", "worker", spec(test_images["v2"], "rolling"))
    back = make_resource(environment, "Service", "worker", spec(test_images["v1"], "recreate"))
    base = project_name(recreate)
    owned = {"dev.fraisier.resource": str(recreate.key)}

    async def containers() -> list[dict[str, Any]]:
        return await provider.engine.containers(owned)

    for instance in await provider.instances(recreate):
        await provider.deploy(release(recreate, "r1"), instance)
    assert len(await containers()) == 2

    # Before any deploy in the new layout, both replicas are reported from the old one.
    states = by_id(await provider.observe(rolling))
    assert set(states) == {"worker-1", "worker-2"}
    assert all(s.revision == "r1" and s.facts["layout"] == "scaled" for s in states.values())

    second = release(rolling, "r2")
    instances = await provider.instances(rolling)
    await provider.deploy(second, instances[0])
    states = by_id(await provider.observe(rolling))
    assert set(states) == {"worker-1", "worker-2"}, states  # no unexpected duplicate
    assert (
        states["worker-1"].revision == "r2" and states["worker-1"].facts["layout"] == "per-replica"
    )
    assert states["worker-2"].revision == "r1" and states["worker-2"].facts["layout"] == "scaled"
    await observe_instance_agrees(provider, rolling)
    assert all(s.running for s in states.values())
    assert len(await containers()) == 2
    await provider.deploy(second, instances[1])
    running = await containers()
    assert sorted(c["Config"]["Labels"]["com.docker.compose.project"] for c in running) == [
        replica_project(base, 1),
        replica_project(base, 2),
    ]

    async def says_its_replica() -> bool:
        # a deploy returns once the container runs: its first line may come a moment later
        return "replica=2" in "\n".join(await provider.logs(rolling, instances[1]))

    await eventually(says_its_replica, timeout=10)
    # The docker-CLI engine (ssh:// hosts) lists the same labels as the engine API.
    cli_engine = CliEngine(LocalTransport(), [docker_engine.docker_cli])
    keys = ["com.docker.compose.project", "dev.fraisier.replica"]
    assert sorted(await cli_engine.labelled(owned, keys)) == sorted(
        await provider.engine.labelled(owned, keys)
    )
    assert sorted(labels["dev.fraisier.replica"] for _, labels in
                  await cli_engine.labelled(owned, keys)) == ["1", "2"]  # fmt: skip

    # And back: the replicas' projects make way for the scaled project.
    for instance in await provider.instances(back):
        await provider.deploy(release(back, "r3"), instance)
    running = await containers()
    assert len(running) == 2
    assert {c["Config"]["Labels"]["com.docker.compose.project"] for c in running} == {base}
    states = by_id(await provider.observe(back))
    assert set(states) == {"worker-1", "worker-2"}
    assert all(s.revision == "r3" and s.running for s in states.values())
    assert not Path(provider.state_root, base, "replicas", "1").exists()

    # One volume all along, shared by the replicas of every layout: six boots in it.
    project = f"label=com.docker.compose.project={base}"
    volumes = docker_cli("volume", "ls", "-q", "--filter", project)
    assert volumes.split() == [f"{base}_data"]
    # made for the project as compose makes its own (also through the docker CLI)
    made = f"{base}_made"
    await cli_engine.create_volume(made, {"com.docker.compose.project": base}, None, {})
    await cli_engine.create_volume(made, {"com.docker.compose.project": base}, None, {})  # exists
    assert made in await provider.engine.volumes({"com.docker.compose.project": base})
    await provider.engine.remove_volume(made)

    async def booted_six_times() -> bool:
        logs = [line for i in instances for line in await provider.logs(back, i)]
        return any(line.startswith("boots=6") for line in logs)

    await eventually(booted_six_times, timeout=10)


async def test_compose_file_replicas_share_one_export(make_provider, environment, test_images):
    """A compose file in the release's files, strategy canary: the files are exported once for
    the release (replicas deployed at once do not race over them), {replica} is replaced in the
    file's service, and its relative bind mount resolves in the release."""
    prefix = port_prefix(2)
    provider: ComposeProvider = make_provider()
    compose_file = f"""
services:
  web:
    image: {test_images["v1"]}
    network_mode: host
    init: true
    command: ["httpd", "-f", "-p", "127.0.0.1:{prefix}{{replica}}", "-h", "/site"]
    volumes: ["./site:/site:ro"]
"""
    exports: list[Path] = []

    async def export(dest: Path) -> None:
        exports.append(dest)
        await asyncio.sleep(0.2)  # a slow export: concurrent replicas would each start one
        (dest / "stack" / "site").mkdir(parents=True)
        (dest / "stack" / "compose.yaml").write_text(compose_file)
        (dest / "stack" / "site" / "index.html").write_text("from the release\n")

    spec = {
        "source": {"path": "stack"},
        "strategy": {"type": "canary", "steps": [{"setCanary": 1}]},
        "compose": {"file": "stack/compose.yaml", "services": ["web"], "replicas": 2},
    }
    service = make_resource(environment, "Service", "stack", spec)
    instances = await provider.instances(service)
    shared = release(service, "f1", export=export)
    await asyncio.gather(*(provider.deploy(shared, i) for i in instances))
    assert len(exports) == 1
    for n in (1, 2):
        # no healthcheck: deploy returns once the container runs (the gate that follows in a
        # rollout probes it), maybe before httpd listens
        async def served(port: int = prefix * 10 + n) -> bool:
            with contextlib.suppress(OSError):
                return await http_get(port, "/index.html") == (200, "from the release\n")
            return False

        await eventually(served, timeout=10)
    states = by_id(await provider.observe(service))
    assert set(states) == {"web-1", "web-2"}
    assert all(s.revision == "f1" and s.running for s in states.values())
