"""Services on the local host: deploy, redeploy, rollback, adoption, stop, remove."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from reconciler.errors import ProviderError
from reconciler.health import wait_healthy
from reconciler.providers import (
    Instance,
    Provider,
    ProviderContext,
    Release,
    load_provider,
)
from reconciler.providers.bare_metal import BareMetalProvider, Supervisor, create_provider
from reconciler.providers.bare_metal.procfs import read_stat
from reconciler.spec.model import Resource
from tests.providers.bare_metal.conftest import (
    ENV,
    PY,
    AppSources,
    make_resource,
    make_target,
    new_provider,
    wait_for_http,
    wait_gone,
)

REPO = Path(__file__).resolve().parents[3]


def app_spec(port: int, **extra: object) -> dict[str, object]:
    return {
        "target": "local",
        "command": [PY, "app.py", str(port)],
        "stopTimeout": "5s",
        "health": {"http": {"url": f"http://{{host}}:{port}/healthz"}, "interval": "100ms"},
        **extra,
    }


def test_create_provider_choices(state_dir: Path) -> None:
    ctx = ProviderContext(state_dir=state_dir)
    provider = create_provider(make_target("edge"), ctx)
    assert isinstance(provider, Provider)
    assert provider.root == str(state_dir.absolute() / "bare_metal" / ENV / "edge")
    assert isinstance(provider.manager, Supervisor)
    # through the registry, as core code obtains it
    assert isinstance(load_provider(make_target(), ctx), BareMetalProvider)
    custom = create_provider(make_target(root=str(state_dir / "srv"), keepReleases=2), ctx)
    assert custom.root == str(state_dir / "srv")
    assert custom.keep_releases == 2
    with pytest.raises(ProviderError, match="transport ssh needs a non-empty hosts list"):
        create_provider(make_target(transport="ssh"), ctx)
    with pytest.raises(ProviderError, match="unknown transport"):
        create_provider(make_target(transport="telnet"), ctx)
    with pytest.raises(ProviderError, match="serviceManager 'systemd'"):
        create_provider(make_target(serviceManager="systemd"), ctx)
    with pytest.raises(ProviderError, match="keepReleases"):
        create_provider(make_target(keepReleases=0), ctx)


async def test_instances(provider: BareMetalProvider) -> None:
    resource = make_resource("api", app_spec(1))
    assert await provider.instances(resource) == [Instance(id="local", address="127.0.0.1")]


@pytest.mark.timeout(30)
async def test_deploy_serves_and_is_observed(
    provider: BareMetalProvider, sources: AppSources
) -> None:
    port = pick_port()
    resource = make_resource("api", app_spec(port))
    [instance] = await provider.instances(resource)
    assert (await provider.observe(resource))[0].running is False
    assert (await provider.observe(resource))[0].revision is None

    await provider.deploy(sources.release(resource, "r1", env={"GREETING": "hello"}), instance)

    assert await wait_for_http(f"http://127.0.0.1:{port}/", "r1") == "r1 hello"
    health = await wait_healthy(resource.spec["health"], instance)
    assert health.healthy, health.message
    [state] = await provider.observe(resource)
    assert state.running and state.revision == "r1"
    assert state.facts["current"] == "r1"
    # an exec probe runs where the service runs
    exec_health = {"exec": {"command": ["test", "-f", "app.py"]}, "interval": "100ms"}
    health = await wait_healthy(exec_health, instance, cwd=state.working_dir)
    assert health.healthy, health.message

    service_dir = Path(provider.root) / ENV / "api"
    assert os.readlink(service_dir / "current") == "releases/r1"
    assert (service_dir / "releases" / "r1" / "app.py").is_file()
    record = json.loads((service_dir / "run" / "api.pid").read_text())
    assert record["pid"] == state.facts["pid"]
    assert record["revision"] == "r1"
    stat = read_stat(record["pid"])
    assert stat is not None and stat.start_time == record["start_time"]
    assert stat.pgrp == record["pid"]  # its own session and process group
    lines = await provider.logs(resource, instance, tail=50)
    assert any(f"listening on {port} revision r1" in line for line in lines)
    assert (service_dir / "logs" / "api.log").is_file()

    await provider.stop(resource, instance)
    assert await wait_gone(record["pid"])
    [state] = await provider.observe(resource)
    assert not state.running
    assert state.revision == "r1"  # still the deployed release
    await provider.stop(resource, instance)  # idempotent


@pytest.mark.timeout(40)
async def test_redeploy_then_rollback_without_export(
    provider: BareMetalProvider, sources: AppSources
) -> None:
    port = pick_port()
    resource = make_resource("api", app_spec(port))
    [instance] = await provider.instances(resource)
    r1 = sources.release(resource, "r1")
    await provider.deploy(r1, instance)
    await wait_for_http(f"http://127.0.0.1:{port}/", "r1")
    pid1 = (await provider.observe(resource))[0].facts["pid"]

    await provider.deploy(sources.release(resource, "r2"), instance)
    assert await wait_gone(pid1, timeout=0.1)  # the old process was stopped before the start
    await wait_for_http(f"http://127.0.0.1:{port}/", "r2")
    [state] = await provider.observe(resource)
    assert state.revision == "r2" and state.running
    pid2 = state.facts["pid"]
    assert pid2 != pid1
    service_dir = Path(provider.root) / ENV / "api"
    assert os.readlink(service_dir / "current") == "releases/r2"

    # Rollback: the r1 release is still on disk, so it is not exported again.
    assert sources.exports["r1"].calls == 1
    rollback = Release(resource=resource, revision="r1", config_commit="c0ffee", export=None)
    await provider.deploy(rollback, instance)
    assert sources.exports["r1"].calls == 1
    assert await wait_gone(pid2, timeout=0.1)
    await wait_for_http(f"http://127.0.0.1:{port}/", "r1")
    assert os.readlink(service_dir / "current") == "releases/r1"
    assert (await provider.releases(resource).previous()) == "r2"
    await provider.stop(resource, instance)


@pytest.mark.timeout(40)
async def test_adopted_by_a_provider_in_another_process(
    state_dir: Path, sources: AppSources
) -> None:
    port = pick_port()
    spec = app_spec(port)
    sources.export("r7")  # the child process exports from this folder
    args = {
        "state_dir": str(state_dir),
        "sources": str(sources.base),
        "revision": "r7",
        "spec": json.dumps(spec),
    }
    child = await asyncio.create_subprocess_exec(
        PY,
        "-m",
        "tests.providers.bare_metal.child_deploy",
        json.dumps(args),
        cwd=str(REPO),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(child.communicate(), 30)
    assert child.returncode == 0, err.decode()
    started = json.loads(out.decode().strip().splitlines()[-1])
    assert started["running"] is True
    pid = started["pid"]

    # The deploying process has exited; the service lives on, and is not our child.
    assert await wait_for_http(f"http://127.0.0.1:{port}/", "r7") == "r7 from-child"
    with pytest.raises(ChildProcessError):
        os.waitpid(pid, os.WNOHANG)

    fresh = new_provider(state_dir)
    try:
        resource = make_resource("adopted", spec)
        [instance] = await fresh.instances(resource)
        [state] = await fresh.observe(resource)
        assert state.running is True
        assert state.revision == "r7"
        assert state.facts["pid"] == pid
        await fresh.stop(resource, instance)
        assert await wait_gone(pid)
        [state] = await fresh.observe(resource)
        assert state.running is False
    finally:
        await fresh.close()


IGNORE_TERM = """\
import signal, time
signal.signal(signal.SIGTERM, signal.SIG_IGN)
print("ignoring SIGTERM", flush=True)
while True:
    time.sleep(1)
"""


@pytest.mark.timeout(30)
async def test_sigterm_ignored_is_killed_after_stop_timeout(
    provider: BareMetalProvider, sources: AppSources
) -> None:
    resource = make_resource("stubborn", {"command": [PY, "stubborn.py"], "stopTimeout": "1s"})
    [instance] = await provider.instances(resource)
    await provider.deploy(
        sources.release(resource, "s1", extra={"stubborn.py": IGNORE_TERM}), instance
    )
    await wait_for_log(provider, resource, instance, "ignoring SIGTERM")
    pid = (await provider.observe(resource))[0].facts["pid"]
    started = time.monotonic()
    await provider.stop(resource, instance)
    elapsed = time.monotonic() - started
    assert 0.9 <= elapsed < 4, elapsed
    assert await wait_gone(pid, timeout=0.5)
    assert not (await provider.observe(resource))[0].running


FORKS = """\
import subprocess, sys, time
worker = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
open("worker.pid", "w").write(str(worker.pid))
print("started worker", flush=True)
time.sleep(600)
"""


@pytest.mark.timeout(30)
async def test_stop_reaches_the_whole_process_group(
    provider: BareMetalProvider, sources: AppSources
) -> None:
    resource = make_resource("forks", {"command": [PY, "forks.py"], "stopTimeout": "2s"})
    [instance] = await provider.instances(resource)
    await provider.deploy(sources.release(resource, "f1", extra={"forks.py": FORKS}), instance)
    await wait_for_log(provider, resource, instance, "started worker")
    release_dir = Path(provider.root) / ENV / "forks" / "releases" / "f1"
    worker = int((release_dir / "worker.pid").read_text())
    leader = (await provider.observe(resource))[0].facts["pid"]
    await provider.stop(resource, instance)
    assert await wait_gone(leader, timeout=0.5)
    assert await wait_gone(worker, timeout=0.5)


LEAVES_WORKER = """\
import subprocess, sys
worker = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
open("worker.pid", "w").write(str(worker.pid))
print("leader leaves", flush=True)
"""


@pytest.mark.timeout(30)
async def test_stop_cleans_up_workers_left_by_an_exited_leader(
    provider: BareMetalProvider, sources: AppSources
) -> None:
    resource = make_resource("orphans", {"command": [PY, "leaves.py"], "stopTimeout": "2s"})
    [instance] = await provider.instances(resource)
    await provider.deploy(
        sources.release(resource, "o1", extra={"leaves.py": LEAVES_WORKER}), instance
    )
    await wait_for_log(provider, resource, instance, "leader leaves")
    deadline = time.monotonic() + 5
    while (await provider.observe(resource))[0].running:
        assert time.monotonic() < deadline
        await asyncio.sleep(0.05)
    release_dir = Path(provider.root) / ENV / "orphans" / "releases" / "o1"
    worker = int((release_dir / "worker.pid").read_text())
    assert not await wait_gone(worker, timeout=0.2)  # the worker outlived its leader
    # a redeploy (or stop) must not leave it holding ports and files
    await provider.stop(resource, instance)
    assert await wait_gone(worker, timeout=0.5)


@pytest.mark.timeout(30)
async def test_a_process_that_exited_is_not_running(
    provider: BareMetalProvider, sources: AppSources
) -> None:
    resource = make_resource(
        "crashes", {"command": [PY, "-c", "print('bye'); raise SystemExit(3)"]}
    )
    [instance] = await provider.instances(resource)
    await provider.deploy(sources.release(resource, "c1"), instance)
    pid = (await provider.observe(resource))[0].facts["pid"]
    deadline = time.monotonic() + 5
    while (state := (await provider.observe(resource))[0]).running:
        assert time.monotonic() < deadline
        await asyncio.sleep(0.05)
    assert state.detail == "exited with status 3"  # reaped: it was our child
    assert state.revision == "c1"
    assert read_stat(pid) is None  # no zombie left behind
    health = await wait_healthy(None, instance, is_running=lambda: is_running(provider, resource))
    assert not health.healthy


async def is_running(provider: BareMetalProvider, resource: Resource) -> bool:
    return (await provider.observe(resource))[0].running


@pytest.mark.timeout(30)
async def test_pidfile_of_a_dead_or_reused_pid_is_not_running(
    provider: BareMetalProvider,
) -> None:
    resource = make_resource("ghost", {"command": ["true"]})
    [instance] = await provider.instances(resource)
    pidfile = Path(provider.root) / ENV / "ghost" / "run" / "ghost.pid"
    pidfile.parent.mkdir(parents=True)

    dead = subprocess.Popen(["true"])
    dead.wait()
    pidfile.write_text(json.dumps({"pid": dead.pid, "start_time": 1, "revision": "g1"}))
    [state] = await provider.observe(resource)
    assert not state.running
    assert state.detail == "exited"

    # A live process with that pid but another start time: pid reuse. Not ours — never signal it.
    stranger = subprocess.Popen(["sleep", "30"], start_new_session=True)
    try:
        stat = read_stat(stranger.pid)
        assert stat is not None
        real_start = stat.start_time
        pidfile.write_text(
            json.dumps({"pid": stranger.pid, "start_time": real_start - 1, "revision": "g1"})
        )
        [state] = await provider.observe(resource)
        assert not state.running
        assert "now belongs to another process" in state.detail
        await provider.stop(resource, instance)
        await asyncio.sleep(0.2)
        assert stranger.poll() is None  # still alive
    finally:
        stranger.kill()
        stranger.wait()


@pytest.mark.timeout(30)
async def test_environment_is_minimal_plus_release_env(
    provider: BareMetalProvider, sources: AppSources
) -> None:
    dump = (
        "import json, os, time\n"
        "json.dump(dict(os.environ), open('env.json', 'w'))\n"
        "print('dumped', os.getcwd(), flush=True)\n"
        "time.sleep(60)\n"
    )
    resource = make_resource("envcheck", {"command": [PY, "../dump.py"], "workingDir": "sub"})
    [instance] = await provider.instances(resource)
    os.environ["FRAISIER_DAEMON_SECRET"] = "must-not-leak"
    try:
        await provider.deploy(
            sources.release(
                resource, "e1", env={"API_TOKEN": "t0ken"}, extra={"dump.py": dump, "sub/.keep": ""}
            ),
            instance,
        )
    finally:
        del os.environ["FRAISIER_DAEMON_SECRET"]
    await wait_for_log(provider, resource, instance, "dumped")
    release_dir = Path(provider.root) / ENV / "envcheck" / "releases" / "e1"
    env = json.loads((release_dir / "sub" / "env.json").read_text())
    assert env["API_TOKEN"] == "t0ken"
    assert "FRAISIER_DAEMON_SECRET" not in env
    assert {"PATH", "HOME", "LANG"} <= set(env)
    # python may add LC_CTYPE; FRAISIER_PIDFILE tags the process as this service's (orphan search)
    assert set(env) - {"PATH", "HOME", "LANG", "TZ", "API_TOKEN"} <= {
        "LC_CTYPE", "FRAISIER_PIDFILE", "FRAISIER_REVISION", "FRAISIER_SERVICE",
        "FRAISIER_ENVIRONMENT"}
    assert (env["FRAISIER_REVISION"], env["FRAISIER_SERVICE"], env["FRAISIER_ENVIRONMENT"]) == (
        "e1", "envcheck", ENV)
    # the secret value is in no log line, error or pidfile
    root_text = "".join(
        p.read_text(errors="replace")
        for p in Path(provider.root).rglob("*")
        if p.is_file() and p.name != "env.json"
    )
    assert "t0ken" not in root_text
    await provider.stop(resource, instance)


async def test_working_dir_cannot_escape(provider: BareMetalProvider, sources: AppSources) -> None:
    resource = make_resource("escape", {"command": ["true"], "workingDir": "../../.."})
    [instance] = await provider.instances(resource)
    with pytest.raises(ProviderError, match="workingDir"):
        await provider.deploy(sources.release(resource, "x1"), instance)


async def test_bad_revision_and_missing_export(provider: BareMetalProvider) -> None:
    resource = make_resource("api", {"command": ["true"]})
    [instance] = await provider.instances(resource)
    with pytest.raises(ProviderError, match="cannot name a release directory"):
        await provider.deploy(Release(resource, "../../etc", None), instance)
    with pytest.raises(ProviderError, match="has no export"):
        await provider.deploy(Release(resource, "abc123", None), instance)
    with pytest.raises(ProviderError, match="no instance 'web9'"):
        await provider.deploy(Release(resource, "abc123", None), Instance(id="web9"))
    with pytest.raises(ProviderError, match="list of arguments"):
        bad = make_resource("api", {"command": "python3 app.py"})
        await provider.deploy(Release(bad, "abc123", None), instance)


async def test_missing_program_fails_the_deploy(
    provider: BareMetalProvider, sources: AppSources
) -> None:
    resource = make_resource("nope", {"command": ["no-such-program-xyz"]})
    [instance] = await provider.instances(resource)
    with pytest.raises(ProviderError, match="cannot start 'no-such-program-xyz'"):
        await provider.deploy(sources.release(resource, "n1"), instance)
    assert not (await provider.observe(resource))[0].running


@pytest.mark.timeout(30)
async def test_remove_stops_and_deletes(provider: BareMetalProvider, sources: AppSources) -> None:
    port = pick_port()
    resource = make_resource("api", app_spec(port))
    [instance] = await provider.instances(resource)
    await provider.deploy(sources.release(resource, "r1"), instance)
    await wait_for_http(f"http://127.0.0.1:{port}/", "r1")
    pid = (await provider.observe(resource))[0].facts["pid"]
    await provider.remove(resource, instance)
    assert await wait_gone(pid, timeout=0.5)
    assert not (Path(provider.root) / ENV / "api").exists()
    [state] = await provider.observe(resource)
    assert (state.running, state.revision) == (False, None)
    await provider.remove(resource, instance)  # idempotent


async def wait_for_log(
    provider: BareMetalProvider, resource: Resource, instance: Instance, text: str
) -> None:
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        lines = await provider.logs(resource, instance, tail=20)
        if any(text in line for line in lines):
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"{text!r} not in the log")


def pick_port() -> int:
    from tests.providers.bare_metal.conftest import free_port

    return free_port()


if sys.platform != "linux":  # /proc is the source of truth
    pytest.skip("bare-metal supervisor needs Linux /proc", allow_module_level=True)


@pytest.mark.timeout(30)
async def test_a_process_whose_pidfile_was_never_written_is_stopped_before_a_start(
    provider: BareMetalProvider, sources: AppSources, state_dir: Path
) -> None:
    """A reconciler killed between starting a process and writing its pidfile leaves an orphan
    holding the port: the next start finds it by its tag and stops it first."""
    from reconciler.providers.bare_metal.supervisor import TAG_VARIABLE

    port = pick_port()
    resource = make_resource("api", app_spec(port))
    [instance] = await provider.instances(resource)
    await provider.deploy(sources.release(resource, "r1"), instance)
    assert await wait_for_http(f"http://127.0.0.1:{port}/", "r1") == "r1 "
    [state] = await provider.observe(resource)
    pidfiles = list(state_dir.rglob("*.pid"))
    assert len(pidfiles) == 1
    pid = json.loads(pidfiles[0].read_text())["pid"]
    environ = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    assert f"{TAG_VARIABLE}={pidfiles[0]}".encode() in environ
    # the crash: the process runs on, its pidfile is gone
    pidfiles[0].unlink()
    assert (await provider.observe(resource))[0].running is False

    await provider.deploy(sources.release(resource, "r2"), instance)
    assert await wait_gone(pid), "the orphan was stopped"
    assert await wait_for_http(f"http://127.0.0.1:{port}/", "r2") == "r2 "
    [state] = await provider.observe(resource)
    assert state.running and state.revision == "r2"


def test_age_of_a_process_from_its_stat_line_and_uptime() -> None:
    """``procfs.age_s`` reads a /proc/<pid>/stat line (whose command name may hold spaces and
    parentheses) and /proc/uptime of the same host; anything else is no age, never a guess."""
    from reconciler.providers.bare_metal import procfs

    fields = ["S", "1", "42"] + ["0"] * 16 + ["12345"] + ["0"] * 30  # field 22: start 123.45 s
    line = "42 (my (odd) name) " + " ".join(fields)
    assert procfs.age_s(42, line, "130.00 250.00") == pytest.approx(130.0 - 123.46)
    assert procfs.age_s(43, line, "130.00 250.00") is None  # another process's line
    assert procfs.age_s(42, "", "130.00 250.00") is None
    assert procfs.age_s(42, line, "") is None
    assert procfs.age_s(42, line, "100.00 1.00") == 0.0  # never negative
    # the age of this very process, read as the observation reads it
    pid = os.getpid()
    with open(f"/proc/{pid}/stat") as stat, open("/proc/uptime") as uptime:
        age = procfs.age_s(pid, stat.readline(), uptime.readline())
    assert age is not None and 0 <= age < 24 * 3600
