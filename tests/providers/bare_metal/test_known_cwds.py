"""The working directories of the units' processes, known between processes of the reconciler
(``known_cwds.py``): the file itself, and on a real systemd+sshd test host, a second provider
(the next ``apply``) that does not ask the host again for a process it knows, asks for a new
one, and still sees a ``current`` link moved under a running process."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path
from typing import Any

import pytest

from reconciler.providers.bare_metal.known_cwds import KnownCwds
from reconciler.providers.bare_metal.systemd import observe_batcher
from reconciler.spec.model import Resource
from tests.providers.bare_metal.conftest import ENV, free_port, make_resource
from tests.providers.bare_metal.test_ssh_sandbox import provider_for, release_of, wait_http


def test_known_directories_round_trip_owner_only(tmp_path: Path) -> None:
    path = tmp_path / "state" / "bare_metal" / "env" / "hosts.cwds.json"
    known = KnownCwds(path)
    known.host("h1")["fraisier-env_web.service"] = ("41/Mon 2026-12-07 06:00:00 UTC", "/a/r1")
    known.host("h2")
    known.save()
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    again = KnownCwds(path)
    assert again.host("h1") == {
        "fraisier-env_web.service": ("41/Mon 2026-12-07 06:00:00 UTC", "/a/r1")}
    assert again.host("h2") == {}
    # nothing learnt: the file is not written again
    before = path.stat().st_mtime_ns
    os.utime(path, ns=(1, 1))
    again.save()
    assert path.stat().st_mtime_ns == 1 != before
    again.forget("h1", "fraisier-env_web.service")
    again.save()
    assert json.loads(path.read_text())["hosts"] == {}


@pytest.mark.parametrize("content", [b"{not json", b"[]", b'{"format": 99, "hosts": {}}',
                                     b'{"format": 1, "hosts": {"h1": {"u": ["only one"]}}}'])
def test_an_unreadable_file_is_an_empty_one(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "cwds.json"
    path.write_bytes(content)
    known = KnownCwds(path)
    assert known.host("h1") == {}
    known.host("h1")["u"] = ("1/t", "/d")
    known.save()
    assert KnownCwds(path).host("h1") == {"u": ("1/t", "/d")}


def test_a_file_that_cannot_be_written_costs_only_the_hint(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("")
    known = KnownCwds(blocker / "cwds.json")  # its folder cannot be made
    known.host("h1")["u"] = ("1/t", "/d")
    known.save()  # logged, not raised
    assert known.host("h1") == {"u": ("1/t", "/d")}


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
    saved = next((state / "bare_metal").rglob("*.cwds.json"))
    data = json.loads(saved.read_text())
    identity, cwd = data["hosts"][instance.id][unit]
    assert cwd == "/srv/fraisier/test/web/releases/r1"
    assert identity.startswith(f"{seen.identity.pid}/")
    data["hosts"][instance.id][unit] = [identity, "/srv/fraisier/test/web/releases/planted"]
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
    assert json.loads(saved.read_text())["hosts"][instance.id][unit][1] == (
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
        known = observe_batcher(second.transport_for(instance)).cwds
        assert known, "the first provider's directories were not loaded"
        moved = await second.observe_instance(web, instance)
        assert moved.revision == "moved:r1", moved
        assert "running r2 but current points at r1" in moved.detail
    finally:
        await second.close()
