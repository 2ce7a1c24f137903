"""The compose provider against the real dockerd (compose v1 and v2)."""

from __future__ import annotations

import asyncio
import contextlib
import posixpath
from pathlib import Path
from typing import Any

import pytest

from reconciler.errors import ProviderError
from reconciler.providers import Instance
from reconciler.providers.compose.engine import CliEngine
from reconciler.providers.compose.provider import ComposeProvider
from reconciler.providers.compose.render import project_name
from reconciler.transport.local import LocalTransport
from tests.helpers import need
from tests.infra.testinfra import Infra
from tests.providers.compose.conftest import (
    eventually,
    free_port,
    http_get,
    make_resource,
    release,
)

pytestmark = [pytest.mark.integration, pytest.mark.timeout(90)]


def web_spec(image: str, port: int, **compose: Any) -> dict[str, Any]:
    """An httpd that serves /data, where it records each boot and the image's version."""
    script = (
        "echo booting web && echo boot >> /data/boots && cp /www/index.html /data/version"
        " && echo ok > /data/health"
        f" && exec httpd -f -v -p 127.0.0.1:{port} -h /data"
    )
    section: dict[str, Any] = {
        "image": image,
        "pullPolicy": "never",
        "networkMode": "host",
        "command": ["/bin/sh", "-c", script],
        "volumes": ["data:/data"],
        "healthcheck": {
            "test": ["wget", "-q", "-O", "/dev/null", f"http://127.0.0.1:{port}/health"],
            "interval": "500ms",
            "timeout": "2s",
            "retries": 2,
        },
        "stopGracePeriod": "2s",
        "waitTimeout": "30s",
    }
    section.update(compose)
    return {"compose": section}


async def only_state(provider: ComposeProvider, resource: Any) -> Any:
    states = await provider.observe(resource)
    assert len(states) == 1, states
    return states[0]


async def test_deploy_observe_logs_and_idempotent_redeploy(make_provider, environment, test_images):
    port = free_port()
    provider = make_provider()
    service = make_resource(environment, "Service", "web", web_spec(test_images["v1"], port))
    (instance,) = await provider.instances(service)
    assert instance.id == "web-1" and instance.address == "127.0.0.1"

    await provider.deploy(release(service, "r1"), instance)

    assert await http_get(port, "/version") == (200, "version v1\n")
    state = await only_state(provider, service)
    assert state.revision == "r1" and state.running, state
    assert state.facts["health"] == "healthy"
    assert state.facts["image"] == test_images["v1"]
    assert state.facts["restart_count"] == 0
    assert state.facts["compose_revision"].startswith(test_images["v1"] + "#")
    container_id = state.facts["container_id"]

    lines = await provider.logs(service, instance, tail=50)
    assert "booting web" in lines, lines
    assert any("response:200" in line for line in lines), lines  # httpd -v, on stderr

    # Same release again: nothing is recreated.
    await provider.deploy(release(service, "r1"), instance)
    assert (await only_state(provider, service)).facts["container_id"] == container_id


async def test_update_rollback_keep_volume(make_provider, environment, test_images):
    port = free_port()
    provider = make_provider()
    v1 = make_resource(environment, "Service", "web", web_spec(test_images["v1"], port))
    v2 = make_resource(environment, "Service", "web", web_spec(test_images["v2"], port))
    (instance,) = await provider.instances(v1)

    await provider.deploy(release(v1, "r1"), instance)
    first = await only_state(provider, v1)
    await provider.deploy(release(v2, "r2"), instance)
    assert await http_get(port, "/version") == (200, "version v2\n")
    second = await only_state(provider, v2)
    assert second.revision == "r2" and second.facts["image"] == test_images["v2"]
    assert second.facts["compose_revision"] != first.facts["compose_revision"]
    assert second.facts["container_id"] != first.facts["container_id"]

    # Rollback = the previous Release again.
    await provider.deploy(release(v1, "r1"), instance)
    assert await http_get(port, "/version") == (200, "version v1\n")
    third = await only_state(provider, v1)
    assert (
        third.revision == "r1"
        and third.facts["compose_revision"] == first.facts["compose_revision"]
    )
    # The named volume outlived both replacements: three boots recorded in it.
    assert await http_get(port, "/boots") == (200, "boot\nboot\nboot\n")


async def test_unhealthy_container_fails_deploy_and_shows_in_facts(
    make_provider, environment, test_images
):
    port = free_port()
    provider = make_provider()
    spec = web_spec(test_images["v1"], port, waitTimeout="20s")
    spec["compose"]["healthcheck"]["test"] = [
        "wget",
        "-q",
        "-O",
        "/dev/null",
        f"http://127.0.0.1:{port}/no-such-page",
    ]
    service = make_resource(environment, "Service", "web", spec)
    (instance,) = await provider.instances(service)

    with pytest.raises(ProviderError, match="unhealthy"):
        await provider.deploy(release(service, "r1"), instance)

    state = await only_state(provider, service)
    assert state.running and state.revision == "r1"
    assert state.facts["health"] == "unhealthy"
    assert state.facts["health_failing_streak"] >= 2
    assert "unhealthy" in state.detail


async def test_crash_looping_container_fails_deploy_fast(make_provider, environment, test_images):
    provider = make_provider()
    spec = web_spec(test_images["v1"], free_port(), waitTimeout="30s")
    spec["compose"]["command"] = [
        "/bin/sh",
        "-c",
        "echo starting; exit 3",
    ]  # restart: unless-stopped
    service = make_resource(environment, "Service", "web", spec)
    (instance,) = await provider.instances(service)
    loop = asyncio.get_running_loop()
    started = loop.time()
    with pytest.raises(ProviderError, match="exit code 3"):
        await provider.deploy(release(service, "r1"), instance)
    assert loop.time() - started < 15  # not the 30 s wait timeout
    (state,) = await provider.observe(service)
    assert state.revision == "r1" and (not state.running or state.facts["restart_count"] >= 1)


async def test_deploy_without_wait_returns_once_started(make_provider, environment, test_images):
    port = free_port()
    provider = make_provider()
    spec = web_spec(test_images["v1"], port, wait=False)
    spec["compose"]["healthcheck"]["test"] = ["false"]
    service = make_resource(environment, "Service", "web", spec)
    (instance,) = await provider.instances(service)

    await provider.deploy(release(service, "r1"), instance)  # does not wait for health

    async def unhealthy() -> bool:
        return (await only_state(provider, service)).facts["health"] == "unhealthy"

    await eventually(unhealthy)


async def test_fresh_provider_observes_running_revision(make_provider, environment, test_images):
    port = free_port()
    first = make_provider()
    service = make_resource(environment, "Service", "web", web_spec(test_images["v2"], port))
    (instance,) = await first.instances(service)
    await first.deploy(release(service, "r7"), instance)
    await first.close()

    restarted = make_provider()  # nothing cached: everything comes from Docker's labels
    state = await only_state(restarted, service)
    assert state.revision == "r7" and state.running and state.facts["health"] == "healthy"
    # and it keeps operating the project it did not create
    await restarted.deploy(release(service, "r7"), instance)
    assert (await only_state(restarted, service)).facts["container_id"] == state.facts[
        "container_id"
    ]


async def test_container_removed_or_replaced_by_hand_is_drift(
    make_provider, environment, test_images, docker_cli
):
    port = free_port()
    provider = make_provider()
    service = make_resource(environment, "Service", "web", web_spec(test_images["v1"], port))
    (instance,) = await provider.instances(service)
    await provider.deploy(release(service, "r1"), instance)
    state = await only_state(provider, service)

    # Removed by hand: the instance is missing.
    docker_cli("rm", "-f", state.facts["container_id"])
    missing = await only_state(provider, service)
    assert missing.revision is None and not missing.running
    assert missing.detail == "container missing" and missing.facts["present"] is False

    # Replaced by hand with another image under the same compose labels (and even our revision
    # label copied over): the revision no longer matches what runs.
    labels = {
        "com.docker.compose.project": project_name(service),
        "com.docker.compose.service": "web",
        "com.docker.compose.container-number": "1",
        "dev.fraisier.revision": "r1",
        "dev.fraisier.image": test_images["v1"],
    }
    impostor = f"{project_name(service)}-impostor"
    label_args = [a for k, v in labels.items() for a in ("--label", f"{k}={v}")]
    docker_cli("run", "-d", "--name", impostor, "--network", "host", "--init", *label_args,
               test_images["v2"], "sleep", "300")
    try:
        drifted = await only_state(provider, service)
        # what the daemon's self-heal compares: running, but not the applied revision
        assert drifted.running and drifted.revision == f"unmanaged:{test_images['v2']}"
        assert test_images["v2"] in drifted.detail

        # Reconciling again puts the declared revision back.
        docker_cli("rm", "-f", impostor)
        await provider.deploy(release(service, "r1"), instance)
        healed = await only_state(provider, service)
        assert healed.revision == "r1" and healed.running
        assert await http_get(port, "/version") == (200, "version v1\n")
    finally:
        docker_cli("rm", "-f", impostor, check=False)


async def test_job_run_exit_code_output_and_secret_env(
    make_provider, environment, test_images, tmp_path
):
    provider = make_provider()
    script = "echo out-line; echo err-line >&2; echo token=$TOKEN; exit ${CODE}"
    spec = {
        "command": ["/bin/sh", "-c", script],
        "env": {"CODE": "3", "TOKEN": {"env": "JOB_TOKEN"}},
        "timeout": "30s",
        "compose": {"image": test_images["v1"], "pullPolicy": "never", "networkMode": "host"},
    }
    job = make_resource(environment, "Job", "migrate", spec)
    (instance,) = await provider.instances(job)

    result = await provider.run(release(job, "j1", env={"CODE": "3", "TOKEN": "s3cr3t"}), instance)
    assert result.exit_code == 3
    assert "out-line" in result.output and "err-line" in result.output
    assert "token=s3cr3t" in result.output  # the secret reached the container ...
    state_files = list((tmp_path / "state").rglob("compose.yaml"))
    assert state_files and all("s3cr3t" not in p.read_text() for p in state_files)  # ... no file
    (failed,) = await provider.observe(job)
    assert failed.revision is None and failed.facts["last_exit_code"] == 3
    assert "last run exited 3" in failed.detail

    ok_job = make_resource(
        environment, "Job", "migrate", {**spec, "env": {"CODE": "0", "TOKEN": "x"}}
    )
    result = await provider.run(release(ok_job, "j2", env={"CODE": "0", "TOKEN": "x"}), instance)
    assert result.exit_code == 0
    (done,) = await provider.observe(ok_job)
    assert done.revision == "j2" and not done.running and done.facts["last_exit_code"] == 0
    assert "out-line" in await provider.logs(ok_job, instance)
    # The run containers are gone.
    assert await provider.engine.containers({"com.docker.compose.project": project_name(job)}) == []


async def test_schedule_run_timeout_kills_the_run(make_provider, environment, test_images):
    provider = make_provider()
    spec = {
        "command": ["/bin/sh", "-c", "echo started; sleep 60"],
        "timeout": "1s",
        "compose": {"image": test_images["v1"], "pullPolicy": "never", "networkMode": "host"},
    }
    spec["schedule"] = "*/5 * * * *"
    job = make_resource(environment, "Schedule", "slow", spec)
    (instance,) = await provider.instances(job)
    project = {"com.docker.compose.project": project_name(job)}
    # Deploying a Schedule installs it (the daemon's scheduler runs it): nothing starts.
    await provider.deploy(release(job, "j1"), instance)
    (installed,) = await provider.observe(job)
    assert installed.revision == "j1" and not installed.running
    assert await provider.engine.containers(project) == []

    loop = asyncio.get_running_loop()
    started = loop.time()
    result = await provider.run(release(job, "j1"), instance)
    assert result.exit_code == 124 and "started" in result.output and "timed out" in result.output
    assert loop.time() - started < 20
    assert await provider.engine.containers(project) == []
    (after,) = await provider.observe(job)
    assert after.facts["last_exit_code"] == 124 and after.revision == "j1"


async def test_remove_keeps_volumes_unless_asked(
    make_provider, environment, test_images, docker_cli
):
    port = free_port()
    provider = make_provider()
    service = make_resource(environment, "Service", "web", web_spec(test_images["v1"], port))
    (instance,) = await provider.instances(service)
    project = project_name(service)
    volume_filter = ("--filter", f"label=com.docker.compose.project={project}")

    await provider.deploy(release(service, "r1"), instance)
    await provider.remove(service, instance)
    gone = await only_state(provider, service)
    assert gone.detail == "container missing" and not gone.running
    volumes = docker_cli("volume", "ls", "-q", *volume_filter).split()
    assert len(volumes) == 1  # the data volume survived the removal

    await provider.deploy(release(service, "r1"), instance)
    assert await http_get(port, "/boots") == (200, "boot\nboot\n")  # same volume, second boot
    purge = make_resource(
        environment, "Service", "web", web_spec(test_images["v1"], port, removeVolumes=True)
    )
    await provider.remove(purge, instance)
    assert docker_cli("volume", "ls", "-q", *volume_filter).split() == []
    assert not Path(provider.state_root, project).exists()
    await provider.remove(purge, instance)  # idempotent


async def test_stop_keeps_the_container(make_provider, environment, test_images):
    port = free_port()
    provider = make_provider()
    service = make_resource(environment, "Service", "web", web_spec(test_images["v1"], port))
    (instance,) = await provider.instances(service)
    await provider.deploy(release(service, "r1"), instance)
    await provider.stop(service, instance)
    state = await only_state(provider, service)
    assert not state.running and state.revision == "r1" and state.facts["status"] == "exited"
    await provider.deploy(release(service, "r1"), instance)  # started again
    assert (await only_state(provider, service)).running


async def test_compose_file_reference_with_replicas(make_provider, environment, test_images):
    port = free_port()
    provider = make_provider()
    compose_file = f"""
services:
  web:
    image: {test_images["v2"]}
    network_mode: host
    init: true
    command: ["/bin/busybox", "httpd", "-f", "-p", "127.0.0.1:{port}", "-h", "/site"]
    volumes: ["./site:/site:ro"]
    depends_on: [worker]
  worker:
    image: {test_images["v1"]}
    network_mode: host
    init: true
    command: ["/bin/sh", "-c", "echo tick $$HOSTNAME; exec sleep 300"]
    labels: [team=core]
  unused:
    image: does-not-exist:0
"""

    async def export(dest: Path) -> None:
        (dest / "stack").mkdir()
        (dest / "stack" / "compose.yaml").write_text(compose_file)
        (dest / "stack" / "site").mkdir()
        (dest / "stack" / "site" / "index.html").write_text("from the release\n")

    spec = {
        "source": {"path": "stack"},
        "compose": {
            "file": "stack/compose.yaml",
            "services": ["worker", "web"],
            "pullPolicy": "never",
        },
    }
    service = make_resource(environment, "Service", "stack", spec)
    instances = await provider.instances(service)
    assert [i.id for i in instances] == ["worker-1", "web-1"]
    for instance in instances:
        await provider.deploy(release(service, "s1", export=export), instance)

    states = {s.instance.id: s for s in await provider.observe(service)}
    assert set(states) == {"worker-1", "web-1"}
    assert all(s.revision == "s1" and s.running for s in states.values())
    assert states["web-1"].facts["image"] == test_images["v2"]
    # ./site resolved next to the compose file, in the release's exported files
    assert await http_get(port, "/index.html") == (200, "from the release\n")

    async def ticked() -> bool:  # the worker's deploy returned once it ran: it ticks soon after
        return any(line.startswith("tick ") for line in await provider.logs(service, instances[0]))

    await eventually(ticked, timeout=10)

    # replicas: 2 scales both listed services; two httpds cannot bind the same host port, so
    # one of the two web replicas (whichever lost the race) fails, visibly per instance.
    scaled = make_resource(
        environment, "Service", "stack", {**spec, "compose": {**spec["compose"], "replicas": 2}}
    )
    with contextlib.suppress(ProviderError):  # the wait may or may not see the loser exit
        await provider.deploy(release(scaled, "s2", export=export), Instance("worker-1"))

    async def one_web_failed() -> bool:
        states = {s.instance.id: s for s in await provider.observe(scaled)}
        statuses = sorted(str(states[i].facts.get("status")) for i in ("web-1", "web-2"))
        return statuses == ["exited", "running"]

    await eventually(one_web_failed)
    states = {s.instance.id: s for s in await provider.observe(scaled)}
    assert set(states) == {"worker-1", "worker-2", "web-1", "web-2"}
    assert all(states[i].running and states[i].revision == "s2" for i in ("worker-1", "worker-2"))
    failed = [states[i] for i in ("web-1", "web-2") if not states[i].running]
    assert len(failed) == 1 and "exit code 1" in failed[0].detail


async def test_observe_through_the_docker_cli(
    make_provider, environment, test_images, docker_engine: Infra
):
    """The engine reader used for ssh:// hosts (docker CLI through a transport) sees the same."""
    port = free_port()
    provider = make_provider()
    service = make_resource(environment, "Service", "web", web_spec(test_images["v1"], port))
    (instance,) = await provider.instances(service)
    await provider.deploy(release(service, "r1"), instance)
    via_api = await only_state(provider, service)

    transport = LocalTransport()
    cli_provider = ComposeProvider(
        provider.target,
        provider.ctx,
        transport,
        CliEngine(transport, [docker_engine.docker_cli]),
        state_root=provider.state_root,
        base_env=provider.base_env,
    )
    via_cli = await only_state(cli_provider, service)
    assert via_cli.revision == via_api.revision == "r1"
    assert (
        via_cli.facts["health"] == "healthy"
        and via_cli.facts["container_id"] == via_api.facts["container_id"]
    )
    await http_get(port, "/version")
    assert "booting web" in await cli_provider.logs(service, instance)
    await cli_provider.stop(service, instance)
    assert not (await only_state(provider, service)).running


async def test_pull_policy_never_refuses_a_missing_image(make_provider, environment):
    provider = make_provider()
    spec = {
        "compose": {"image": "fraisier-not-built:0", "pullPolicy": "never", "networkMode": "host"}
    }
    service = make_resource(environment, "Service", "web", spec)
    (instance,) = await provider.instances(service)
    with pytest.raises(ProviderError, match="fraisier-not-built:0"):
        await provider.deploy(release(service, "r1"), instance)
    (state,) = await provider.observe(service)
    assert state.detail == "container missing"


@pytest.mark.timeout(30)
async def test_compose_cli_detection(docker_engine: Infra):
    from reconciler.providers.compose.cli import detect
    from reconciler.providers.compose.host import local_base_env

    transport = LocalTransport()
    env = local_base_env(docker_engine.docker_host)
    for version in ("v1", "v2"):
        argv = docker_engine.compose_argv(version)
        need(argv is not None, f"compose {version} not installed")
        assert argv is not None
        cli = await detect(transport, "auto", argv, env)  # explicit command: version is read
        assert cli.is_v2 == (version == "v2") and cli.command == tuple(argv)
    auto = await detect(transport, "auto", None, env)
    assert auto.major in (1, 2)
    with pytest.raises(ProviderError, match="does not answer"):
        await detect(transport, "auto", ["/nonexistent/docker-compose"], env)
    with pytest.raises(ProviderError, match="auto, v2 or v1"):
        await detect(transport, "v3", None, env)


@pytest.mark.timeout(60)
async def test_compose_plugin_runs_standalone(docker_engine: Infra, tmp_path: Path):
    """`docker compose` found: its plugin binary runs standalone (no docker CLI start-up per
    call), looked up as the docker CLI does; one answering another version is passed over."""
    from reconciler.providers.compose.cli import (
        PLUGIN,
        SYSTEM_PLUGIN_DIRS,
        _standalone_plugin,
        detect,
    )
    from reconciler.providers.compose.host import local_base_env

    transport = LocalTransport()
    home = tmp_path / "home"
    env = {**local_base_env(docker_engine.docker_host), "HOME": str(home)}
    env.pop("DOCKER_CONFIG", None)
    found = await transport.run([*PLUGIN, "version", "--short"], env=env, timeout=15)
    need(found.ok, "the docker compose plugin is not installed")
    cli = await detect(transport, "v2", None, env)
    assert cli.is_v2
    assert cli.command[0].endswith("/docker-compose") and len(cli.command) == 1
    assert posixpath.dirname(cli.command[0]) in SYSTEM_PLUGIN_DIRS
    assert cli.version == found.stdout.decode().strip().splitlines()[-1]
    result = await transport.run([*cli.command, "ls", "--all"], env=env, timeout=30)
    assert result.ok, result.text()

    # ~/.docker/cli-plugins comes first, as for the docker CLI
    plugins = home / ".docker" / "cli-plugins"
    plugins.mkdir(parents=True)
    (plugins / "docker-compose").symlink_to(cli.command[0])
    assert (await detect(transport, "v2", None, env)).command == (str(plugins / "docker-compose"),)
    # a binary answering another version than `docker compose` is not taken for it
    assert await _standalone_plugin(transport, "0.0.0-other", env) == PLUGIN
    # DOCKER_CONFIG replaces ~/.docker
    config = tmp_path / "config"
    (config / "cli-plugins").mkdir(parents=True)
    env["DOCKER_CONFIG"] = str(config)
    assert (await detect(transport, "v2", None, env)).command == cli.command


@pytest.mark.timeout(60)
async def test_compose_plugin_binary_found_without_the_docker_cli(docker_engine: Infra,
                                                                  tmp_path: Path):
    """The detection on the way to a first deploy finds the plugin's binary where the docker
    CLI would, without starting the docker CLI (`docker compose version`); the same CLI as
    through it. Only when the docker CLI's config names plugin folders of its own
    (cliPluginsExtraDirs), which only it reads, does `docker compose` answer first."""
    from reconciler.providers.compose.cli import PLUGIN, _standalone_plugin, detect
    from reconciler.providers.compose.host import local_base_env

    env = {**local_base_env(docker_engine.docker_host), "HOME": str(tmp_path)}
    env.pop("DOCKER_CONFIG", None)
    plain = LocalTransport()
    found = await plain.run([*PLUGIN, "version", "--short"], env=env, timeout=15)
    need(found.ok, "the docker compose plugin is not installed")
    version = found.stdout.decode().strip().splitlines()[-1]
    ran: list[tuple[str, ...]] = []

    class Recording(LocalTransport):
        async def run(self, argv: Any, **kwargs: Any) -> Any:
            ran.append(tuple(argv))
            return await super().run(argv, **kwargs)

    cli = await detect(Recording(), "auto", None, env)
    assert cli.version == version and cli.is_v2
    assert cli.command == await _standalone_plugin(plain, version, env) != PLUGIN
    assert (*PLUGIN, "version", "--short") not in ran, ran

    config = tmp_path / ".docker"
    config.mkdir()
    (config / "config.json").write_text('{"cliPluginsExtraDirs": ["/nonexistent/plugins"]}')
    ran.clear()
    assert await detect(Recording(), "auto", None, env) == cli
    assert (*PLUGIN, "version", "--short") in ran, ran


async def test_stop_ends_a_job_run_in_progress(make_provider, environment, test_images):
    provider = make_provider()
    spec = {
        "command": ["/bin/sh", "-c", "echo working; exec sleep 60"],
        "timeout": "60s",
        "stopTimeout": "1s",
        "compose": {"image": test_images["v1"], "pullPolicy": "never", "networkMode": "host"},
    }
    job = make_resource(environment, "Job", "long", spec)
    (instance,) = await provider.instances(job)
    run = asyncio.create_task(provider.run(release(job, "j1"), instance))

    async def running() -> bool:
        (state,) = await provider.observe(job)
        return state.running and state.facts["active_runs"] == 1

    await eventually(running)

    async def said_working() -> bool:  # the live run's output, once its shell has written it
        return "working" in await provider.logs(job, instance)

    # (the engine answers within ms of the start: the echo may not have run yet)
    await eventually(said_working)
    await provider.stop(job, instance)
    result = await asyncio.wait_for(run, 20)
    assert result.exit_code in (137, 143) and "working" in result.output
    (state,) = await provider.observe(job)
    assert not state.running and state.revision is None
