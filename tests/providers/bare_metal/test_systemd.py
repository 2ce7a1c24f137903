"""Batching per host: one daemon-reload for many unit writes (systemd.ReloadBatcher), one remote
command for the commits of a host's deploys in flight (commit.HostCommits), one remote command
for many units' observations (systemd.ObserveBatcher); never an answer that started before the
caller asked."""

from __future__ import annotations

import asyncio
import gc
import weakref
from pathlib import Path
from typing import Any

import pytest

from reconciler.providers import Release
from reconciler.providers.bare_metal import SystemdSSHProvider
from reconciler.providers.bare_metal.batches import LOOK_LINGER_S
from reconciler.providers.bare_metal.commit import host_commits
from reconciler.providers.bare_metal.systemd import (
    ObserveBatcher,
    ReloadBatcher,
    Systemd,
    observe_batcher,
)
from reconciler.transport.ssh import SSHTransport
from tests.infra.testinfra import InfraHost
from tests.providers.bare_metal.conftest import ENV, FolderExport, make_resource
from tests.transport.test_ssh import config_for


async def test_a_request_during_a_reload_gets_a_later_one() -> None:
    batcher = ReloadBatcher()
    started: list[int] = []  # reload number each caller's reload started as
    release = asyncio.Event()

    async def reload() -> None:
        started.append(len(started) + 1)
        if len(started) == 1:
            await release.wait()  # the first reload is running while others ask

    first = asyncio.create_task(batcher.reload(reload))
    await asyncio.sleep(0)
    assert started == [1]
    later = [asyncio.create_task(batcher.reload(reload)) for _ in range(5)]
    await asyncio.sleep(0)
    assert not any(t.done() for t in later)  # reload 1 started before they asked
    release.set()
    await asyncio.gather(first, *later)
    assert started == [1, 2]  # the five share one reload, started after all of them asked
    assert batcher.reloads == 2


async def test_a_failed_reload_covers_nobody() -> None:
    batcher = ReloadBatcher()
    calls = 0

    async def flaky() -> None:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise RuntimeError("reload failed")

    with pytest.raises(RuntimeError):
        await batcher.reload(flaky)
    await batcher.reload(flaky)  # asks again: runs again
    assert calls == 2 and batcher.reloads == 1


async def test_observations_asked_during_a_batch_get_the_next_one() -> None:
    batcher = ObserveBatcher()
    batches: list[list[str]] = []
    gate = asyncio.Event()
    running = asyncio.Event()

    async def run(groups: Any) -> list[dict[str, str]]:
        batches.append([g[0] for g in groups])
        if len(batches) == 1:
            running.set()
            await gate.wait()
        return [{"Unit": g[0], "Batch": str(len(batches))} for g in groups]

    first = asyncio.create_task(batcher.observe(("a", "", "", ""), run))
    await running.wait()
    later = [asyncio.create_task(batcher.observe((u, "", "", ""), run)) for u in "bcd"]
    quitter = asyncio.create_task(batcher.observe(("e", "", "", ""), run))
    await asyncio.sleep(0)
    quitter.cancel()  # a caller giving up does not stop the batch the others wait for
    gate.set()
    assert (await first) == {"Unit": "a", "Batch": "1"}
    assert [await t for t in later] == [{"Unit": u, "Batch": "2"} for u in "bcd"]
    assert batches == [["a"], ["b", "c", "d"]]  # "e" gave up before its batch started


async def test_observations_asked_about_the_same_time_share_one_batch() -> None:
    """A batch waits ``LOOK_LINGER_S`` after its first request: looks asked a moment apart
    (a pass's looks at a host, the gates of deploys committed together) go in one command,
    where the first used to run alone and the others waited for it to end."""
    batcher = ObserveBatcher()
    batches: list[list[str]] = []

    async def run(groups: Any) -> list[dict[str, str]]:
        batches.append([g[0] for g in groups])
        return [{"Unit": g[0]} for g in groups]

    async def ask(unit: str, after: float) -> dict[str, str]:
        await asyncio.sleep(after)
        return await batcher.observe((unit, "", "", ""), run)

    spread = LOOK_LINGER_S / 4
    answers = await asyncio.gather(*(ask(u, i * spread) for i, u in enumerate("abc")))
    assert answers == [{"Unit": u} for u in "abc"]
    assert batches == [["a", "b", "c"]]


@pytest.mark.timeout(120)
async def test_concurrent_deploys_on_a_host_share_one_commit(
    ssh_provider: SystemdSSHProvider, tmp_path: Path, ssh_hosts: Any
) -> None:
    src = tmp_path / "src"
    src.mkdir()
    (src / "job.py").write_text("print('hi')\n")
    jobs = [make_resource(f"batch{i}", {"target": "hosts", "command": ["python3", "job.py"]},
                          kind="Job") for i in range(8)]
    instance = (await ssh_provider.instances(jobs[0]))[0]
    await asyncio.gather(*(
        ssh_provider.deploy(Release(resource=j, revision="r1", config_commit="c0",
                                    export=FolderExport(src), env={}), instance)
        for j in jobs))
    # staged 4 at a time (the host's slots), committed together: one reload, one command
    assert host_commits(ssh_provider.transport_for(instance)).batches == 1
    units = [f"fraisier-{ENV}_batch{i}.job.service" for i in range(8)]
    shown = ssh_hosts[0].sh("systemctl show -p LoadState -p NeedDaemonReload -- "
                            + " ".join(units))
    assert shown.count("LoadState=loaded") == 8  # every unit written was reloaded
    assert "NeedDaemonReload=yes" not in shown
    # observed at once: each gets its own unit's state, in a few remote commands
    observer = observe_batcher(ssh_provider.transport_for(instance))
    before = observer.batches
    states = await asyncio.gather(*(ssh_provider.observe_instance(j, instance) for j in jobs))
    assert [s.facts["unit"] for s in states] == units
    assert all(s.revision == "r1" and s.facts["current"] == "r1" for s in states)
    assert 1 <= observer.batches - before < len(jobs)


async def test_a_hosts_batchers_do_not_keep_its_transport_alive(ssh_host: InfraHost) -> None:
    """The commit and observation batchers of a host are values of weak mappings keyed by its
    transport: once a provider drops a transport (a Target edited or deleted), nothing of
    theirs may hold it, or it and its batchers stay for the life of the daemon."""
    transport = SSHTransport(config_for(ssh_host))
    gone = weakref.ref(transport)
    host_commits(transport)
    observed = await Systemd(transport).observe("zz-none.service", "/nonexistent",
                                                "/nonexistent/zz-none.service")
    assert observed.get("MainPID") == "0", observed
    await transport.close()
    del transport
    gc.collect()
    assert gone() is None
