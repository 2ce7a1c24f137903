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
from reconciler.providers import InstanceState, Release
from reconciler.providers.bare_metal import SystemdSSHProvider
from reconciler.providers.bare_metal.commit import CommitRequest, host_commits
from reconciler.providers.bare_metal.systemd import observe_batcher
from reconciler.transport.ssh import SSHTransport
from tests.infra.testinfra import InfraHost
from tests.providers.bare_metal.conftest import ENV, FolderExport, make_resource
from tests.transport.test_ssh import root

__all__ = ["root"]

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

    transport = ssh_provider.transport_for(instance)
    observations = observe_batcher(transport).batches
    results = await asyncio.gather(
        *(ssh_provider.deploy(release(r), instance) for r in [*good, bad]),
        return_exceptions=True)
    assert isinstance(results[3], ProviderError)
    assert f"starting fraisier-{ENV}_noexec.service failed" in results[3].message
    # how its process ended, as its health gate would say it (systemd's 203/EXEC)
    assert "its process exited with code 203" in results[3].message, results[3].message
    assert host_commits(transport).batches == 1
    host = next(h for h in ssh_hosts if h.name == instance.id)
    # Each started Service comes back as observed by the commit's own command, right after its
    # restart (no observation of its own): the very process systemd runs now.
    assert observe_batcher(transport).batches == observations
    for resource, started in zip(good, results[:3], strict=True):
        assert isinstance(started, InstanceState), results
        assert started.running and started.revision == "r1", started
        unit = f"fraisier-{ENV}_{resource.name}.service"
        main_pid = host.sh(f"systemctl show -p MainPID --value {unit}").strip()
        assert started.identity.pid == int(main_pid), (started.identity, main_pid)
        now = await ssh_provider.observe_instance(resource, instance)
        assert now.identity.same_as(started.identity), (now.identity, started.identity)
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


async def test_only_the_newest_exports_are_kept_on_this_machine(
    ssh_provider: SystemdSSHProvider, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A daemon lives through many commits: an export older than the newest EXPORTS_KEPT goes
    once no upload reads it (exported again if a host needs it later)."""
    monkeypatch.setattr("reconciler.providers.bare_metal.remote.EXPORTS_KEPT", 1)
    src = tmp_path / "src"
    src.mkdir()
    (src / "VERSION").write_text("r1\n")
    exports = {"a": Recording(src), "b": Recording(src)}
    instance = (await ssh_provider.instances(service("x", ["/bin/sleep", "600"])))[0]

    async def deploy(name: str, content: str) -> None:
        await ssh_provider.deploy(Release(
            resource=service(name, ["/bin/sleep", "600"]), revision="r1", config_commit="c0",
            export=exports[content], env={}, content=content), instance)

    await deploy("x", "a")
    await deploy("y", "a")  # kept: shared
    assert exports["a"].calls == 1 and exports["a"].dests[0].is_dir()
    await deploy("z", "b")  # the newest one: the export of "a" goes
    assert not exports["a"].dests[0].exists() and exports["b"].dests[0].is_dir()
    await deploy("w", "a")  # a host without it: exported again
    assert exports["a"].calls == 2


async def test_the_export_starts_while_the_host_is_asked_for_the_release(
    ssh_provider: SystemdSSHProvider, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A deploy's local export does not wait for the host's answer (a login, an SFTP session,
    a read of the releases it has): it has started before that read returns, and it is made
    once for the upload that follows."""
    src = tmp_path / "src"
    src.mkdir()
    (src / "VERSION").write_text("r1\n")
    events: list[str] = []

    class Marking(FolderExport):
        async def __call__(self, dest: Path) -> None:
            events.append("export")
            await super().__call__(dest)

    export = Marking(src)
    resource = service("ahead", ["/bin/sleep", "600"])
    instance = (await ssh_provider.instances(resource))[0]
    transport = ssh_provider.transport_for(instance)
    read_file = transport.read_file

    async def marked_read(remote: str, **kwargs: Any) -> bytes | None:
        data = await read_file(remote, **kwargs)
        events.append(f"read {remote.rsplit('/', 1)[-1]}")
        return data

    monkeypatch.setattr(transport, "read_file", marked_read)
    await ssh_provider.deploy(Release(resource=resource, revision="r1", config_commit="c0",
                                      export=export, env={}, content="ahead"), instance)
    assert "read releases.json" in events, events
    assert events.index("export") < events.index("read releases.json"), events
    assert export.calls == 1


class Recording(FolderExport):
    """A FolderExport that remembers where it exported to."""

    def __init__(self, source: Path) -> None:
        super().__init__(source)
        self.dests: list[Path] = []

    async def __call__(self, dest: Path) -> None:
        self.dests.append(dest)
        await super().__call__(dest)


async def test_deploys_in_quick_succession_all_start(
    ssh_provider: SystemdSSHProvider, tmp_path: Path, ssh_hosts: Any
) -> None:
    """systemd refuses a unit's sixth start within 10 s (its default start limit) unless
    something resets the count; a new revision no longer reloads systemd (which reset it), so
    the commit resets it for the restart it asks for: eight deploys in a row all start."""
    src = tmp_path / "src"
    src.mkdir()
    resource = service("quick", ["/bin/sleep", "600"])
    instance = (await ssh_provider.instances(resource))[0]
    host = next(h for h in ssh_hosts if h.name == instance.id)
    pids = set()
    for n in range(8):
        (src / "VERSION").write_text(f"r{n}\n")
        started = await ssh_provider.deploy(Release(
            resource=resource, revision=f"r{n}", config_commit=f"c{n}",
            export=FolderExport(src), env={}), instance)
        assert isinstance(started, InstanceState) and started.running, (n, started)
        pids.add(started.identity.pid)
    assert len(pids) == 8  # a new process each time
    unit = f"fraisier-{ENV}_quick.service"
    assert unit_state(host, unit) == "active"


def zz_request(name: str, prefix: str) -> CommitRequest:
    """The commit of release ``r1`` of /srv/fraisier/zz/NAME, restarting zz-PREFIX-NAME."""
    service_dir = f"/srv/fraisier/zz/{name}"
    unit = f"zz-{prefix}-{name}.service"
    return CommitRequest(("releases/r1", f"{service_dir}/.current-t", f"{service_dir}/current",
                          service_dir), unit, False, (unit,))


def unit_state(host: InfraHost, unit: str) -> str:
    return host.sh(f"systemctl is-active {unit} || true").strip()


def remove_zz(host: InfraHost, prefix: str, started: str) -> None:
    """Stop unit zz-PREFIX-STARTED, remove every zz-PREFIX-* unit and /srv/fraisier/zz."""
    host.run(["sh", "-c", f"systemctl disable --now zz-{prefix}-{started}.service; "
              f"rm -rf /etc/systemd/system/zz-{prefix}-* /srv/fraisier/zz; "
              "systemctl daemon-reload; systemctl reset-failed"])


async def test_one_restart_for_the_batch_and_each_unit_its_own_result(
    root: SSHTransport, ssh_host: InfraHost
) -> None:
    """Every unit of a batch is restarted by one systemctl; each still gets its own result: a
    unit that starts (rc 0), one whose start fails (the call's lines naming it, not another's),
    one with no unit file, which cannot be enabled (its deploy fails alone, the others are
    restarted all the same)."""
    units = {"good": "ExecStart=/bin/sleep 600",
             "noexec": "Type=exec\nExecStart=/nonexistent/binary",
             "noexec-too": "Type=exec\nExecStart=/nonexistent/other"}
    script = ["set -e"]
    for name, lines in units.items():
        script.append(f"printf '[Service]\\n{lines}\\n[Install]\\nWantedBy=multi-user.target\\n'"
                      f" >/etc/systemd/system/zz-commit-{name}.service")
    for name in (*units, "unwritten"):
        script.append(f"mkdir -p /srv/fraisier/zz/{name}/releases/r1")
    script.append("systemctl daemon-reload")
    ssh_host.run(["sh", "-c", "\n".join(script)])

    commits = host_commits(root)
    try:
        results = await asyncio.gather(*(commits.commit(zz_request(name, "commit"))
                                         for name in (*units, "unwritten")))
        assert commits.batches == 1
        good, noexec, noexec_too, unwritten = results
        assert good.ok and good.output == "", good
        for failed, name in ((noexec, "noexec"), (noexec_too, "noexec-too")):
            assert failed.switched and failed.returncode != 0, failed
            assert f"zz-commit-{name}.service" in failed.output, failed
            other = "noexec-too" if name == "noexec" else "noexec."
            assert f"zz-commit-{other}" not in failed.output, failed
        assert unwritten.switched and unwritten.returncode != 0, unwritten
        assert "zz-commit-unwritten.service" in unwritten.output, unwritten
        assert unit_state(ssh_host, "zz-commit-good.service") == "active"
        assert ssh_host.sh("readlink /srv/fraisier/zz/unwritten/current").strip() \
            == "releases/r1"
    finally:
        remove_zz(ssh_host, "commit", "good")


async def test_a_switch_that_fails_fails_its_deploy_alone_with_its_message(
    root: SSHTransport, ssh_host: InfraHost
) -> None:
    """The batch's folders get their modes from one chmod; a group whose release is missing
    fails that chmod, so each group's switch is done on its own: the missing one fails alone
    (not switched, not restarted, the message naming its path) and the others are switched,
    their folders made enterable, and restarted."""
    ssh_host.run(["sh", "-c", "set -e\n"
                  "printf '[Service]\\nExecStart=/bin/sleep 600\\n[Install]\\n"
                  "WantedBy=multi-user.target\\n' >/etc/systemd/system/zz-switch-a.service\n"
                  "cp /etc/systemd/system/zz-switch-a.service "
                  "/etc/systemd/system/zz-switch-b.service\n"
                  "mkdir -p /srv/fraisier/zz/a/releases/r1 /srv/fraisier/zz/b/releases\n"
                  "chmod 700 /srv/fraisier/zz/a /srv/fraisier/zz/a/releases\n"
                  "systemctl daemon-reload"])

    commits = host_commits(root)
    try:
        switched, missing = await asyncio.gather(commits.commit(zz_request("a", "switch")),
                                                 commits.commit(zz_request("b", "switch")))
        assert commits.batches == 1
        assert switched.ok, switched
        assert not missing.switched and "/srv/fraisier/zz/b/releases/r1" in missing.output, \
            missing
        assert ssh_host.sh("stat -c %a /srv/fraisier/zz/a /srv/fraisier/zz/a/releases").split() \
            == ["755", "755"]
        assert ssh_host.sh("readlink /srv/fraisier/zz/a/current").strip() == "releases/r1"
        assert ssh_host.sh("readlink /srv/fraisier/zz/b/current || echo none").strip() == "none"
        assert unit_state(ssh_host, "zz-switch-a.service") == "active"
        assert unit_state(ssh_host, "zz-switch-b.service") == "inactive"
    finally:
        remove_zz(ssh_host, "switch", "a")
