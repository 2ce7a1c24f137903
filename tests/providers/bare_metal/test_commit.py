"""The commits of a host's concurrent deploys in one remote command (commit.HostCommits), on a
real systemd host over SSH: each deploy still gets its own result — a unit that cannot start
fails its own deploy only, with its own message — and a deploy alone on its host commits at once.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

from reconciler.errors import ProviderError
from reconciler.providers import Release
from reconciler.providers.bare_metal import SystemdSSHProvider
from reconciler.providers.bare_metal.commit import host_commits
from tests.providers.bare_metal.conftest import ENV, FolderExport, make_resource

pytestmark = [pytest.mark.integration, pytest.mark.timeout(180)]


def service(name: str, command: list[str]) -> Any:
    return make_resource(name, {"target": "hosts", "command": command})


async def test_one_unit_that_cannot_start_fails_alone(
    ssh_provider: SystemdSSHProvider, tmp_path: Path, ssh_hosts: Any
) -> None:
    src = tmp_path / "src"
    src.mkdir()
    (src / "VERSION").write_text("r1\n")
    good = [service(f"sleeper{i}", ["/bin/sleep", "600"]) for i in range(3)]
    bad = service("noexec", ["/nonexistent/binary"])
    instance = (await ssh_provider.instances(good[0]))[0]

    def release(resource: Any) -> Release:
        return Release(resource=resource, revision="r1", config_commit="c0",
                       export=FolderExport(src), env={})

    results = await asyncio.gather(
        *(ssh_provider.deploy(release(r), instance) for r in [*good, bad]),
        return_exceptions=True)
    assert results[:3] == [None, None, None], results
    assert isinstance(results[3], ProviderError)
    assert f"starting fraisier-{ENV}_noexec.service failed" in results[3].message
    assert host_commits(ssh_provider.transport_for(instance)).batches == 1
    host = next(h for h in ssh_hosts if h.name == instance.id)
    active = host.sh("systemctl is-active -- " + " ".join(
        f"fraisier-{ENV}_sleeper{i}.service" for i in range(3)) + " || true").split()
    assert active == ["active"] * 3
    # every release was switched, the failed one too (as a lone deploy's switch was)
    for name in ("sleeper0", "noexec"):
        link = host.sh(f"readlink /srv/fraisier/{ENV}/{name}/current").strip()
        assert link == "releases/r1"

    # alone on its host: committed at once, in a batch of its own
    before = host_commits(ssh_provider.transport_for(instance)).batches
    await ssh_provider.deploy(
        Release(resource=good[0], revision="r2", config_commit="c1",
                export=FolderExport(src), env={"X": "1"}), instance)
    assert host_commits(ssh_provider.transport_for(instance)).batches == before + 1
    assert host.sh(f"readlink /srv/fraisier/{ENV}/sleeper0/current").strip() == "releases/r2"


async def test_releases_of_the_same_content_export_once_for_every_service_and_host(
    ssh_provider: SystemdSSHProvider, tmp_path: Path, ssh_hosts: Any
) -> None:
    """Services built from one folder of one commit (``Release.content``) share one export
    on every host; a release whose content is unknown exports for itself; modes arrive
    published (world-readable, writable by root only) without a remote chmod."""
    src = tmp_path / "src"
    (src / "www").mkdir(parents=True)
    (src / "www" / "VERSION").write_text("r1\n")
    (src / "www" / "VERSION").chmod(0o600)  # as git would never ship it: published on export
    shared = FolderExport(src)
    alone = FolderExport(src)
    services = [service(f"same{i}", ["/bin/sleep", "600"]) for i in range(3)]
    other = service("other", ["/bin/sleep", "600"])
    instances = await ssh_provider.instances(services[0])
    assert len(instances) >= 2, "the shared test infra has 3 hosts"
    await asyncio.gather(
        *(ssh_provider.deploy(Release(resource=r, revision="r1", config_commit="c0",
                                      export=shared, env={}, content="config@c0:src"), i)
          for r in services for i in instances),
        *(ssh_provider.deploy(Release(resource=other, revision="r1", config_commit="c0",
                                      export=alone, env={}), i) for i in instances))
    assert shared.calls == 1
    assert alone.calls == 1  # per resource and revision: once for all its hosts
    for instance in instances:
        host = next(h for h in ssh_hosts if h.name == instance.id)
        for name in ("same0", "same2", "other"):
            path = f"/srv/fraisier/{ENV}/{name}/releases/r1/www/VERSION"
            assert host.sh(f"stat -c %a {path} && cat {path}").split() == ["644", "r1"]
