"""The units' main processes, known between processes of the reconciler
(``known_processes.py``): the file itself, and on a real systemd+sshd test host, a second
provider (the next ``apply``) that does not ask the host again for a process it knows, asks for
a new one, and still sees a ``current`` link moved under a running process; and a look at a
unit whose known process runs on, enabled, under the unit file systemd loaded then, that asks
systemd nothing more than ``list-units`` (planted values prove it), while every change that
matters (the unit file edited, a drop-in, the unit disabled, stopped or restarted) is
observed in full."""

from __future__ import annotations

import json
import os
import stat
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from reconciler.providers.bare_metal.known_processes import KnownProcess, KnownProcesses
from reconciler.providers.bare_metal.systemd import observe_batcher
from reconciler.spec.model import Resource
from tests.providers.bare_metal.conftest import ENV, free_port, make_resource
from tests.providers.bare_metal.test_ssh_sandbox import provider_for, release_of, wait_http

WEB = KnownProcess(41, 1234, "/a/r1", "ab" * 32, {"MainPID": "41", "NRestarts": "0"})


def test_known_processes_round_trip_owner_only(tmp_path: Path) -> None:
    path = tmp_path / "state" / "bare_metal" / "env" / "hosts.processes.json"
    known = KnownProcesses(path)
    known.host("h1")["fraisier-env_web.service"] = WEB
    known.host("h1")["fraisier-env_api.service"] = KnownProcess(7, 8, "/b")
    known.host("h2")
    known.save()
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    again = KnownProcesses(path)
    assert again.host("h1") == {"fraisier-env_web.service": WEB,
                                "fraisier-env_api.service": KnownProcess(7, 8, "/b")}
    assert again.host("h2") == {}
    # nothing learnt: the file is not written again
    before = path.stat().st_mtime_ns
    os.utime(path, ns=(1, 1))
    again.save()
    assert path.stat().st_mtime_ns == 1 != before
    again.forget("h1", "fraisier-env_web.service")
    again.forget("h1", "fraisier-env_api.service")
    again.save()
    assert json.loads(path.read_text())["hosts"] == {}


@pytest.mark.parametrize("content", [
    b"{not json", b"[]", b'{"format": 99, "hosts": {}}',
    b'{"format": 1, "hosts": {"h1": {"u": ["1/t", "/d"]}}}',  # the older file: cwds only
    b'{"format": 2, "hosts": {"h1": {"u": {"pid": "1", "start": 2, "cwd": "/d"}}}}'])
def test_an_unreadable_file_is_an_empty_one(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "processes.json"
    path.write_bytes(content)
    known = KnownProcesses(path)
    assert known.host("h1") == {}
    known.host("h1")["u"] = WEB
    known.save()
    assert KnownProcesses(path).host("h1") == {"u": WEB}


def test_what_stands_is_dropped_when_malformed(tmp_path: Path) -> None:
    """An entry whose standing properties are not strings keeps its cwd only (the unit is then
    observed in full)."""
    path = tmp_path / "processes.json"
    path.write_text(json.dumps({"format": 2, "hosts": {"h1": {"u": {
        "pid": 1, "start": 2, "cwd": "/d", "unit_hash": "x", "props": {"MainPID": 1}}}}}))
    assert KnownProcesses(path).host("h1") == {"u": KnownProcess(1, 2, "/d")}


def test_a_file_that_cannot_be_written_costs_only_the_hint(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("")
    known = KnownProcesses(blocker / "processes.json")  # its folder cannot be made
    known.host("h1")["u"] = WEB
    known.save()  # logged, not raised
    assert known.host("h1") == {"u": WEB}


def httpd_service() -> tuple[Resource, int]:
    """A Service serving its release directory with busybox httpd, and its port."""
    port = free_port()
    return make_resource("web", {"target": "hosts", "command": [
        "busybox", "httpd", "-f", "-p", f"127.0.0.1:{port}", "-h", "."]}), port


async def deployed_r2(provider: Any, web: Resource, instance: Any, port: int,
                      tmp_path: Path) -> Any:
    """``web`` at revision r2 (a new process), as ``provider`` then observes it."""
    await provider.deploy(release_of(tmp_path, web, {"index.html": "two"}, "r2"), instance)
    assert await wait_http(port) == "two"
    state = await provider.observe_instance(web, instance)
    assert state.facts["running_revision"] == "r2" and state.revision == "r2", state
    return state


@pytest.mark.timeout(180)
async def test_the_next_provider_knows_the_directories_the_last_one_saw(ssh_host: Any,
                                                                        tmp_path: Path) -> None:
    """A provider that closes keeps what it learnt in the state directory; the next one (the
    next ``apply``) tells the host the processes it knows, so the host does not read their
    working directories again (a planted value proves it), and reads a new process's."""
    state = tmp_path / "state"
    unit = f"fraisier-{ENV}_web.service"
    web, port = httpd_service()
    first = provider_for([ssh_host], state, sandbox="default")
    try:
        instance = (await first.instances(web))[0]
        await first.deploy(release_of(tmp_path, web, {"index.html": "one"}), instance)
        seen = await first.observe_instance(web, instance)
        assert seen.running and seen.facts["running_revision"] == "r1", seen
    finally:
        await first.close()
    saved = next((state / "bare_metal").rglob("*.processes.json"))
    data = json.loads(saved.read_text())
    entry = data["hosts"][instance.id][unit]
    assert entry["cwd"] == "/srv/fraisier/test/web/releases/r1"
    assert entry["pid"] == seen.identity.pid
    entry["cwd"] = "/srv/fraisier/test/web/releases/planted"
    saved.write_text(json.dumps(data))

    second = provider_for([ssh_host], state, sandbox="default")
    try:
        instance = (await second.instances(web))[0]
        known = await second.observe_instance(web, instance)
        assert known.facts["running_revision"] == "planted", known
        # a new process: its directory is read, and what the planted entry said is gone
        await deployed_r2(second, web, instance, port, tmp_path)
    finally:
        await second.close()
    assert json.loads(saved.read_text())["hosts"][instance.id][unit]["cwd"] == (
        "/srv/fraisier/test/web/releases/r2")


@pytest.mark.timeout(180)
async def test_a_link_moved_under_a_known_process_is_still_seen(ssh_host: Any,
                                                                tmp_path: Path) -> None:
    """``current`` switched by hand to another release while the process runs on: the next
    provider, which knows the process's directory, reports the move as the first one would."""
    state = tmp_path / "state"
    web, port = httpd_service()
    first = provider_for([ssh_host], state, sandbox="default")
    try:
        instance = (await first.instances(web))[0]
        await first.deploy(release_of(tmp_path, web, {"index.html": "one"}), instance)
        await deployed_r2(first, web, instance, port, tmp_path)
    finally:
        await first.close()
    ssh_host.sh("cd /srv/fraisier/test/web && ln -sfn releases/r1 current.hand "
                "&& mv -T current.hand current")

    second = provider_for([ssh_host], state, sandbox="default")
    try:
        instance = (await second.instances(web))[0]
        known = observe_batcher(second.transport_for(instance)).known
        assert known, "the first provider's directories were not loaded"
        moved = await second.observe_instance(web, instance)
        assert moved.revision == "moved:r1", moved
        assert "running r2 but current points at r1" in moved.detail
    finally:
        await second.close()


@pytest.mark.timeout(240)
async def test_a_known_process_is_looked_at_without_systemctl_show(ssh_host: Any,
                                                                   tmp_path: Path) -> None:
    """A planted restart count in the known process proves a look did not ask systemd for the
    unit's properties; each change that matters makes the next look a full one (the planted
    value gone, the change reported)."""
    web, port = httpd_service()
    unit = f"fraisier-{ENV}_web.service"
    unit_file = f"/etc/systemd/system/{unit}"
    provider = provider_for([ssh_host], tmp_path / "state", sandbox="default")
    try:
        instance = (await provider.instances(web))[0]
        await provider.deploy(release_of(tmp_path, web, {"index.html": "one"}), instance)
        assert await wait_http(port) == "one"
        known = observe_batcher(provider.transport_for(instance)).known

        async def look() -> Any:
            return await provider.observe_instance(web, instance)

        async def plant() -> None:
            """A full look first (the entry as systemd says now), then the planted count."""
            await look()
            entry = known[unit]
            assert entry.props is not None, entry  # running, enabled, loaded: it stands
            known[unit] = replace(entry, props={**entry.props, "NRestarts": "41"})

        def main_pid() -> int:
            return int(ssh_host.sh(f"systemctl show -p MainPID --value {unit}").strip())

        await plant()
        cheap = await look()
        assert cheap.facts["restarts"] == "41", cheap.facts  # systemd was not asked
        assert cheap.running and cheap.revision == "r1" and not cheap.facts["unit_edited"]
        assert cheap.identity.pid == main_pid() and cheap.up_for is not None
        assert (await look()).facts["restarts"] == "41"  # and again

        # the unit file edited by hand: looked at in full, reported as edited
        ssh_host.sh(f"echo '# edited' >> {unit_file}")
        edited = await look()
        assert edited.facts["restarts"] == "0" and edited.revision == "unit-edited:r1", edited
        # back to its content, but not reloaded (systemd says so): still in full, edited
        ssh_host.sh(f"sed -i '$d' {unit_file}")
        await plant_refused(look, known, unit)
        ssh_host.sh("systemctl daemon-reload")

        # a drop-in folder that applies to the unit, even empty: its own, or its prefix's
        for folder in (f"{unit_file}.d", "/run/systemd/system/fraisier-.service.d"):
            await plant()
            ssh_host.sh(f"mkdir -p {folder}")
            try:
                assert (await look()).facts["restarts"] == "0", folder
            finally:
                ssh_host.sh(f"rmdir {folder}")

        # disabled by hand
        await plant()
        ssh_host.sh(f"systemctl disable --quiet {unit}")
        disabled = await look()
        assert disabled.facts["restarts"] == "0", disabled.facts
        assert disabled.facts["unit_file_state"] == "disabled"
        ssh_host.sh(f"systemctl enable --quiet {unit}")

        # restarted by hand: another process
        await plant()
        before = known[unit].pid
        ssh_host.sh(f"systemctl restart {unit}")
        restarted = await look()
        assert restarted.facts["restarts"] == "0"
        assert restarted.identity.pid == main_pid() != before

        # stopped by hand
        await plant()
        ssh_host.sh(f"systemctl stop {unit}")
        stopped = await look()
        assert not stopped.running and stopped.facts["restarts"] == "0", stopped
        assert unit not in known or known[unit].props is None
    finally:
        await provider.close()


async def plant_refused(look: Any, known: Any, unit: str) -> None:
    """A unit whose file systemd says changed since loaded is observed in full, reported as
    edited, and its process's properties are not kept as standing."""
    state = await look()
    assert state.facts["unit_edited"] and state.revision == "unit-edited:r1", state
    assert known[unit].props is None
