"""Services on real systemd+sshd test hosts: deploy, update, rollback, drift, host restarts."""

from __future__ import annotations

import asyncio
import json
import subprocess
import time
from typing import Any

import pytest

from reconciler.health import wait_healthy
from reconciler.providers import Instance, Provider, ProviderContext, load_provider, look_again
from reconciler.providers.bare_metal import SystemdSSHProvider, create_provider
from reconciler.providers.bare_metal.remote import DEFAULT_ROOT
from reconciler.providers.bare_metal.systemd import observe_batcher
from tests.providers.bare_metal.conftest import (
    ENV,
    HostApp,
    host_app_spec,
    make_resource,
    ssh_target_resource,
)

SERVICE_DIR = f"{DEFAULT_ROOT}/{ENV}/api"
UNIT = f"fraisier-{ENV}_api.service"


def unit_path() -> str:
    return f"/etc/systemd/system/{UNIT}"


async def deploy_all(provider: SystemdSSHProvider, release: Any) -> list[Instance]:
    instances = await provider.instances(release.resource)
    await asyncio.gather(*(provider.deploy(release, i) for i in instances))
    return instances


async def healthy_on(provider: SystemdSSHProvider, resource: Any, instance: Instance) -> None:
    """The Service's health check passes on ``instance`` (a deploy returns once started)."""
    state = await provider.observe_instance(resource, instance)
    result = await wait_healthy(resource.spec["health"], instance,
                                transport=provider.transport_for(instance),
                                cwd=state.working_dir)
    assert result.healthy, f"{instance.id}: {result.message}"


async def healthy_everywhere(provider: SystemdSSHProvider, resource: Any) -> None:
    for instance in await provider.instances(resource):
        states = {s.instance.id: s for s in await provider.observe(resource)}
        result = await wait_healthy(
            resource.spec["health"], instance, transport=provider.transport_for(instance),
            cwd=states[instance.id].working_dir,
        )
        assert result.healthy, f"{instance.id}: {result.message}"


@pytest.mark.timeout(120)
async def test_provider_from_target(ssh_hosts: Any, state_dir: Any) -> None:
    target = ssh_target_resource(ssh_hosts[:2], systemd={"restart": "always"})
    provider = load_provider(target, ProviderContext(state_dir=state_dir))
    assert isinstance(provider, SystemdSSHProvider)
    assert isinstance(provider, Provider)
    assert provider.capabilities.schedules_natively is True
    resource = make_resource("api", host_app_spec())
    instances = await provider.instances(resource)
    assert [(i.id, i.address) for i in instances] == [(h.name, h.address) for h in ssh_hosts[:2]]
    await provider.close()


@pytest.mark.timeout(90)
async def test_deploy_update_and_env_file(ssh_provider: SystemdSSHProvider, host_app: HostApp,
                                          ssh_hosts: Any) -> None:
    build = ["sh", "-c", 'printf %s "$TOKEN" >BUILT']  # a build sees the env, secrets too
    resource = make_resource("api", host_app_spec(env={"GREETING": "hello"}, build=build))
    secret = "s3cr3t value with $HOME and `x` and \"quotes\"\nline2"
    v1 = host_app.release(resource, "v1", env={"GREETING": "hello", "TOKEN": secret})
    await deploy_all(ssh_provider, v1)
    await healthy_everywhere(ssh_provider, resource)
    for host in ssh_hosts[:2]:
        assert await host_app.get(host.name) == (200, "v1 hello")
        # the env file is private and the secret never shows in the unit or the process argv
        assert host.sh(f"stat -c %a {SERVICE_DIR}/environment").strip() == "600"
        assert secret.split()[0] not in host.sh(f"cat {unit_path()}")
        pid = host.sh(f"systemctl show -p MainPID --value {UNIT}").strip()
        environ = host.run(["cat", f"/proc/{pid}/environ"]).stdout.split(b"\0")
        assert f"TOKEN={secret}".encode() in environ  # exact value, nothing expanded
        assert secret.split()[0].encode() not in host.run(["cat", f"/proc/{pid}/cmdline"]).stdout
        assert host.sh(f"systemctl is-enabled {UNIT}").strip() == "enabled"
        built = host.run(["cat", f"{SERVICE_DIR}/releases/v1/BUILT"]).stdout.decode()
        assert built == secret
    states = await ssh_provider.observe(resource)
    assert [(s.revision, s.running) for s in states] == [("v1", True), ("v1", True)]
    assert states[0].facts["active_state"] == "active"
    assert states[0].facts["main_pid"]

    # update: the new release is uploaded, `current` switched, the unit restarted
    v2 = host_app.release(resource, "v2", env={"GREETING": "hello"})
    await deploy_all(ssh_provider, v2)
    await healthy_everywhere(ssh_provider, resource)
    for host in ssh_hosts[:2]:
        assert await host_app.get(host.name) == (200, "v2 hello")
        assert host.sh(f"readlink {SERVICE_DIR}/current").strip() == "releases/v2"
        assert sorted(host.sh(f"ls {SERVICE_DIR}/releases").split()) == ["v1", "v2"]
    assert host_app.exports["v2"].calls == 1  # exported once, uploaded to both hosts
    states = await ssh_provider.observe(resource)
    assert {s.revision for s in states} == {"v2"}
    lines = await ssh_provider.logs(resource, states[0].instance, 20)
    assert any("listening on" in line and "revision v2" in line for line in lines), lines
    # everything above went over one pooled connection per host; close() ends them and a
    # later call opens a fresh one
    assert sorted(t.connects for t in ssh_provider.pool.transports) == [1, 1]
    old_pool = ssh_provider.pool
    await ssh_provider.close()
    assert old_pool.transports == []
    assert {s.revision for s in await ssh_provider.observe(resource)} == {"v2"}


@pytest.mark.timeout(90)
async def test_rollback_is_a_switch_without_upload(ssh_provider: SystemdSSHProvider,
                                                   host_app: HostApp, ssh_hosts: Any) -> None:
    resource = make_resource("api", host_app_spec())
    await deploy_all(ssh_provider, host_app.release(resource, "v1"))
    bad = make_resource("api", host_app_spec(env={"FAIL_HEALTH": "1"}))
    bad_release = host_app.release(bad, "v2", env={"FAIL_HEALTH": "1"})
    instances = await deploy_all(ssh_provider, bad_release)
    health = dict(bad.spec["health"], startPeriod="0s", failureThreshold=2)
    result = await wait_healthy(health, instances[0],
                                transport=ssh_provider.transport_for(instances[0]),
                                cwd=f"{SERVICE_DIR}/current")
    assert not result.healthy
    # roll back: the old release is still on the hosts, so nothing is exported or uploaded
    previous = host_app.release(resource, "v1")
    assert host_app.exports["v1"].calls == 1
    await deploy_all(ssh_provider, previous)
    assert host_app.exports["v1"].calls == 1
    await healthy_everywhere(ssh_provider, resource)
    for host in ssh_hosts[:2]:
        assert await host_app.get(host.name) == (200, "v1 ")
        assert host.sh(f"readlink {SERVICE_DIR}/current").strip() == "releases/v1"
        # the previous environment came back with the old release
        assert "FAIL_HEALTH" not in host.sh(f"cat {SERVICE_DIR}/environment")


@pytest.mark.timeout(90)
async def test_drift_detected_and_healed(ssh_provider: SystemdSSHProvider, host_app: HostApp,
                                         ssh_hosts: Any) -> None:
    resource = make_resource("api", host_app_spec())
    v1 = host_app.release(resource, "v1")
    v2 = host_app.release(resource, "v2")
    await deploy_all(ssh_provider, v1)
    await deploy_all(ssh_provider, v2)
    h1, h2 = ssh_hosts[:2]

    def by_host(states: list[Any]) -> dict[str, Any]:
        return {s.instance.id: s for s in states}

    # someone stops the service on host 1 and moves `current` back by hand on host 2
    h1.run(["systemctl", "stop", UNIT])
    h2.run(["ln", "-sfn", "releases/v1", f"{SERVICE_DIR}/current"])
    states = by_host(await ssh_provider.observe(resource))
    assert not states[h1.name].running
    assert states[h2.name].running and states[h2.name].revision != "v2"
    assert "current points at v1" in states[h2.name].detail

    # heal = deploy the applied revision again (what the daemon's self-heal does)
    await deploy_all(ssh_provider, v2)
    states = by_host(await ssh_provider.observe(resource))
    assert all(s.running and s.revision == "v2" for s in states.values()), states

    # a hand edit of the unit file is drift too, and a redeploy puts the rendered unit back
    h1.run(["sh", "-c", f"echo 'Environment=EDITED=1' >> {unit_path()}"])
    state = by_host(await ssh_provider.observe(resource))[h1.name]
    assert state.revision != "v2" and state.facts["unit_edited"], state
    await deploy_all(ssh_provider, v2)
    state = by_host(await ssh_provider.observe(resource))[h1.name]
    assert state.revision == "v2" and not state.facts["unit_edited"]
    assert "EDITED" not in h1.sh(f"cat {unit_path()}")
    assert host_app.exports["v2"].calls == 1


@pytest.mark.timeout(120)
async def test_host_restarted_mid_deploy_converges(ssh_provider: SystemdSSHProvider,
                                                   host_app: HostApp, ssh_hosts: Any,
                                                   testinfra: Any) -> None:
    resource = make_resource("api", host_app_spec())
    await deploy_all(ssh_provider, host_app.release(resource, "v1"))
    h1 = ssh_hosts[0]
    # a release big enough that the upload is still going when the host goes down
    folder = host_app.export("v2").source
    (folder / "data").mkdir()
    for i in range(800):
        (folder / "data" / f"f{i}.bin").write_bytes(bytes(range(256)) * 64)
    release = host_app.release(resource, "v2")
    deploy = asyncio.create_task(deploy_all(ssh_provider, release))
    # restart the host as soon as its upload has begun
    staging = ["sh", "-c", 'ls -d "$1"/.*staging-v2-* 2>/dev/null', "-", f"{SERVICE_DIR}/releases"]
    deadline = time.monotonic() + 30
    while not (await asyncio.to_thread(h1.run, staging, check=False)).stdout.strip():
        assert time.monotonic() < deadline and not deploy.done(), "upload never started"
        await asyncio.sleep(0.02)
    restart = await asyncio.create_subprocess_exec(
        testinfra.docker_cli, "restart", "-t", "0", h1.container,
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _, err = await asyncio.wait_for(restart.communicate(), 60)
    assert restart.returncode == 0, err
    await asyncio.wait_for(deploy, 100)
    # the deploy really lost its connection to host 1 and logged in again
    host1 = next(t for t in ssh_provider.pool.transports if t.host_id == h1.name)
    assert host1.connects >= 2
    h1.wait_ssh()
    await healthy_everywhere(ssh_provider, resource)
    states = await ssh_provider.observe(resource)
    assert [(s.revision, s.running) for s in states] == [("v2", True), ("v2", True)]
    assert await host_app.get(h1.name) == (200, "v2 ")
    # nothing half-uploaded is left behind
    assert sorted(h1.sh(f"ls -A {SERVICE_DIR}/releases").split()) == ["v1", "v2"]


@pytest.mark.timeout(120)
async def test_remove_disables_units_and_deletes_releases(
        ssh_provider: SystemdSSHProvider, host_app: HostApp, ssh_hosts: Any) -> None:
    resource = make_resource("api", host_app_spec())
    instances = await deploy_all(ssh_provider, host_app.release(resource, "v1"))
    for instance in instances:
        await ssh_provider.remove(resource, instance)
    for host in ssh_hosts[:2]:
        assert host.run(["test", "-e", unit_path()], check=False).returncode == 1
        assert host.run(["test", "-e", SERVICE_DIR], check=False).returncode == 1
        assert host.run(["systemctl", "is-active", UNIT], check=False).stdout.strip() != b"active"


@pytest.mark.timeout(120)
def test_create_provider_rejects_supervisor_over_ssh(ssh_hosts: Any, state_dir: Any) -> None:
    from reconciler.errors import ProviderError

    target = ssh_target_resource(ssh_hosts[:1], serviceManager="supervisor")
    with pytest.raises(ProviderError, match="use systemd"):
        create_provider(target, ProviderContext(state_dir=state_dir))


@pytest.mark.timeout(90)
async def test_the_age_of_the_process_by_the_hosts_clock(ssh_provider: SystemdSSHProvider,
                                                         host_app: HostApp,
                                                         ssh_hosts: Any) -> None:
    """``up_for``: how long the unit's main process has run, read on the host (its
    /proc/<pid>/stat start and /proc/uptime). The deploy reports it right after the restart
    (small), a later look reports it grown by the time between, and it agrees with the age
    `ps` gives for the same pid; a stopped unit reports none."""
    resource = make_resource("api", host_app_spec())
    release = host_app.release(resource, "v1")
    [instance, _] = await ssh_provider.instances(resource)
    called = time.monotonic()
    started = await ssh_provider.deploy(release, instance)
    took = time.monotonic() - called
    assert started is not None and started.running
    # started during the deploy call: no older than the call (ticks round it down)
    assert started.up_for is not None and 0 <= started.up_for <= took, (started.up_for, took)
    await asyncio.sleep(1.5)
    later = await ssh_provider.observe_instance(resource, instance)
    assert later.identity.same_as(started.identity)
    assert later.up_for is not None and later.up_for >= started.up_for + 1.4, (
        started.up_for, later.up_for)
    host = next(h for h in ssh_hosts if h.name == instance.id)
    pid = host.sh(f"systemctl show -p MainPID --value {UNIT}").strip()
    assert later.identity.pid == int(pid)
    # `ps` gives the age in whole seconds, by the same clock: bracket the observation
    before = int(host.sh(f"ps -o etimes= -p {pid}").strip())
    again = await ssh_provider.observe_instance(resource, instance)
    after = int(host.sh(f"ps -o etimes= -p {pid}").strip())
    assert again.up_for is not None and before - 0.02 <= again.up_for < after + 1, (
        before, again.up_for, after)
    await ssh_provider.stop(resource, instance)
    stopped = await ssh_provider.observe_instance(resource, instance)
    assert not stopped.running and stopped.up_for is None


@pytest.mark.timeout(90)
async def test_a_recheck_vouches_for_the_process_seen_without_a_command(
        ssh_provider: SystemdSSHProvider, host_app: HostApp, ssh_hosts: Any,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """``recheck``: the main process the deploy reported, still running, with its age grown by
    the time between, read from /proc over SFTP (no command on the host); None once it was
    restarted (a new pid), killed and restarted by systemd, or stopped: the observation that
    follows says which."""
    resource = make_resource("api", host_app_spec())
    release = host_app.release(resource, "v1")
    [instance, _] = await ssh_provider.instances(resource)
    started = await ssh_provider.deploy(release, instance)
    assert started is not None and started.running and started.up_for is not None
    transport = ssh_provider.transport_for(instance)

    async def no_commands(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError(f"a command ran: {args}")

    await asyncio.sleep(0.5)
    with monkeypatch.context() as patched:
        patched.setattr(transport, "run", no_commands)
        again = await ssh_provider.recheck(resource, instance, started)
    assert again is not None and again.identity == started.identity
    assert again.up_for is not None and again.up_for >= started.up_for + 0.4, (
        started.up_for, again.up_for)
    assert again.revision == started.revision and again.running

    host = next(h for h in ssh_hosts if h.name == instance.id)
    host.run(["systemctl", "restart", UNIT])
    assert await ssh_provider.recheck(resource, instance, started) is None
    restarted = await ssh_provider.observe_instance(resource, instance)
    assert restarted.running and not restarted.identity.same_as(started.identity)

    # killed, and restarted by systemd (Restart=on-failure) under a new pid
    pid = host.sh(f"systemctl show -p MainPID --value {UNIT}").strip()
    host.run(["kill", "-9", pid])
    deadline = time.monotonic() + 10  # the signal is delivered, and the pid reaped, a bit later
    while (host.sh(f"systemctl show -p MainPID --value {UNIT}").strip() == pid
           and time.monotonic() < deadline):
        await asyncio.sleep(0.05)
    assert await ssh_provider.recheck(resource, instance, restarted) is None

    later = await ssh_provider.observe_instance(resource, instance)
    await ssh_provider.stop(resource, instance)
    assert await ssh_provider.recheck(resource, instance, later) is None


@pytest.mark.timeout(120)
async def test_looks_at_many_services_of_a_host_at_once_are_one_observation(
        ssh_provider: SystemdSSHProvider, host_app: HostApp, ssh_hosts: Any,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Health gates of many Services on a host look again at the same moment (a fleet's
    rollout): one observation command answers them together, for less than a recheck each.
    Only a look alone on its host is a recheck."""
    resources = [make_resource(f"idle{n}", host_app_spec(command=["sleep", "600"]))
                 for n in range(6)]
    [instance, _] = await ssh_provider.instances(resources[0])
    seen = [await ssh_provider.deploy(host_app.release(r, "v1"), instance) for r in resources]
    assert all(s is not None and s.running for s in seen)
    transport = ssh_provider.transport_for(instance)
    reads: list[str] = []
    read_file = transport.read_file

    async def counted_read(remote: str, **kwargs: Any) -> bytes | None:
        reads.append(remote)
        return await read_file(remote, **kwargs)

    batcher = observe_batcher(transport)
    try:
        with monkeypatch.context() as patched:
            patched.setattr(transport, "read_file", counted_read)
            commands = batcher.batches
            looks = await asyncio.gather(*(
                look_again(ssh_provider, r, instance, s)
                for r, s in zip(resources, seen, strict=True)))
            together = batcher.batches - commands
            stat_reads = len([r for r in reads if r.endswith("/stat")])
            alone = await look_again(ssh_provider, resources[0], instance, looks[0])
        assert all(look is not None and s is not None and look.running
                   and look.identity.same_as(s.identity)
                   for look, s in zip(looks, seen, strict=True))
        assert stat_reads <= 1 and together == 1, (stat_reads, together)
        # alone on its host, the look is a recheck: two reads, no command
        assert alone is not None and looks[0] is not None
        assert alone.identity.same_as(looks[0].identity)
        assert batcher.batches - commands == together and len(reads) == stat_reads * 2 + 2
    finally:
        for resource in resources:
            await ssh_provider.stop(resource, instance)


@pytest.mark.timeout(120)
async def test_old_releases_are_pruned_after_the_deploy_returns(
        ssh_provider: SystemdSSHProvider, host_app: HostApp, ssh_hosts: Any) -> None:
    """Pruning (keepReleases 3 here) goes on beside the health gate, holding the Service's lock
    on the host: deploys one right after the other each find the previous prune done, the
    history names every switch, and close() waits for the last prune."""
    resource = make_resource("api", host_app_spec())
    [instance, _] = await ssh_provider.instances(resource)
    for n in range(1, 6):
        started = await ssh_provider.deploy(host_app.release(resource, f"v{n}"), instance)
        assert started is not None and started.revision == f"v{n}"
    await healthy_on(ssh_provider, resource, instance)
    await ssh_provider.close()
    host = next(h for h in ssh_hosts if h.name == instance.id)
    assert sorted(host.sh(f"ls {SERVICE_DIR}/releases").split()) == ["v3", "v4", "v5"]
    state = json.loads(host.sh(f"cat {SERVICE_DIR}/releases.json"))
    assert state["history"][-3:] == ["v3", "v4", "v5"]
    assert sorted(state["releases"]) == ["v3", "v4", "v5"]
    status, body = await host_app.get(host.name)
    assert (status, body.split()) == (200, ["v5"])


@pytest.mark.timeout(120)
async def test_staging_ahead_uploads_the_release_and_changes_nothing_that_runs(
        ssh_provider: SystemdSSHProvider, host_app: HostApp, ssh_hosts: Any) -> None:
    """``stage`` puts ``releases/v2`` on the host and records it complete, while the unit, its
    environment file, ``current`` and the running process stay as they were; the deploy that
    follows uploads nothing more (a file left in the staged tree is still there after it)."""
    resource = make_resource("api", host_app_spec(env={"GREETING": "one"}))
    [instance, _] = await ssh_provider.instances(resource)
    await ssh_provider.deploy(host_app.release(resource, "v1", env={"GREETING": "one"}),
                              instance)
    host = next(h for h in ssh_hosts if h.name == instance.id)
    before = host.sh(f"sha256sum {unit_path()} {SERVICE_DIR}/environment; "
                     f"readlink {SERVICE_DIR}/current; systemctl show -p MainPID --value {UNIT}")
    changed = make_resource("api", host_app_spec(env={"GREETING": "two"}))
    v2 = host_app.release(changed, "v2", env={"GREETING": "two"})
    await healthy_on(ssh_provider, resource, instance)
    await ssh_provider.stage(v2, instance)
    after = host.sh(f"sha256sum {unit_path()} {SERVICE_DIR}/environment; "
                    f"readlink {SERVICE_DIR}/current; systemctl show -p MainPID --value {UNIT}")
    assert after == before
    assert await host_app.get(host.name) == (200, "v1 one")
    assert "v2" in json.loads(host.sh(f"cat {SERVICE_DIR}/releases.json"))["releases"]
    host.run(["touch", f"{SERVICE_DIR}/releases/v2/staged-marker"])
    await ssh_provider.deploy(v2, instance)
    await healthy_on(ssh_provider, changed, instance)
    assert await host_app.get(host.name) == (200, "v2 two")
    assert host.sh(f"ls {SERVICE_DIR}/releases/v2/staged-marker").strip()
    # a release with a build is left to its deploy: the build reads the environment file
    built = make_resource("api", host_app_spec(build=["true"]))
    await ssh_provider.stage(host_app.release(built, "v3"), instance)
    assert "v3" not in host.sh(f"ls {SERVICE_DIR}/releases").split()


@pytest.mark.timeout(120)
async def test_a_release_removed_by_hand_is_uploaded_again(
        ssh_provider: SystemdSSHProvider, host_app: HostApp, ssh_hosts: Any) -> None:
    """The state file says v1 is complete, but its directory is gone (removed by hand): the
    next deploy of v1 uploads it again instead of switching to nothing."""
    resource = make_resource("api", host_app_spec())
    [instance, _] = await ssh_provider.instances(resource)
    await ssh_provider.deploy(host_app.release(resource, "v1"), instance)
    await ssh_provider.deploy(host_app.release(resource, "v2"), instance)
    host = next(h for h in ssh_hosts if h.name == instance.id)
    host.run(["rm", "-rf", f"{SERVICE_DIR}/releases/v1"])
    assert "v1" in json.loads(host.sh(f"cat {SERVICE_DIR}/releases.json"))["releases"]
    started = await ssh_provider.deploy(host_app.release(resource, "v1"), instance)
    assert started is not None and started.running and started.revision == "v1"
    await healthy_on(ssh_provider, resource, instance)
    status, body = await host_app.get(host.name)
    assert (status, body.split()) == (200, ["v1"])


@pytest.mark.timeout(120)
async def test_a_unit_disabled_by_hand_is_enabled_again_by_the_next_deploy(
        ssh_provider: SystemdSSHProvider, host_app: HostApp, ssh_hosts: Any) -> None:
    """The commit tells an enabled unit by `systemctl enable`'s link in
    multi-user.target.wants: a unit disabled by hand (link gone) is enabled again, so it
    still starts at boot; an enabled one keeps its link."""
    resource = make_resource("api", host_app_spec())
    [instance, _] = await ssh_provider.instances(resource)
    await ssh_provider.deploy(host_app.release(resource, "v1"), instance)
    host = next(h for h in ssh_hosts if h.name == instance.id)
    link = f"/etc/systemd/system/multi-user.target.wants/{UNIT}"
    assert host.sh(f"systemctl is-enabled {UNIT}").strip() == "enabled"
    assert host.sh(f"readlink {link}").strip() == unit_path()
    host.run(["systemctl", "disable", "--quiet", UNIT])
    assert host.run(["systemctl", "is-enabled", UNIT], check=False).stdout.strip() == b"disabled"
    await ssh_provider.deploy(host_app.release(resource, "v2"), instance)
    assert host.sh(f"systemctl is-enabled {UNIT}").strip() == "enabled"
    assert host.sh(f"readlink {link}").strip() == unit_path()
    await ssh_provider.deploy(host_app.release(resource, "v3"), instance)
    assert host.sh(f"systemctl is-enabled {UNIT}").strip() == "enabled"
