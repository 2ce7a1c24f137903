"""Sandbox profiles of the systemd units on real systemd+sshd test hosts (docs/sandboxing.md):
the exposure score of each generated unit, example apps under `default` and `strict`, the
diagnosis of a process the sandbox stopped, and non-root users reading their releases."""

from __future__ import annotations

import asyncio
import re
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import pytest

from reconciler.errors import ProviderError
from reconciler.providers import ProviderContext, Release
from reconciler.providers.bare_metal import SystemdSSHProvider, create_provider
from tests.providers.bare_metal.conftest import (
    ENV,
    HostApp,
    free_port,
    host_app_spec,
    make_resource,
    ssh_target_resource,
)

STATE_JOB = """\
import os, pathlib
state = pathlib.Path(os.environ["STATE_DIRECTORY"])
(state / "count").write_text(str(int((state / "count").read_text() or 0) + 1)
                             if (state / "count").exists() else "1")
print("wrote", state / "count", flush=True)
"""

WRITES_RELEASE = """\
import time
open("scratch.txt", "w").write("x")
time.sleep(60)
"""


def provider_for(hosts: Any, state_dir: Path, **systemd: Any) -> SystemdSSHProvider:
    target = ssh_target_resource(hosts, systemd=systemd) if systemd else ssh_target_resource(hosts)
    p = create_provider(target, ProviderContext(state_dir=state_dir))
    assert isinstance(p, SystemdSSHProvider)
    return p


@dataclass
class FilesExport:
    """Writes files into the export directory it is given, leaving that directory's own mode
    alone, as the git export does (a fresh temporary directory: 0700)."""

    files: dict[str, str]

    async def __call__(self, dest: Path) -> None:
        for name, text in self.files.items():
            (dest / name).write_text(text)


def release_of(tmp_path: Path, resource: Any, files: dict[str, str],
               revision: str = "r1") -> Release:
    return Release(resource=resource, revision=revision, config_commit="c0ffee",
                   export=FilesExport(files), env={})


def exposure(host: Any, unit: str) -> float:
    out = host.run(["systemd-analyze", "security", "--no-pager", unit]).stdout.decode()
    match = re.search(r"Overall exposure level for \S+: (\d+\.\d+)", out)
    assert match, out[-500:]
    return float(match.group(1))


async def wait_http(port: int, timeout: float = 10.0) -> str:
    import httpx

    deadline = time.monotonic() + timeout
    async with httpx.AsyncClient(timeout=1.0, trust_env=False) as client:
        while True:
            try:
                response = await client.get(f"http://127.0.0.1:{port}/")
                if response.status_code == 200:
                    return response.text
            except httpx.HTTPError:
                if time.monotonic() > deadline:
                    raise
            await asyncio.sleep(0.1)


@pytest.mark.timeout(180)
async def test_exposure_scores_per_profile(ssh_host: Any, tmp_path: Path,
                                           capsys: pytest.CaptureFixture[str]) -> None:
    """The score is a property of the unit: off is today's 9.6, default <= 4.0, strict <= 2.0,
    for a Service, a Job and a Schedule (figures quoted in docs/sandboxing.md)."""
    port = free_port()
    figures: dict[tuple[str, str], float] = {}
    for profile in ("off", "default", "strict"):
        provider = provider_for([ssh_host], tmp_path / profile, sandbox=profile)
        try:
            web = make_resource("web", {"target": "hosts", "command":
                                        ["busybox", "httpd", "-f", "-p", f"127.0.0.1:{port}",
                                         "-h", "."]})
            job = make_resource("migrate", {"target": "hosts", "command": ["python3", "job.py"]},
                                kind="Job")
            tick = make_resource("tick", {"target": "hosts", "command": ["python3", "job.py"],
                                          "schedule": "@daily"}, kind="Schedule")
            instance = (await provider.instances(web))[0]
            await provider.deploy(release_of(tmp_path, web, {"index.html": "hi"}), instance)
            assert await wait_http(port) == "hi"
            await provider.deploy(release_of(tmp_path, job, {"job.py": STATE_JOB}), instance)
            await provider.deploy(release_of(tmp_path, tick, {"job.py": STATE_JOB}), instance)
            for resource, unit in ((web, f"fraisier-{ENV}_web.service"),
                                   (job, f"fraisier-{ENV}_migrate.job.service"),
                                   (tick, f"fraisier-{ENV}_tick.schedule.service")):
                figures[(profile, resource.kind)] = exposure(ssh_host, unit)
            await provider.remove(web, instance)
        finally:
            await provider.close()
    with capsys.disabled():
        print("\nsystemd-analyze security:", figures)
    for kind in ("Service", "Job", "Schedule"):
        assert figures[("off", kind)] >= 9.0, figures
        assert figures[("default", kind)] <= 4.0, figures
        assert figures[("strict", kind)] <= 2.0, figures


@pytest.mark.timeout(240)
@pytest.mark.parametrize("profile", ["default", "strict"])
async def test_example_apps_pass_under_profile(profile: str, ssh_hosts: Any, host_app: HostApp,
                                               tmp_path: Path) -> None:
    """The Python HTTP app (exec health check), busybox httpd and a Job writing to its state
    directory work sandboxed; the Job's state survives between runs."""
    provider = provider_for(ssh_hosts[:1], tmp_path / "state", sandbox=profile)
    host = ssh_hosts[0]
    host.run(["rm", "-rf", "/var/lib/fraisier", "/var/lib/private/fraisier"])  # earlier runs'
    try:
        app = make_resource("app", host_app_spec())
        instance = (await provider.instances(app))[0]
        await provider.deploy(host_app.release(app, "r1"), instance)
        deadline = time.monotonic() + 15
        while True:
            try:
                status, body = await host_app.get(host.name)
                break
            except Exception:
                if time.monotonic() > deadline:
                    raise
                await asyncio.sleep(0.1)
        assert status == 200 and body.startswith("r1")
        # the exec health check (run over SSH on the host) passes
        check = host.run(["sh", "-c", "cd /srv/fraisier/test/app/current && python3 app.py check"],
                         check=False)
        assert check.returncode == 0, check
        state = (await provider.observe(app))[0]
        assert state.running and state.revision == "r1", state
        unit = host.sh(f"systemctl cat fraisier-{ENV}_app.service")
        assert "DynamicUser=yes" in unit and "ProtectSystem=strict" in unit
        assert host.sh(f"systemctl show -p User --value fraisier-{ENV}_app.service") != "root"

        port = free_port()
        web = make_resource("web", {"target": "hosts", "command": [
            "busybox", "httpd", "-f", "-p", f"127.0.0.1:{port}", "-h", "."]})
        await provider.deploy(release_of(tmp_path, web, {"index.html": "busybox ok"}), instance)
        assert await wait_http(port) == "busybox ok"

        job = make_resource("counter", {"target": "hosts", "command": ["python3", "job.py"],
                                        "timeout": "30s"}, kind="Job")
        release = release_of(tmp_path, job, {"job.py": STATE_JOB})
        for expected in ("1", "2"):
            result = await provider.run(release, instance)
            assert result.exit_code == 0, result.output
            assert host.sh(f"cat /var/lib/fraisier/{ENV}_counter.job/count").strip() == expected
        # the release is readable by the unit and writable by root only
        base = "/srv/fraisier/test/counter.job"
        listing = host.sh(f"stat -c '%a %U' {base} {base}/releases {base}/releases/r1 "
                          f"{base}/releases/r1/job.py {base}/environment").strip().split("\n")
        assert listing == ["755 root", "755 root", "755 root", "644 root", "600 root"], listing
    finally:
        await provider.close()


@pytest.mark.timeout(120)
async def test_writing_outside_allowed_paths_fails_with_diagnosis(ssh_host: Any,
                                                                   tmp_path: Path) -> None:
    provider = provider_for([ssh_host], tmp_path / "state")  # the default profile
    try:
        svc = make_resource("scribbler", {"target": "hosts", "command": ["python3", "w.py"]})
        instance = (await provider.instances(svc))[0]
        await provider.deploy(release_of(tmp_path, svc, {"w.py": WRITES_RELEASE}), instance)
        deadline = time.monotonic() + 20
        while True:
            state = (await provider.observe(svc))[0]
            if not state.running and "sandbox" in state.detail:
                break
            assert time.monotonic() < deadline, state
            await asyncio.sleep(0.3)
        assert "ProtectSystem=strict" in state.detail, state.detail
        assert "writablePaths" in state.detail and "STATE_DIRECTORY" in state.detail
        # a Job failing the same way says so in its output
        job = make_resource("scribble", {"target": "hosts", "command": ["python3", "w.py"],
                                         "timeout": "20s"}, kind="Job")
        result = await provider.run(release_of(tmp_path, job, {"w.py": WRITES_RELEASE}), instance)
        assert result.exit_code == 1 and "Read-only file system" in result.output
        assert "ProtectSystem=strict" in result.output, result.output
        # and a declared writable path opens exactly that
        await provider.remove(svc, instance)
    finally:
        await provider.close()
    # writablePaths lifts the read-only mount; file permissions still apply (a DynamicUser has
    # no fixed uid: the directory is open to everyone here, sticky like /tmp)
    ssh_host.run(["mkdir", "-p", "-m", "1777", "/srv/scratch"])
    allowed = provider_for([ssh_host], tmp_path / "state2",
                           allow={"writablePaths": ["/srv/scratch"]})
    try:
        job = make_resource("scribble", {"target": "hosts", "command": ["python3", "w.py"],
                                         "timeout": "20s"}, kind="Job")
        release = release_of(tmp_path, job, {"w.py": "open('/srv/scratch/x', 'w').write('y')\n"},
                             revision="r2")
        instance = (await allowed.instances(job))[0]
        result = await allowed.run(release, instance)
        assert result.exit_code == 0, result.output
        assert ssh_host.sh("cat /srv/scratch/x") == "y"
    finally:
        await allowed.close()
        ssh_host.run(["rm", "-rf", "/srv/scratch"])


@pytest.mark.timeout(120)
@pytest.mark.parametrize("profile", ["off", "default"])
async def test_non_root_user_reads_its_release(profile: str, ssh_host: Any, tmp_path: Path,
                                               ) -> None:
    """Issue 15 item 5: `systemd: {user: ...}` failed with status=200/CHDIR (releases 0700
    root). The unit's user reads the release; only root writes it."""
    provider = provider_for([ssh_host], tmp_path / "state", user="deploy", sandbox=profile)
    port = free_port()
    try:
        web = make_resource("web", {"target": "hosts", "command": [
            "busybox", "httpd", "-f", "-p", f"127.0.0.1:{port}", "-h", "."]})
        instance = (await provider.instances(web))[0]
        await provider.deploy(release_of(tmp_path, web, {"index.html": "as deploy"}), instance)
        assert await wait_http(port) == "as deploy"
        assert ssh_host.sh("ps -o user= -C busybox | sort -u").strip() == "deploy"
        denied = ssh_host.run(["sudo", "-u", "deploy", "touch",
                               "/srv/fraisier/test/web/current/x"], check=False)
        assert denied.returncode != 0
    finally:
        await provider.close()


def test_unknown_allow_setting_is_refused() -> None:
    from reconciler.providers.bare_metal.systemd import UnitSettings

    with pytest.raises(ProviderError, match="unknown"):
        UnitSettings.from_target({"allow": {"writeablePaths": ["/x"]}}, "web")
    with pytest.raises(ProviderError, match="sandbox"):
        UnitSettings.from_target({"sandbox": "paranoid"}, "web")
    with pytest.raises(ProviderError, match="absolute"):
        UnitSettings.from_target({"allow": {"writablePaths": ["rel/path"]}}, "web")
    over = UnitSettings.from_target({"sandbox": "strict", "overrides": {"web": {"sandbox": "off"}}},
                                    "web")
    assert over.sandbox.profile == "off"



def test_a_blue_green_slot_takes_the_services_overrides(tmp_path: Path) -> None:
    from reconciler.rollout.strategies import slot_resource

    hosts = [type("H", (), {"name": "h1", "address": "127.0.0.1", "port": 22,
                            "identity_file": "/k", "known_hosts": "/kh"})()]
    provider = provider_for(hosts, tmp_path, sandbox="default",
                            overrides={"web": {"sandbox": "strict"}})
    web = make_resource("web", {"target": "hosts", "command": ["python3", "app.py"]})
    green = slot_resource(web, "green", 18000)
    for resource in (web, green):
        files, _ = provider._unit_files(release_of(tmp_path, resource, {}))
        unit = next(data for path, (data, _) in files.items() if path.endswith(".service"))
        assert b"MemoryDenyWriteExecute=yes" in unit, resource.name


@pytest.mark.timeout(120)
async def test_a_sandboxed_process_cwd_is_read_once_per_process(ssh_host: Any, tmp_path: Path
                                                                ) -> None:
    """The release a process runs is read from its cwd (as its own user where root cannot:
    a container's root, a DynamicUser unit). A process seen before is not asked again — its
    cwd is remembered by its identity (MainPID + start time) — and a new process is."""
    from reconciler.providers.bare_metal.systemd import observe_batcher

    provider = provider_for([ssh_host], tmp_path / "state", sandbox="default")
    port = free_port()
    try:
        web = make_resource("web", {"target": "hosts", "command": [
            "busybox", "httpd", "-f", "-p", f"127.0.0.1:{port}", "-h", "."]})
        instance = (await provider.instances(web))[0]
        await provider.deploy(release_of(tmp_path, web, {"index.html": "one"}), instance)
        first = await provider.observe_instance(web, instance)
        assert first.running and first.facts["running_revision"] == "r1", first
        known = observe_batcher(provider.transport_for(instance)).known
        unit = f"fraisier-{ENV}_web.service"
        assert known[unit].cwd == "/srv/fraisier/test/web/releases/r1"
        # the same process: its remembered cwd stands (a planted one proves it is not re-read)
        known[unit] = replace(known[unit], cwd="/srv/fraisier/test/web/releases/planted")
        again = await provider.observe_instance(web, instance)
        assert again.facts["running_revision"] == "planted"
        # a new process (r2 deployed, restarted): read again, the planted value is gone
        await provider.deploy(release_of(tmp_path, web, {"index.html": "two"}, "r2"), instance)
        assert await wait_http(port) == "two"
        after = await provider.observe_instance(web, instance)
        assert after.facts["running_revision"] == "r2" and after.revision == "r2", after
        assert known[unit].cwd == "/srv/fraisier/test/web/releases/r2"
    finally:
        await provider.close()
